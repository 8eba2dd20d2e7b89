"""cert-manager's controller and cainjector played as processes (local tier).

A real cluster has cert-manager issue KServe's webhook serving certificate (the release's
``Certificate``, from its self-signed ``Issuer``) into the Secret the Certificate names, and
its cainjector copy that certificate's CA into every webhook configuration (and CRD
conversion) annotated ``cert-manager.io/inject-ca-from``. The local tier runs the same two
binaries of cert-manager v1.11.5 (the newest whose commands build from its main module,
``binaries.CERT_MANAGER_COMPONENTS``) against the local API server:

- ``controller --v=2 --leader-elect=false --cluster-resource-namespace=cert-manager`` with
  its metrics on a free loopback port (its readiness: ``/metrics`` answers 200);
- ``cainjector --v=2 --leader-elect=false`` (it serves no metrics in v1.11.5).

``--v=2`` is what cert-manager's chart passes; leader election is off (one replica each).

Both authenticate with the control plane's admin kubeconfig: cert-manager's own RBAC is
not applied locally (only its CRDs are), a recorded deviation.

One change to the release's objects: the API server reaches the played webhook server at
``https://127.0.0.1:<port>``, which the Certificate's ``dnsNames`` (the Service's names)
do not cover. ``add_loopback_ip`` gives the Certificate ``ipAddresses: [127.0.0.1]``
before the controller first issues it (a recorded deviation naming that change).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import requests
import tenacity
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from e2e import binaries
from e2e.errors import HarnessError, WorkloadFailed, WorkloadUnavailable
from e2e.local.processes import (
    ManagedProcess,
    ProcessExitedEarly,
    StartsAndStops,
    free_loopback_port,
    stop_together,
    wait_ready,
)
from e2e.secrets import redact

log = logging.getLogger(__name__)

VERSION = binaries.DEFAULT_VERSIONS["cert-manager-controller"]
CONTROLLER, CAINJECTOR = "cert-manager-controller", "cert-manager-cainjector"
#: The namespace of cert-manager's install (where ClusterIssuers keep their Secrets).
NAMESPACE = "cert-manager"
GROUP, API_VERSION, PLURAL = "cert-manager.io", "v1", "certificates"
INJECT_ANNOTATION = "cert-manager.io/inject-ca-from"
LOOPBACK_IP = "127.0.0.1"

AUTH_DEVIATION = (
    f"cert-manager {VERSION} controller and cainjector authenticate with the local control plane's admin "
    "kubeconfig (cert-manager's own ServiceAccounts and RBAC are not applied locally, only its CRDs)"
)


def issued_deviation(namespace: str, certificate: str, secret: str) -> str:
    """What is real about one played manager's serving certificate, and what changed."""
    return (
        f"webhook serving certificate issued by cert-manager {VERSION} (controller and cainjector played as "
        f"processes) into Secret {namespace}/{secret}; Certificate "
        f"{namespace}/{certificate} given ipAddresses [{LOOPBACK_IP}] so the API server can verify "
        f"https://{LOOPBACK_IP}:<port>"
    )


def version_deviation(api: k8s_client.ApiClient) -> str | None:
    """What plays cert-manager when its version is not the one whose CRDs the install applied
    (the version KServe's quick-install names, or the offline directory's substitute for it):
    only v1.11.5 is built here, the newest whose module the Go proxy serves."""
    crd = k8s_client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    applied = (crd.metadata.labels or {}).get("app.kubernetes.io/version", "")
    if applied == VERSION:
        return None
    return (
        f"cert-manager {VERSION}'s controller and cainjector (the newest version built here) stand in for "
        f"cert-manager {applied or '(version not labelled)'}, whose CRDs the install applied"
    )


class CertManagerExited(WorkloadFailed):
    """A cert-manager process exited: its exit code and last lines are the evidence."""


def binaries_for_version(version: str = VERSION) -> tuple[Path, Path]:
    """(controller, cainjector) binaries, built if missing; ``WorkloadUnavailable`` with the
    reason when they cannot be."""
    try:
        return binaries.ensure(CONTROLLER, version), binaries.ensure(CAINJECTOR, version)
    except HarnessError as exc:
        raise WorkloadUnavailable(f"cert-manager {version} unavailable: {exc}") from None


