"""Play the KServe controller's ``manager`` container with the release's real manager binary.

A container whose image is a ``kserve-controller`` image runs as the ``kserve-manager``
binary of that tag (``binaries.ensure``: a source build of the release's ``cmd/manager``),
with the container's args and env as the API server stores them, except for what a
process on this machine must change (each change is a note of the report, like the
proxy's port remaps):

- ``--metrics-addr``, ``--webhook-port`` and ``--health-probe-addr`` (where the release has
  it: v0.11 does not) move to free loopback ports, so that groups never collide;
- ``--leader-elect`` is dropped: leader election needs the in-cluster namespace file, and
  the manager exits without it (one replica plays anyway).

It authenticates as the pod's ServiceAccount (``KUBECONFIG`` with a TokenRequest token: the
release's own RBAC decides; v0.11 ignores ``--kubeconfig``, every release reads the
variable) and reads its webhook serving pair where controller-runtime looks for it,
``$TMPDIR/k8s-webhook-server/serving-certs/tls.{crt,key}``. There the player writes the
Secret its Deployment mounts, as cert-manager issued it from the release's Certificate
(``write_serving_secret``; see ``e2e/local/certmanager.py``), or, where no Certificate names
that Secret, a pair signed by the control plane's CA (``write_serving_pair``, a deviation).

An ``llmisvc-controller`` image (v0.16's LLMInferenceService controller) runs as the
``kserve-llmisvc`` binary of its tag (the release's ``cmd/llmisvc``) the same way; its
metrics are HTTPS behind authn/authz, so its readiness is ``/readyz`` on its (remapped)
health-probe port. ``build_controllers_together`` compiles a release's two in one go build.

A release whose module the Go proxy refuses has no binary: ``StandInManager`` then serves
synthetic controller-runtime metrics in its place, and says so in its own output (the
``kserve_compat_stand_in_info`` metric), so the checks that read it are marked.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import requests

from e2e import binaries
from e2e.command import run
from e2e.errors import HarnessError, WorkloadUnavailable
from e2e.images import ImageReference
from e2e.local.metrics_upstream import MetricsUpstream
from e2e.local.pki import ClusterPki, write_private_file
from e2e.local.processes import ManagedProcess, OneProcess, StartsAndStops
from e2e.local.proxy_runner import flag_name
from e2e.secrets import redact

log = logging.getLogger(__name__)

MANAGER_REPOSITORY_NAME = "kserve-controller"
LLMISVC_REPOSITORY_NAME = "llmisvc-controller"
#: Image repository name -> the binary component that plays it.
CONTROLLER_COMPONENTS = {
    MANAGER_REPOSITORY_NAME: binaries.KSERVE_MANAGER,
    LLMISVC_REPOSITORY_NAME: binaries.KSERVE_LLMISVC,
}
METRICS_FLAG, WEBHOOK_PORT_FLAG, PROBE_FLAG, LEADER_FLAG = (
    "metrics-addr",
    "webhook-port",
    "health-probe-addr",
    "leader-elect",
)
#: The llmisvc controller's own ``--metrics-addr`` default (served over HTTPS).
LLMISVC_METRICS_DEFAULT = ":8443"
#: controller-runtime's default webhook port (what ``webhook-server`` container ports name).
DEFAULT_WEBHOOK_PORT = 9443
#: Where controller-runtime's webhook server reads its pair, under ``os.TempDir()``.
SERVING_CERTS = Path("k8s-webhook-server") / "serving-certs"
#: The hosts the serving certificate covers: the loopback URL the webhook configurations
#: are rewritten to, and the Service names a cluster would use.
WEBHOOK_HOSTS = ("127.0.0.1", "localhost")


class ManagerExited(HarnessError):
    """The played manager exited: the cell is an error (the harness cannot check without
    its controller), with the exit code and last lines as evidence."""

    def __init__(self, message: str, evidence: list[str]) -> None:
        super().__init__(message)
        self.evidence = evidence


def is_manager_image(image: str) -> bool:
    """Is ``image`` of a repository named kserve-controller (whatever its registry and tag)?"""
    return ImageReference.parse(image).path.rsplit("/", 1)[-1] == MANAGER_REPOSITORY_NAME


def is_llmisvc_image(image: str) -> bool:
    """Is ``image`` of a repository named llmisvc-controller (KServe's LLMInferenceService
    controller, v0.16 on), whatever its registry and tag?"""
    return ImageReference.parse(image).path.rsplit("/", 1)[-1] == LLMISVC_REPOSITORY_NAME


def controller_component(image: str) -> str | None:
    """The binary component that plays a KServe controller image (``kserve-manager`` or
    ``kserve-llmisvc``), or None for any other image."""
    return CONTROLLER_COMPONENTS.get(ImageReference.parse(image).path.rsplit("/", 1)[-1])


def manager_binary_for(image: str) -> tuple[str, Path]:
    """(what runs, the binary) for a kserve-controller image; WorkloadUnavailable with the
    reason (e.g. the Go module proxy's answer) when no binary exists and none can be built."""
    return controller_binary_for(image, binaries.KSERVE_MANAGER)


def controller_binary_for(image: str, component: str) -> tuple[str, Path]:
    """(what runs, the binary) of ``component`` at the image's tag; WorkloadUnavailable with
    the reason (e.g. the Go module proxy's answer, a release without that command) when no
    binary exists and none can be built."""
    tag = ImageReference.parse(image).tag
    if not tag:
        raise WorkloadUnavailable(f"{image}: no tag names its KServe release")
    try:
        found = binaries.locate(component, tag)
        if found is not None:
            return f"{component} {tag}", found
        ok, reason = binaries.buildable(component, tag)
    except HarnessError as exc:  # e.g. a tag that is not a version, a release before the command
        raise WorkloadUnavailable(f"{image}: {exc}") from None
    if not ok:
        raise WorkloadUnavailable(f"{component} {tag} unavailable: {reason}")
    try:
        return f"{component} {tag}", binaries.ensure(component, tag)
    except binaries.BuildUnavailable as exc:
        raise WorkloadUnavailable(f"{component} {tag} unavailable: {exc}") from None


def build_controllers_together(images: Iterable[str]) -> None:
    """Build the KServe commands that ``images`` need (the manager, the llmisvc controller)
    in one go build per release when more than one of a release is missing: the second
    costs a link, not a second compile. Anything that cannot be built is left for
    ``controller_binary_for`` to report, container by container."""
    wanted: dict[str, list[str]] = {}
    for image in images:
        component = controller_component(image)
        tag = ImageReference.parse(image).tag
        if component is None or not tag:
            continue
        try:
            if binaries.locate(component, tag) is None and binaries.buildable(component, tag)[0]:
                wanted.setdefault(tag, []).append(component)
        except HarnessError:
            continue
    for tag, components in wanted.items():
        if len(set(components)) < 2:
            continue
        try:
            binaries.ensure_together(sorted(set(components)), tag)
        except HarnessError as exc:
            log.warning("building %s %s together failed (%s); each is tried on its own", components, tag, exc)


@functools.lru_cache(maxsize=32)
def _flags_of(binary: str, mtime: float) -> frozenset[str]:
    result = run([binary, "-help"], f"the flags of {binary}", timeout=60, check=False)
    names = set()
    for line in (result.stdout + result.stderr).splitlines():
        word = line.strip().split(" ", 1)[0]
        if word.startswith("-") and len(word) > 1:
            names.add(word.lstrip("-"))
    return frozenset(names)


def flags_of(binary: Path) -> frozenset[str]:
    """The flags a Go ``flag``-based binary lists in its ``-help`` (cached per file)."""
    return _flags_of(os.fspath(binary), binary.stat().st_mtime)


def remap_manager_args(
    args: Sequence[str],
    *,
    metrics_port: int,
    webhook_port: int,
    probe_port: int | None,
    metrics_default: str = ":8080",
) -> tuple[list[str], list[str], dict[int, int]]:
    """The manager's args for a process on this machine, the notes of what changed, and the
    ports the container would listen on -> the ports the process listens on.

    ``--flag=value`` and ``--flag value`` are rewritten in place; an absent address flag is
    appended (its default would bind a fixed port on every interface); ``--leader-elect``
    (and ``--leader-elect=BOOL``) is dropped. ``probe_port`` None: the release has no
    ``--health-probe-addr``. ``metrics_default``: the binary's own default (the llmisvc
    controller's is ``:8443``).
    """
    wanted: dict[str, str] = {
        METRICS_FLAG: f"127.0.0.1:{metrics_port}",
        WEBHOOK_PORT_FLAG: str(webhook_port),
    }
    defaults = {METRICS_FLAG: metrics_default, WEBHOOK_PORT_FLAG: str(DEFAULT_WEBHOOK_PORT)}
    if probe_port is not None:
        wanted[PROBE_FLAG] = f"127.0.0.1:{probe_port}"
        defaults[PROBE_FLAG] = ":8081"
    originals = dict(defaults)
    result: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    index = 0
    while index < len(args):
        arg = args[index]
        parsed = flag_name(arg)
        name, value = parsed if parsed else ("", None)
        if name == LEADER_FLAG:
            notes.append(f"--{LEADER_FLAG}: removed (it needs the in-cluster namespace; one replica plays)")
            index += 1
            continue
        if name not in wanted:
            result.append(arg)
            index += 1
            continue
        prefix = arg[: len(arg) - len(arg.lstrip("-"))]
        if value is None:  # --flag value
            value = args[index + 1] if index + 1 < len(args) else ""
            index += 2
        else:
            index += 1
        originals[name] = value
        seen.add(name)
        result.append(f"{prefix}{name}={wanted[name]}")
        notes.append(f"--{name}: {value} -> {wanted[name]}")
    for name, value in wanted.items():
        if name not in seen:
            result.append(f"--{name}={value}")
            notes.append(f"--{name}: (absent, default {defaults[name]}) -> {value}")
    ports = {_port_of(originals[name]): _port_of(value) for name, value in wanted.items()}
    return result, notes, ports


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def container_env(
    container: Any, *, namespace: str, pod_name: str, service_account: str
) -> tuple[dict[str, str], list[str]]:
    """The container's ``env`` as the process gets it: literal values and the downward API
    fields a process here can be given; anything else is left out and noted."""
    fields = {
        "metadata.namespace": namespace,
        "metadata.name": pod_name,
        "spec.serviceAccountName": service_account,
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    env: dict[str, str] = {}
    notes: list[str] = []
    for variable in container.env or []:
        source = variable.value_from
        if source is None:
            env[variable.name] = variable.value or ""
        elif source.field_ref is not None and source.field_ref.field_path in fields:
            env[variable.name] = fields[source.field_ref.field_path]
        else:
            notes.append(f"env {variable.name}: not set (its valueFrom is not played here)")
    return env, notes


def write_serving_pair(pki: ClusterPki, tmpdir: Path, name: str) -> Path:
    """A webhook serving pair signed by the control plane's CA, where controller-runtime
    reads it under ``tmpdir``; returns the CA file (the webhooks' caBundle)."""
    pair = pki.issue_serving_cert(name, WEBHOOK_HOSTS)
    directory = tmpdir / SERVING_CERTS
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pair.cert, directory / "tls.crt")
    shutil.copyfile(pair.key, directory / "tls.key")
    os.chmod(directory / "tls.key", 0o600)
    return pki.ca.cert


def write_serving_secret(data: Mapping[str, bytes], tmpdir: Path) -> Path:
    """A Secret's ``tls.crt`` and ``tls.key`` where controller-runtime reads them under
    ``tmpdir`` (what the kubelet's Secret volume mount does); returns their directory."""
    directory = tmpdir / SERVING_CERTS
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(data["tls.crt"])
    write_private_file(directory / "tls.key", data["tls.key"])
    return directory


class ManagerProcess(OneProcess):
    """A running KServe manager; ready once ``/metrics`` answers 200 and its webhook port
    completes a TLS handshake (readiness that every release has: v0.11 has no probe port).

    With ``ready_port`` (the llmisvc controller, whose metrics are HTTPS behind authn/authz):
    once ``/readyz`` on that health-probe port answers 200 instead of ``/metrics``.
    """

    def __init__(
        self,
        binary: Path,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        kubeconfig: Path,
        tmpdir: Path,
        workdir: Path,
        metrics_port: int,
        webhook_port: int,
        name: str = "kserve-manager",
        start_timeout: float = 60.0,
        notes: Sequence[str] = (),
        ready_port: int | None = None,
    ) -> None:
        self.binary = binary
        self.ready_port = ready_port
        self.args = list(args)
        self.metrics_port = metrics_port
        self.webhook_port = webhook_port
        self.start_timeout = start_timeout
        self.remap_notes = list(notes)
        tmpdir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            name,
            [binary, *self.args],
            log_path=workdir / f"{name}.log",
            env={**env, "KUBECONFIG": os.fspath(kubeconfig), "TMPDIR": os.fspath(tmpdir)},
            cwd=workdir,
        )

    @property
    def address(self) -> str:
        """``HOST:PORT`` of its plain-HTTP metrics endpoint."""
        return f"127.0.0.1:{self.metrics_port}"

    def start(self) -> Self:
        log.info("starting %s %s", self.process.name, " ".join(redact(a) for a in self.args))
        ready = (
            f"readyz on 127.0.0.1:{self.ready_port}" if self.ready_port is not None else f"metrics on {self.address}"
        )
        self._start_and_wait(
            f"{self.process.name} {ready} and webhooks on port {self.webhook_port}",
            self._probe,
            self.start_timeout,
        )
        return self

    def _probe(self) -> tuple[bool, str]:
        what, url = ("metrics", f"http://{self.address}/metrics")
        if self.ready_port is not None:
            what, url = ("readyz", f"http://127.0.0.1:{self.ready_port}/readyz")
        try:
            response = requests.get(url, timeout=2)
        except requests.RequestException as exc:
            return False, f"{what}: {type(exc).__name__}"
        if response.status_code != 200:
            return False, f"{what}: HTTP {response.status_code}"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # readiness only; the API server verifies
        try:
            with (
                socket.create_connection(("127.0.0.1", self.webhook_port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True, f"{what} 200, webhook TLS"
        except OSError as exc:
            return False, f"webhooks: {type(exc).__name__}: {exc}"


class StandInManager(StartsAndStops):
    """The labelled fallback for a release without a manager binary: synthetic
    controller-runtime metrics on a free port; it serves no webhooks and reconciles nothing."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.upstream = MetricsUpstream(stand_in_reason=reason)
        self.remap_notes: list[str] = []

    @property
    def address(self) -> str:
        return self.upstream.address

    @property
    def alive(self) -> bool:
        return True

    @property
    def exit_code(self) -> int | None:
        return None

    def start(self) -> Self:
        self.upstream.start()
        return self

    def stop(self) -> None:
        self.upstream.stop()

    def logs(self) -> str:
        return f"(stand-in for the KServe manager: {self.reason})\n"

    def tail_lines(self, lines: int = 15) -> list[str]:
        return self.logs().splitlines()[-lines:]
