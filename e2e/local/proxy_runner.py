"""Run a real kube-rbac-proxy binary as a process, the way the sidecar runs in the pod.

The proxy gets the container's args verbatim except for the addresses a process on
this machine must change: ``--secure-listen-address`` (a free loopback port instead of
``0.0.0.0:8443``) and, only where it names a port of another container of the pod (the
manager's ``127.0.0.1:8080``), ``--upstream`` (where the process playing that container
listens); ``remap_ports`` rewrites them and says what it changed. The proxy
authenticates to the API server as a ServiceAccount through ``--kubeconfig`` (in a pod it
would use the mounted token), so its TokenReviews and SubjectAccessReviews are real.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from e2e import binaries
from e2e.errors import UsageError, WorkloadUnavailable
from e2e.images import ImageReference
from e2e.local.processes import ManagedProcess, OneProcess, free_loopback_port
from e2e.secrets import redact

log = logging.getLogger(__name__)

LISTEN_FLAG = "secure-listen-address"
UPSTREAM_FLAG = "upstream"
PROXY_REPOSITORY_NAME = "kube-rbac-proxy"


def proxy_version_of(image: str) -> str | None:
    """The kube-rbac-proxy version an image runs, or None if it is not a kube-rbac-proxy image.

    gcr.io/kubebuilder, registry.k8s.io/kubebuilder and quay.io/brancz hold the same
    builds of each tag, so the repository's registry does not matter here. A patched
    build's tag (``v0.18.0-fix1``) is its own version (see ``binaries.proxy_version_or_tag``).
    """
    ref = ImageReference.parse(image)
    if not is_proxy_image(image) or not ref.tag:
        return None
    return binaries.proxy_version_or_tag(ref.tag)


def is_proxy_image(image: str) -> bool:
    """Is ``image`` of a repository named kube-rbac-proxy (whatever its registry and tag)?"""
    return ImageReference.parse(image).name.rsplit("/", 1)[-1] == PROXY_REPOSITORY_NAME


def proxy_binary_for(image: str, given: Mapping[str, Path] | None = None) -> tuple[str, Path]:
    """(what runs, the binary) for a kube-rbac-proxy image; WorkloadUnavailable with the
    reason when no binary exists and none can be made.

    ``given`` (``--proxy-binary``) wins; then the per-version variable, the bin dir and the
    cache (``binaries.locate``); then, for a released version, a build from the Go module
    proxy or a copy out of the published image (``binaries.ensure_proxy``).
    """
    if given and image in given:
        return f"kube-rbac-proxy from --proxy-binary {given[image]}", given[image]
    version = proxy_version_of(image)
    if version is None:
        raise WorkloadUnavailable(
            f"{image}: its tag names no kube-rbac-proxy version; give its binary with --proxy-binary PATH"
        )
    found = binaries.locate(binaries.PROXY, version)
    if found is not None:
        return f"kube-rbac-proxy {version}", found
    if not binaries.is_release_version(version):
        raise WorkloadUnavailable(
            f"{image}: no local binary of this patched build; give it with --proxy-binary PATH or "
            f"{binaries.env_var(binaries.PROXY, version)}"
        )
    ok, reason = binaries.buildable(binaries.PROXY, version)
    if not ok:
        raise WorkloadUnavailable(f"{image}: no local kube-rbac-proxy {version} binary ({reason})")
    try:
        return f"kube-rbac-proxy {version}", binaries.ensure_proxy(version)
    except binaries.BuildUnavailable as exc:
        raise WorkloadUnavailable(f"{image}: no local kube-rbac-proxy {version} binary ({exc})") from None


def flag_name(arg: str) -> tuple[str, str | None] | None:
    """``("name", value-or-None)`` for ``--name=value`` / ``--name`` / ``-name``; else None."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    name, sep, value = arg.lstrip("-").partition("=")
    return name, (value if sep else None)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value of ``--flag`` in ``args`` (``--flag=v`` or ``--flag v``), or None."""
    found: str | None = None
    for index, arg in enumerate(args):
        parsed = flag_name(arg)
        if parsed is None or parsed[0] != flag:
            continue
        if parsed[1] is not None:
            found = parsed[1]
        elif index + 1 < len(args):
            found = args[index + 1]
    return found


def remap_ports(
    args: Sequence[str], listen_port: int, upstream_url: str | None, *, listen_host: str = "127.0.0.1"
) -> tuple[list[str], list[str]]:
    """``args`` with ``--secure-listen-address`` (and ``--upstream``, unless
    ``upstream_url`` is None: then it stays as given) pointed at this machine.

    Both the ``--flag=value`` and the ``--flag value`` forms are rewritten in place (so
    the arguments keep their order); a flag that is absent is appended. The second list
    says, one line per change, what was remapped: reports show it as a deviation.
    """
    wanted = {LISTEN_FLAG: f"{listen_host}:{listen_port}"}
    if upstream_url is not None:
        wanted[UPSTREAM_FLAG] = upstream_url
    result: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    index = 0
    while index < len(args):
        arg = args[index]
        parsed = flag_name(arg)
        if parsed is None or parsed[0] not in wanted:
            result.append(arg)
            index += 1
            continue
        name, value = parsed
        prefix = arg[: len(arg) - len(arg.lstrip("-"))]
        seen.add(name)
        if value is not None:  # --flag=value
            result.append(f"{prefix}{name}={wanted[name]}")
            old = value
            index += 1
        else:  # --flag value
            old = args[index + 1] if index + 1 < len(args) else ""
            result += [arg, wanted[name]]
            index += 2
        notes.append(f"--{name}: {old} -> {wanted[name]}")
    for name, value in wanted.items():
        if name not in seen:
            result.append(f"--{name}={value}")
            notes.append(f"--{name}: (absent) -> {value}")
    return result, notes


class ProxyProcess(OneProcess):
    """A running kube-rbac-proxy; a context manager. Start it with ``start()``.

    ``args`` are used as given (already remapped) plus ``--kubeconfig``; the proxy's TLS
    address is read from their ``--secure-listen-address``.
    """

    def __init__(
        self,
        binary: Path,
        args: Sequence[str],
        *,
        kubeconfig: Path,
        workdir: Path,
        name: str = "kube-rbac-proxy",
        start_timeout: float = 30.0,
        remap_notes: Sequence[str] = (),
    ) -> None:
        listen = flag_value(args, LISTEN_FLAG)
        if not listen or ":" not in listen:
            raise UsageError(f"kube-rbac-proxy args: expected --{LISTEN_FLAG}=HOST:PORT, got {listen!r}")
        host, _, port = listen.rpartition(":")
        # A wildcard listener is reached on loopback.
        self._connect_host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host
        self._port = int(port)
        self.binary = binary
        self.args = [*args, f"--kubeconfig={os.fspath(kubeconfig)}"]
        self.remap_notes = list(remap_notes)
        self.start_timeout = start_timeout
        self.process = ManagedProcess(name, [binary, *self.args], log_path=workdir / f"{name}.log")

    @classmethod
    def from_container_args(
        cls,
        binary: Path,
        container_args: Sequence[str],
        *,
        upstream_url: str,
        kubeconfig: Path,
        workdir: Path,
        name: str = "kube-rbac-proxy",
        start_timeout: float = 30.0,
    ) -> ProxyProcess:
        """A proxy with a container's args, its two addresses remapped to a free local port
        and ``upstream_url`` (see ``remap_notes``)."""
        args, notes = remap_ports(container_args, free_loopback_port(), upstream_url)
        return cls(
            binary,
            args,
            kubeconfig=kubeconfig,
            workdir=workdir,
            name=name,
            start_timeout=start_timeout,
            remap_notes=notes,
        )

    @property
    def address(self) -> str:
        """``HOST:PORT`` where the proxy serves TLS."""
        return f"{self._connect_host}:{self._port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def start(self) -> Self:
        """Start the proxy and wait until its TLS port completes a handshake.

        Raises ``ProcessExitedEarly`` (exit code, last output lines) if it exits first,
        e.g. on an unknown flag, and ``NotReady`` if it never serves.
        """
        log.info("starting %s %s", self.process.name, " ".join(redact(a) for a in self.args))
        self._start_and_wait(f"{self.process.name} TLS on {self.address}", self._tls_probe, self.start_timeout)
        return self

    def logs_redacted(self) -> str:
        return redact(self.process.output())

    def _tls_probe(self) -> tuple[bool, str]:
        # Readiness only; callers decide about trust. A bare context: the default one loads
        # the system CA store first (~30 ms of CPU per probe) for nothing.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((self._connect_host, self._port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname=self._connect_host) as tls,
            ):
                return True, f"TLS {tls.version()}"
        except OSError as error:
            return False, f"{type(error).__name__}: {error}"