class CertManager(StartsAndStops):
    """cert-manager's controller and cainjector as two processes against one API server."""

    def __init__(
        self,
        controller: Path,
        cainjector: Path,
        *,
        kubeconfig: Path,
        workdir: Path,
        start_timeout: float = 60.0,
        extra_controller_args: tuple[str, ...] = (),
    ) -> None:
        self.start_timeout = start_timeout
        self.metrics_port = free_loopback_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.controller = ManagedProcess(
            CONTROLLER,
            [
                controller,
                "--v=2",
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                f"--cluster-resource-namespace={NAMESPACE}",
                f"--metrics-listen-address={LOOPBACK_IP}:{self.metrics_port}",
                *extra_controller_args,
            ],
            log_path=workdir / f"{CONTROLLER}.log",
            cwd=workdir,
        )
        self.cainjector = ManagedProcess(
            CAINJECTOR,
            [cainjector, "--v=2", f"--kubeconfig={kubeconfig}", "--leader-elect=false"],
            log_path=workdir / f"{CAINJECTOR}.log",
            cwd=workdir,
        )

    @property
    def processes(self) -> tuple[ManagedProcess, ManagedProcess]:
        return self.controller, self.cainjector

    @property
    def alive(self) -> bool:
        return all(process.alive for process in self.processes)

    def start(self) -> Self:
        try:
            for process in self.processes:
                process.start()
            wait_ready(
                f"cert-manager {VERSION} controller metrics on {LOOPBACK_IP}:{self.metrics_port}",
                self._probe,
                watched=list(self.processes),
                timeout=self.start_timeout,
            )
        except ProcessExitedEarly as exc:
            self.stop()
            raise self._exited(exc) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _probe(self) -> tuple[bool, str]:
        try:
            response = requests.get(f"http://{LOOPBACK_IP}:{self.metrics_port}/metrics", timeout=2)
        except requests.RequestException as exc:
            return False, f"metrics: {type(exc).__name__}"
        return response.status_code == 200, f"metrics: HTTP {response.status_code}"

    def ensure_running(self) -> None:
        """Raise ``CertManagerExited`` (exit code, last lines) if either process ended."""
        try:
            for process in self.processes:
                process.ensure_running()
        except ProcessExitedEarly as exc:
            raise self._exited(exc) from None

    def _exited(self, exc: ProcessExitedEarly) -> CertManagerExited:
        process = next(p for p in self.processes if p.name == exc.name)
        return CertManagerExited(
            f"{exc.name} {VERSION} exited with code {exc.returncode}",
            [f"exit code {exc.returncode}", *process.tail_lines(15)],
        )

    def stop(self) -> None:
        stop_together(self.processes)

    def terminate(self) -> None:
        for process in self.processes:
            process.terminate()

    def logs(self) -> dict[str, str]:
        """Each process's output by name, NOT redacted (search it, never print it)."""
        return {process.name: process.output() for process in self.processes}


# -- the release's Certificate ----------------------------------------------------------------


def certificate_for_secret(api: k8s_client.ApiClient, namespace: str, secret: str) -> dict[str, Any] | None:
    """The Certificate of ``namespace`` whose ``spec.secretName`` is ``secret``, if any."""
    custom = k8s_client.CustomObjectsApi(api)
    try:
        listing = custom.list_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL)
    except ApiException as exc:
        if exc.status == 404:  # cert-manager's CRDs are not installed
            return None
        raise
    for certificate in listing.get("items", []):
        if (certificate.get("spec") or {}).get("secretName") == secret:
            found: dict[str, Any] = certificate
            return found
    return None


def add_loopback_ip(api: k8s_client.ApiClient, certificate: dict[str, Any]) -> bool:
    """Give ``certificate`` the IP SAN 127.0.0.1 (kept with any it has); True if it changed."""
    addresses = list((certificate.get("spec") or {}).get("ipAddresses") or [])
    if LOOPBACK_IP in addresses:
        return False
    meta = certificate["metadata"]
    k8s_client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        API_VERSION,
        meta["namespace"],
        PLURAL,
        meta["name"],
        {"spec": {"ipAddresses": [*addresses, LOOPBACK_IP]}},
    )
    log.info("Certificate %s/%s: ipAddresses += %s", meta["namespace"], meta["name"], LOOPBACK_IP)
    return True


class _Waiting(Exception):
    def __init__(self, seen: str) -> None:
        super().__init__(seen)
        self.seen = seen


