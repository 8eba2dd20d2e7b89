"""What a failing cell leaves behind, collected before cleanup: events, a describe-like view
of pods, container logs (current and previous), the controller Deployment and the
InferenceServices as YAML, and the provider's own logs. Also the fail-fast detector the
rollout waiter calls on every poll.

Everything this module writes goes through ``e2e.secrets.redact`` (the provider's exported
logs too, after the export). Collection never raises: a part that cannot be collected is
listed in ``collection-errors.txt`` and the rest is still written.

Layout under the directory::

    summary.txt               the lines worth inlining into a test failure (summary_lines)
    events.txt                events of the namespaces, oldest first
    pods.txt                  per pod: phase, conditions, container states, exit codes
    deployment.yaml           the Deployment(s) (managedFields dropped)
    inferenceservices.yaml    serving.kserve.io/v1beta1 InferenceServices
    logs/<namespace>/<deployment>/<container>.log
    logs/<namespace>/<deployment>/<container>.previous.log   (when there is one)
    provider/                 provider.export_logs(): kind export logs / local process logs
    collection-errors.txt     what could not be collected, and why

Logs are per Deployment, not per pod, because they come through
``provider.container_logs(namespace, selector, container)``: the local tier has no pods (no
kubelet), only processes playing a Deployment's containers.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.provider import ClusterProvider
from e2e.labels import label_selector
from e2e.secrets import redact
from e2e.text import error_line

log = logging.getLogger(__name__)

#: Waiting reasons that will not fix themselves within a rollout's patience.
FATAL_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "InvalidImageName",
    }
)

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
MAX_OBJECTS_PER_NAMESPACE = 50  # events, pods, deployments: keep a failure's artefacts small
MAX_EVENTS = 500  # the newest ones
LOG_TAIL_LINES = 5

#: (container name, previous) -> log text; the caller binds namespace and selector.
LogReader = Callable[[str, bool], str]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(redact(text), encoding="utf-8")
    return path


def _failure(exc: BaseException) -> str:
    """A failed collection as one line; an API error by its status, not its dumped headers and body."""
    return error_line(exc, f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else None)


def _timestamp(value: datetime.datetime | None) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


# --------------------------------------------------------------------------- formatting


def _event_time(event: k8s_client.CoreV1Event) -> datetime.datetime:
    for candidate in (event.last_timestamp, event.event_time, event.first_timestamp):
        if candidate is not None:
            return candidate  # type: ignore[no-any-return]
    created = event.metadata.creation_timestamp
    return created if created is not None else datetime.datetime.min.replace(tzinfo=datetime.UTC)


def format_events(events: Iterable[k8s_client.CoreV1Event]) -> list[str]:
    """One line per event, oldest first: time, namespace, type, reason, object, message."""
    lines = []
    for event in sorted(events, key=_event_time):
        involved = event.involved_object
        count = f" (x{event.count})" if event.count and event.count > 1 else ""
        message = " ".join((event.message or "").split())
        lines.append(
            f"{_timestamp(_event_time(event))}  {event.metadata.namespace}  {event.type or '-'}  "
            f"{event.reason or '-'}  {involved.kind}/{involved.name}: {message}{count}"
        )
    return lines


def _container_state(state: k8s_client.V1ContainerState | None) -> str:
    if state is None:
        return "unknown"
    if state.waiting is not None:
        message = f": {state.waiting.message}" if state.waiting.message else ""
        return f"Waiting ({state.waiting.reason}{message})"
    if state.running is not None:
        return f"Running since {_timestamp(state.running.started_at)}"
    if state.terminated is not None:
        t = state.terminated
        message = f": {' '.join(t.message.split())}" if t.message else ""
        return f"Terminated (exit {t.exit_code}, {t.reason}{message}) at {_timestamp(t.finished_at)}"
    return "unknown"


def describe_pod(pod: k8s_client.V1Pod) -> list[str]:
    """A ``kubectl describe``-like summary of one pod, from its stored status."""
    status = pod.status
    lines = [
        f"Pod {pod.metadata.namespace}/{pod.metadata.name}",
        f"  Phase: {status.phase}" + (f" ({status.reason}: {status.message})" if status.reason else ""),
        f"  Node: {pod.spec.node_name or '-'}  Started: {_timestamp(status.start_time)}",
    ]
    if pod.metadata.deletion_timestamp is not None:
        lines.append(f"  Terminating since {_timestamp(pod.metadata.deletion_timestamp)}")
    lines.append("  Conditions:")
    for condition in status.conditions or []:
        why = f" {condition.reason}" if condition.reason else ""
        message = f": {condition.message}" if condition.message else ""
        lines.append(f"    {condition.type}={condition.status}{why}{message}")
    images = {c.name: c.image for c in [*(pod.spec.init_containers or []), *pod.spec.containers]}
    for kind, statuses in (
        ("Init container", status.init_container_statuses),
        ("Container", status.container_statuses),
    ):
        for cs in statuses or []:
            lines.append(f"  {kind} {cs.name}:")
            running = f"{cs.image} {cs.image_id or ''}".rstrip()
            lines.append(f"    Image: {images.get(cs.name, cs.image)} (running {running})")
            lines.append(f"    State: {_container_state(cs.state)}")
            if cs.last_state is not None and cs.last_state.terminated is not None:
                lines.append(f"    Last state: {_container_state(cs.last_state)}")
            lines.append(f"    Ready: {cs.ready}  Restarts: {cs.restart_count}")
    if not status.container_statuses:
        for name, image in images.items():
            lines.append(f"  Container {name}: {image} (no status yet)")
    return lines


def _as_yaml(api: k8s_client.ApiClient, objects: Sequence[Any]) -> str:
    documents = []
    for obj in objects:
        data = obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)
        data.get("metadata", {}).pop("managedFields", None)
        documents.append(data)
    return yaml.safe_dump_all(documents, sort_keys=False) if documents else "# none found\n"


def _tail(text: str, lines: int) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-lines:]


# --------------------------------------------------------------------------- collection


class _Collector:
    def __init__(self, api: k8s_client.ApiClient, directory: Path) -> None:
        self.api = api
        self.directory = directory
        self.errors: list[str] = []
        self.summary: list[str] = []

    def attempt(self, what: str, action: Callable[..., object], *args: Any) -> None:
        # Diagnostics run inside a failure hook: one broken part must not hide the rest.
        try:
            action(*args)
        except Exception as exc:
            self.errors.append(f"{what}: {_failure(exc)}")
            log.warning("diagnostics: could not collect %s: %s", what, _failure(exc))


def collect(
    api: k8s_client.ApiClient,
    provider: ClusterProvider,
    namespaces: str | Sequence[str],
    directory: Path,
    *,
    deployment: str | None = None,
    isvc_names: Sequence[str] = (),
) -> Path:
    """Write what explains a failure under ``directory`` (see the module docstring); returns it.

    ``deployment`` narrows ``deployment.yaml`` to that Deployment (looked up in every
    namespace); logs are collected for every Deployment of the namespaces (capped), so a
    failing predictor's logs are there too. ``isvc_names`` narrows
    ``inferenceservices.yaml``; by default every InferenceService of the namespaces.
    """
    names = [namespaces] if isinstance(namespaces, str) else list(namespaces)
    directory.mkdir(parents=True, exist_ok=True)
    collector = _Collector(api, directory)
    core = k8s_client.CoreV1Api(api)
    apps = k8s_client.AppsV1Api(api)

    events: list[k8s_client.CoreV1Event] = []
    pods: list[k8s_client.V1Pod] = []
    deployments: list[k8s_client.V1Deployment] = []
    isvcs: list[dict[str, Any]] = []
    for namespace in names:
        collector.attempt(f"events of {namespace}", _extend, events, core.list_namespaced_event, namespace)
        # Pods and Deployments capped: hundreds of them would drown the one that failed.
        cap = MAX_OBJECTS_PER_NAMESPACE
        collector.attempt(f"pods of {namespace}", _extend, pods, core.list_namespaced_pod, namespace, cap)
        collector.attempt(
            f"deployments of {namespace}", _extend, deployments, apps.list_namespaced_deployment, namespace, cap
        )
        collector.attempt(f"inferenceservices of {namespace}", _extend_isvcs, isvcs, api, namespace, isvc_names)

    event_lines = format_events(events)[-MAX_EVENTS:]
    _write(directory / "events.txt", "\n".join(event_lines) + "\n")
    pod_lines = [line for pod in pods for line in [*describe_pod(pod), ""]]
    _write(directory / "pods.txt", "\n".join(pod_lines) or "# no pods\n")
    chosen = [d for d in deployments if deployment is None or d.metadata.name == deployment]
    _write(directory / "deployment.yaml", _as_yaml(api, chosen))
    _write(directory / "inferenceservices.yaml", _as_yaml(api, isvcs))

    log_tails: list[str] = []
    for stored in deployments:
        collector.attempt(
            f"logs of deployment {stored.metadata.namespace}/{stored.metadata.name}",
            _collect_logs,
            collector,
            provider,
            stored,
            log_tails,
        )

    provider_dir = directory / "provider"
    collector.attempt("provider logs", provider.export_logs, provider_dir)
    collector.attempt("redaction of provider logs", _redact_tree, provider_dir)

    summary = [*pod_problems(pods)]
    summary += [line for line in event_lines if "  Warning  " in line][-10:]
    summary += log_tails
    summary += [f"not collected: {error}" for error in collector.errors]
    _write(directory / "summary.txt", "\n".join(summary) + "\n")
    if collector.errors:
        _write(directory / "collection-errors.txt", "\n".join(collector.errors) + "\n")
    return directory


def _extend(into: list[Any], list_call: Callable[[str], Any], namespace: str, cap: int | None = None) -> None:
    items = list_call(namespace).items
    into.extend(items if cap is None else items[:cap])


def _extend_isvcs(into: list[dict[str, Any]], api: k8s_client.ApiClient, namespace: str, wanted: Sequence[str]) -> None:
    custom = k8s_client.CustomObjectsApi(api)
    try:
        listed = custom.list_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, "inferenceservices")
    except ApiException as exc:
        if exc.status == 404:  # the CRD is not installed (yet): nothing to show
            return
        raise
    items: list[dict[str, Any]] = listed.get("items", [])
    into.extend(item for item in items if not wanted or item["metadata"]["name"] in wanted)


def _collect_logs(
    collector: _Collector, provider: ClusterProvider, stored: k8s_client.V1Deployment, tails: list[str]
) -> None:
    """Write current and previous logs of every container of a Deployment; add their tails."""
    namespace, name = stored.metadata.namespace, stored.metadata.name
    selector = label_selector(stored.spec.selector)
    target = collector.directory / "logs" / namespace / name
    for container in stored.spec.template.spec.containers:
        for previous in (False, True):
            suffix = ".previous.log" if previous else ".log"
            try:
                text = provider.container_logs(namespace, selector, container.name, previous=previous)
            except Exception as exc:
                if not previous:  # a missing previous log just means no restart
                    collector.errors.append(f"log of {namespace}/{name}/{container.name}: {_failure(exc)}")
                continue
            if previous and not text.strip():
                continue
            _write(target / f"{container.name}{suffix}", text or "# the provider returned no log output\n")
            if not previous:
                tails += [f"{name}/{container.name}: {line}" for line in _tail(text, LOG_TAIL_LINES)]


def _redact_tree(root: Path) -> None:
    if not root.exists():
        return
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (e.g. an image archive): nothing a token would be printed in
        cleaned = redact(text)
        if cleaned != text:
            path.write_text(cleaned, encoding="utf-8")


def summary_lines(directory: Path, n: int = 20) -> list[str]:
    """The lines to inline into a failing test's output: where the diagnostics are, then
    up to ``n`` lines of ``summary.txt`` (problem pods, warning events, log tails)."""
    summary = directory / "summary.txt"
    lines = [f"diagnostics: {directory}"]
    if summary.exists():
        content = [line for line in summary.read_text(encoding="utf-8").splitlines() if line.strip()]
        lines += content[:n]
        if len(content) > n:
            lines.append(f"... {len(content) - n} more in {summary}")
    return [redact(line) for line in lines]


# --------------------------------------------------------------------------- fail fast


def pod_problems(pods: Iterable[k8s_client.V1Pod], read_log: LogReader | None = None) -> list[str]:
    """One line per container stuck in a ``FATAL_WAITING_REASONS`` state."""
    lines = []
    for pod in pods:
        statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
        for cs in statuses:
            waiting = cs.state.waiting if cs.state is not None else None
            if waiting is None or waiting.reason not in FATAL_WAITING_REASONS:
                continue
            line = f"pod {pod.metadata.name} container {cs.name}: {waiting.reason}"
            if waiting.message:
                line += f": {' '.join(waiting.message.split())}"
            line += f" (restarts {cs.restart_count})"
            last = cs.last_state.terminated if cs.last_state is not None else None
            if last is not None:
                line += f"; last exit {last.exit_code} ({last.reason})"
            if read_log is not None and waiting.reason == "CrashLoopBackOff":
                line += _last_log_lines(read_log, cs.name)
            lines.append(redact(line))
    return lines


def _last_log_lines(read_log: LogReader, container: str) -> str:
    try:
        tail = _tail(read_log(container, True), LOG_TAIL_LINES)
    except Exception as exc:
        return f"; previous log unavailable: {_failure(exc)}"
    return "; last log lines: " + " | ".join(tail) if tail else "; previous log empty"


def pod_failure_evidence(
    api: k8s_client.ApiClient, namespace: str, selector: str, read_log: LogReader | None = None
) -> list[str] | None:
    """Evidence that pods matching ``selector`` will not become ready, or None.

    Detects ImagePullBackOff, ErrImagePull, CrashLoopBackOff, CreateContainerConfigError
    and InvalidImageName in container statuses; the rollout waiter calls this on every poll
    and fails at once with these lines. ``read_log(container, previous)`` (e.g. bound to
    ``provider.container_logs``) adds the crashed container's last log lines.
    """
    pods = k8s_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    problems = pod_problems(pods, read_log)
    return problems or None
