"""One guarded migration of the proxy sidecar on a live cluster, step by step.

    preflight -> record -> (managed? print the change) -> access -> probe -> patch -> rollout
              -> verify -> done                      ... or, on any failure or Ctrl-C after
                                                         the patch: rollback -> report

Every step is narrated on stderr as it starts (what it does, what it waits for) and lands
in the report with its time. Nothing is written to the cluster before the ``access`` step;
``--dry-run`` stops before it and prints the steps that would follow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.apply import api_message
from e2e.diagnostics import pod_failure_evidence
from e2e.errors import HarnessError, UsageError
from e2e.matrix import load_matrix
from e2e.migrate.gate import blockers, managed_by, recorded, refusal_exit_code, resolve_target
from e2e.migrate.probe import model_service, open_metrics, open_model, probing, verify
from e2e.migrate.report import MigrationReport, Outcome, Step
from e2e.preflight import Options as PreflightOptions
from e2e.preflight import preflight
from e2e.preflight.cluster import Connection, connect, named_container
from e2e.preflight.metrics import TemporaryAccess, resolve_kubectl, sigterm_as_interrupt
from e2e.preflight.model import REQUEST_TIMEOUT, Status
from e2e.preflight.runner import LiveController, live_controller
from e2e.preflight.swap import planned_patch
from e2e.rollout import RolloutFailed, new_pods_selector, wait_for_rollout
from e2e.targets import ServiceTarget
from e2e.text import one_line
from e2e.tokens import mint_token

log = logging.getLogger(__name__)

FIELD_MANAGER = "kserve-compat-migrate"


@dataclass(frozen=True)
class Options:
    to: str  # a matrix alias (quay-v0.22.1) or an image reference
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    force: bool = False
    dry_run: bool = False
    inference: tuple[str, ...] = ()  # NAMESPACE/NAME of InferenceServices to keep asking
    report_dir: Path = Path("kserve-compat-migrate")
    rollout_timeout_s: float = 300.0
    settle_s: float = 10.0
    kubectl: str | None = None
    metrics_url: str | None = None
    probe_registries: bool = True
    registry_mirror: tuple[str, ...] = ()
    insecure_registry: tuple[str, ...] = ()
    matrix: str | None = None


class Narrator:
    """Steps as they happen: one ``STEP`` line on stderr each (kubebuilder's ``By``), and the report's list."""

    def __init__(self, report: MigrationReport, out: Callable[[str], None]) -> None:
        self.report = report
        self.out = out

    @contextlib.contextmanager
    def step(self, name: str, doing: str) -> Iterator[Step]:
        started = time.monotonic()
        record = Step(name, "ok", doing, self.report.elapsed())
        self.out(f"STEP {name}: {doing}")
        self.report.steps.append(record)
        try:
            yield record
        except BaseException as exc:
            record.status = "failed"
            record.detail = f"{record.detail}: {one_line(exc) or type(exc).__name__}"
            record.evidence += list(getattr(exc, "evidence", []) or [])
            raise
        finally:
            record.duration_s = time.monotonic() - started

    def note(self, name: str, status: str, detail: str) -> None:
        self.out(f"STEP {name}: {detail}")
        self.report.steps.append(Step(name, status, detail, self.report.elapsed()))


def proxy_image_now(api: k8s_client.ApiClient, live: LiveController) -> str:
    apps = k8s_client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment(
        live.profile.deployment, live.profile.namespace, _request_timeout=REQUEST_TIMEOUT
    )
    images = {c.name: c.image for c in deployment.spec.template.spec.containers}
    return str(images.get(live.profile.proxy_container, ""))


def migrate(options: Options, out: Callable[[str], None] | None = None) -> MigrationReport:
    """Run the migration; the returned report says how it ended (its ``exit_code`` too)."""
    say = out or (lambda line: print(line, file=sys.stderr, flush=True))
    report = MigrationReport()
    narrator = Narrator(report, say)
    if options.settle_s < 0 or options.rollout_timeout_s <= 0:
        raise UsageError("--settle/--rollout-timeout: expected seconds (settle >= 0, rollout timeout > 0)")
    inference = [_namespaced_name(item) for item in options.inference]
    target, target_source, naming = resolve_target(options.to, options.matrix)
    report.to_image, report.target_source = target, target_source

    with narrator.step("preflight", f"kserve-compat preflight --target-image {target} (read-only)") as step:
        pre = preflight(
            PreflightOptions(
                kubeconfig=options.kubeconfig,
                context=options.context,
                namespace=options.namespace,
                target_image=naming.target_image,
                target_proxy=naming.target_proxy,
                registry_mirror=options.registry_mirror,
                insecure_registry=options.insecure_registry,
                probe=options.probe_registries,
                matrix=options.matrix,
            )
        )
        report.context, report.server = pre.context, pre.server
        report.deployment, report.container = pre.proxy.deployment, pre.proxy.container
        report.from_image, report.kserve_version = pre.proxy.image or "", pre.version.version or "unknown"
        report.preflight_checks = [c.as_json() for c in pre.checks]
        report.blockers = blockers(pre)
        report.preflight_verdict = f"{pre.verdict} (exit {pre.exit_code})"
        if report.blockers:
            step.detail = f"preflight: {pre.verdict}; {len(report.blockers)} reason(s) this change would fail"
        elif pre.failed:
            # A retired or missing image in use: the reason to migrate, not a reason to stop.
            report.preflight_verdict += ", for the images in use only: nothing blocks this change"
            step.detail = "preflight: no-go for the images in use (what this change fixes); nothing blocks it"
        else:
            step.detail = "preflight: go; nothing blocks this change"
        step.evidence = [f"{c.name}: {c.status}: {c.detail}" for c in pre.checks if c.status is not Status.OK]
    if report.blockers and not options.force:
        report.end(
            Outcome.REFUSED, "the preflight says this change would fail (--force overrides)", refusal_exit_code(pre)
        )
        return report

    conn = connect(options.kubeconfig, options.context)
    with conn.api:
        live = live_controller(conn.api, conn.context, options.namespace, load_matrix(options.matrix))
        profile = live.profile
        report.deployment = f"{profile.namespace}/{profile.deployment}"
        report.container = profile.proxy_container
        report.kserve_version = live.version.version or "unknown"
        proxy = named_container(live.deployment, profile.proxy_container)
        if proxy is None:
            raise UsageError(
                f"Deployment {report.deployment} has no container {profile.proxy_container}: no proxy to swap"
            )
        report.from_image = str(proxy.get("image"))
        before = recorded(live.deployment)
        report.patch = planned_patch(live.deployment, profile, target, load_matrix(options.matrix), live.release)
        report.managed_by = managed_by(live.deployment)
        models = [(name, model_service(conn, namespace, name)) for namespace, name in inference]
        if report.from_image == target:
            report.ends_on = f"the recorded Deployment (proxy {target})"
            report.end(Outcome.UNCHANGED, f"{report.deployment} already runs {target}: nothing to do")
            return report
        if report.managed_by and not options.force:
            say(
                f"the change, for the tool that owns {report.deployment} to make:\n{json.dumps(report.patch, indent=2)}"
            )
            report.ends_on = "the recorded Deployment (nothing applied)"
            report.end(
                Outcome.NOT_APPLIED,
                f"{report.deployment} is managed by {report.managed_by}: a patch by hand would be undone or fought; "
                "make the printed change there (--force patches anyway)",
            )
            return report
        if options.dry_run:
            for name, detail in planned_steps(report, options, inference):
                narrator.note(name, "planned", detail)
            report.ends_on = "the recorded Deployment (nothing applied)"
            report.end(Outcome.DRY_RUN, "--dry-run: the steps above would run; nothing was written")
            return report
        if inference or not options.metrics_url:
            resolve_kubectl(options.kubectl, "migrate")  # the port-forwards need it: say so before any write
        _write_before(options.report_dir, before, report)
        _run_guarded(conn, live, before, report, narrator, options, models)
    return report


def planned_steps(report: MigrationReport, options: Options, inference: list[tuple[str, str]]) -> list[tuple[str, str]]:
    models = ", ".join(f"{ns}/{name}" for ns, name in inference) or "none named (--inference)"
    return [
        ("record", f"save {report.deployment} as it is now to {options.report_dir / 'before.json'}"),
        ("access", "create a metrics-reader and a no-access ServiceAccount, a ClusterRole and binding (removed after)"),
        ("probe", f"keep asking the proxied metrics (and models: {models}) every 0.2 s from now to the end"),
        ("patch", f"strategic merge patch of {report.deployment}: {report.container} -> {report.to_image}"),
        (
            "rollout",
            f"watch the rollout (at most {options.rollout_timeout_s:.0f} s), stop at once on a pod that "
            "cannot pull or crashes",
        ),
        (
            "verify",
            f"probe {options.settle_s:.0f} s more; metrics must answer with the reader's token and refuse "
            "the others; models must not lose a request",
        ),
        ("rollback", "only if a step above fails or you press Ctrl-C: restore the recorded pod template and wait"),
    ]


def _run_guarded(
    conn: Connection,
    live: LiveController,
    before: dict[str, Any],
    report: MigrationReport,
    narrator: Narrator,
    options: Options,
    models: list[tuple[str, ServiceTarget]],
) -> None:
    api, profile = conn.api, live.profile
    access = TemporaryAccess(conn.api, profile.namespace)
    applied = False
    failure: str | None = None
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            with narrator.step(
                "access", "temporary ServiceAccounts for the metrics probe: " + ", ".join(access.describe())
            ):
                access.create()
                if not access.wait_reader_allowed():
                    raise HarnessError("the temporary reader's RBAC never took effect")
                reader = mint_token(api, profile.namespace, access.reader)
                no_access = mint_token(api, profile.namespace, access.no_access)
            with narrator.step(
                "probe", "port-forwards to the metrics Service and the models; the prober starts"
            ) as step:
                metrics_url = open_metrics(stack, conn, live, options.metrics_url, options.kubectl, report)
                targets = [open_model(stack, conn, name, service, options.kubectl) for name, service in models]
                prober = stack.enter_context(probing(metrics_url, reader, targets, report))
                step.detail += f" ({len(targets)} model(s))"
            with narrator.step("patch", f"{report.container} -> {report.to_image}") as step:
                applied = True  # from the call on: the server may have stored it even if the answer is lost
                prober.mark("patch")
                answer = k8s_client.AppsV1Api(api).patch_namespaced_deployment(
                    profile.deployment,
                    profile.namespace,
                    report.patch,
                    field_manager=FIELD_MANAGER,
                    _request_timeout=REQUEST_TIMEOUT,
                )
                step.detail += f" (generation {answer.metadata.generation})"
            with narrator.step("rollout", f"waiting for {report.deployment} to roll out"):
                _await_rollout(api, live, options)
                prober.mark("rolled out")
            with narrator.step(
                "verify", f"metrics (and models) for {options.settle_s:.0f} s after the rollout"
            ) as step:
                if metrics_url is None:  # unreachable before: the new pod's Service is reachable now
                    metrics_url = open_metrics(
                        stack, conn, live, options.metrics_url, options.kubectl, report, after=True
                    )
                    assert metrics_url is not None  # after=True raises instead
                    prober.retarget_metrics(metrics_url)
                time.sleep(options.settle_s)
                summary = prober.stop()
                report.probe = summary
                problems = verify(summary, metrics_url, reader, no_access, report)
                if problems:
                    step.evidence += problems
                    raise HarnessError(problems[0])
                step.detail += f": metrics answer ({summary.metrics.failures} failed requests during the change)"
    except KeyboardInterrupt:
        failure = "interrupted (Ctrl-C or SIGTERM)"
    except (HarnessError, ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        failure = one_line(exc) if not isinstance(exc, ApiException) else f"{exc.status} {api_message(exc)}"
    finally:
        problems = access.remove()
        if problems:
            narrator.note("cleanup", "failed", "; ".join(problems) + " (delete by hand)")
    interrupted = failure is not None and failure.startswith("interrupted")
    if failure is None:
        report.ends_on = f"the new Deployment (proxy {report.to_image})"
        report.end(Outcome.MIGRATED, f"{report.deployment} runs {report.to_image}; metrics answer through it")
        return
    if not applied:
        report.ends_on = "the recorded Deployment (nothing applied)"
        report.end(Outcome.INTERRUPTED if interrupted else Outcome.ABORTED, f"{failure}; nothing was applied")
        return
    _rollback(api, live, before, report, narrator, options, failure, interrupted)


def _rollback(
    api: k8s_client.ApiClient,
    live: LiveController,
    before: dict[str, Any],
    report: MigrationReport,
    narrator: Narrator,
    options: Options,
    failure: str,
    interrupted: bool,
) -> None:
    """Put the recorded pod template back (one JSON patch: the Deployment is either the new one
    or the recorded one, never a mix; Ctrl-C is held off while it is sent) and wait for it."""
    profile = live.profile
    template = before["spec"]["template"]
    try:
        with narrator.step("rollback", f"restoring the recorded pod template of {report.deployment}") as step:
            with _signals_deferred():
                k8s_client.AppsV1Api(api).patch_namespaced_deployment(
                    profile.deployment,
                    profile.namespace,
                    [{"op": "replace", "path": "/spec/template", "value": template}],
                    field_manager=FIELD_MANAGER,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            if interrupted:
                # You asked it to stop: the Deployment is the recorded one again; its pods roll on their own.
                step.detail += "; its rollout not awaited (interrupted)"
            else:
                try:
                    _await_rollout(api, live, options)
                except RolloutFailed as exc:
                    # The template is back (what was asked); its pods may be as broken as before the change.
                    step.status = "warn"
                    step.detail += f"; restored, but its rollout did not complete: {one_line(exc)}"
                    step.evidence += exc.evidence
                except KeyboardInterrupt:
                    step.detail += "; its rollout not awaited (interrupted)"
                    interrupted = True
    except (HarnessError, ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        report.ends_on = _ends_on(api, live, report)
        report.end(Outcome.ROLLBACK_FAILED, f"{failure}; the rollback failed too: {one_line(exc)}")
        return
    report.ends_on = _ends_on(api, live, report)
    outcome = Outcome.INTERRUPTED if interrupted else Outcome.ROLLED_BACK
    report.end(outcome, f"{failure}; rolled back to the recorded Deployment")


def _await_rollout(api: k8s_client.ApiClient, live: LiveController, options: Options) -> None:
    """The controller's rollout, failing fast on its new pods (the change's and the rollback's)."""
    profile = live.profile
    wait_for_rollout(
        api, profile.namespace, profile.deployment, timeout_s=options.rollout_timeout_s,
        failure_evidence=_evidence(api, live),
    )  # fmt: skip


def _ends_on(api: k8s_client.ApiClient, live: LiveController, report: MigrationReport) -> str:
    try:
        image = proxy_image_now(api, live)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        return f"unknown: the Deployment could not be read ({one_line(exc)})"
    if image == report.to_image:
        return f"the new Deployment (proxy {image})"
    if image == report.from_image:
        return f"the recorded Deployment (proxy {image})"
    return f"neither: proxy {image}"


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the restoring patch is sent: a second Ctrl-C must not
    leave it unknown whether the Deployment was restored."""
    if sys.platform == "win32":  # pragma: no cover
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: pending.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            log.warning("Ctrl-C/SIGTERM while restoring the Deployment: held until the patch was sent")


def _write_before(directory: Path, before: dict[str, Any], report: MigrationReport) -> None:
    from e2e.report import write_report_file

    path = directory / "before.json"
    write_report_file(path, json.dumps(before, indent=2) + "\n")
    report.files.append(str(path))


def _namespaced_name(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise UsageError(f"--inference {text}: expected NAMESPACE/NAME of an InferenceService")
    return namespace, name


def _evidence(api: k8s_client.ApiClient, live: LiveController) -> Callable[[], list[str] | None]:
    """The rollout's fail-fast probe: broken pods of the rollout under way (its newest
    ReplicaSet's, not a stuck earlier one's), with a crash's last log lines."""
    namespace, core = live.profile.namespace, k8s_client.CoreV1Api(api)

    def evidence() -> list[str] | None:
        selector = new_pods_selector(api, namespace, live.profile.deployment)
        if selector is None:
            return None  # the controller has not yet made this rollout's ReplicaSet

        def read_log(container: str, previous: bool) -> str:
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            if not pods:
                return ""
            newest = max(pods, key=lambda p: p.metadata.creation_timestamp)
            return str(
                core.read_namespaced_pod_log(
                    newest.metadata.name,
                    namespace,
                    container=container,
                    previous=previous,
                    tail_lines=20,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )

        return pod_failure_evidence(api, namespace, selector, read_log)

    return evidence