def _wait(what: str, attempt: Callable[[], Any], cert_manager: CertManager, timeout: float) -> Any:
    """Retry ``attempt`` (which raises ``_Waiting`` with what it saw) with backoff for up to
    ``timeout`` seconds; cert-manager exiting meanwhile fails at once with its evidence."""
    log.info("waiting up to %.0fs for %s", timeout, what)
    last_report = [time.monotonic()]

    def once() -> Any:
        cert_manager.ensure_running()
        try:
            return attempt()
        except _Waiting as waiting:
            if time.monotonic() - last_report[0] > 5:
                log.info("still waiting for %s; last saw: %s", what, redact(waiting.seen))
                last_report[0] = time.monotonic()
            raise

    try:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Waiting),
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
            reraise=True,
        )(once)
    except _Waiting as waiting:
        seen = " ".join(redact(waiting.seen).split())[:400]
        raise HarnessError(f"{what}: not done after {timeout:.0f}s; last saw: {seen}") from None


def wait_issued(
    api: k8s_client.ApiClient,
    namespace: str,
    certificate: str,
    cert_manager: CertManager,
    timeout: float = 90.0,
) -> dict[str, bytes]:
    """The Secret's ``tls.crt``, ``tls.key`` and ``ca.crt`` once cert-manager says the
    Certificate is Ready for its current spec (``observedGeneration``)."""
    custom = k8s_client.CustomObjectsApi(api)
    core = k8s_client.CoreV1Api(api)

    def attempt() -> dict[str, bytes]:
        found = custom.get_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL, certificate)
        generation = found["metadata"].get("generation", 0)
        conditions = (found.get("status") or {}).get("conditions") or []
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        if ready is None:
            raise _Waiting("no Ready condition yet")
        if ready.get("status") != "True" or ready.get("observedGeneration", 0) < generation:
            raise _Waiting(
                f"Ready={ready.get('status')} (generation {ready.get('observedGeneration')} of {generation}): "
                f"{ready.get('reason')}: {ready.get('message')}"
            )
        secret_name = found["spec"]["secretName"]
        try:
            secret = core.read_namespaced_secret(secret_name, namespace)
        except ApiException as exc:
            raise _Waiting(f"Secret {secret_name}: HTTP {exc.status}") from None
        data = secret.data or {}
        missing = [key for key in ("tls.crt", "tls.key", "ca.crt") if not data.get(key)]
        if missing:
            raise _Waiting(f"Secret {secret_name} lacks {', '.join(missing)}")
        return {key: base64.b64decode(data[key]) for key in ("tls.crt", "tls.key", "ca.crt")}

    issued: dict[str, bytes] = _wait(
        f"cert-manager to issue Certificate {namespace}/{certificate}", attempt, cert_manager, timeout
    )
    return issued


def webhook_configurations_injected_from(api: k8s_client.ApiClient, source: str) -> list[tuple[str, Any]]:
    """(kind, object) of every admission webhook configuration annotated to take its CA from
    the Certificate ``source`` (``namespace/name``)."""
    admission = k8s_client.AdmissionregistrationV1Api(api)
    found: list[tuple[str, Any]] = []
    for kind, listing in (
        ("ValidatingWebhookConfiguration", admission.list_validating_webhook_configuration()),
        ("MutatingWebhookConfiguration", admission.list_mutating_webhook_configuration()),
    ):
        for configuration in listing.items:
            if (configuration.metadata.annotations or {}).get(INJECT_ANNOTATION) == source:
                found.append((kind, configuration))
    return found


def wait_injected(
    api: k8s_client.ApiClient, source: str, ca_pem: bytes, cert_manager: CertManager, timeout: float = 60.0
) -> int:
    """Wait until the cainjector put ``ca_pem`` into every webhook of every configuration
    annotated with ``source``; returns how many webhooks carry it."""
    wanted = base64.b64encode(ca_pem).decode()

    def attempt() -> int:
        count = 0
        stale = []
        for kind, configuration in webhook_configurations_injected_from(api, source):
            for webhook in configuration.webhooks or []:
                if webhook.client_config.ca_bundle != wanted:
                    stale.append(f"{kind} {configuration.metadata.name}/{webhook.name}")
                count += 1
        if stale:
            raise _Waiting(f"caBundle not (yet) the Certificate's CA in {len(stale)}: {', '.join(stale[:3])}")
        return count

    injected: int = _wait(f"cert-manager's cainjector to inject {source}'s CA", attempt, cert_manager, timeout)
    return injected
