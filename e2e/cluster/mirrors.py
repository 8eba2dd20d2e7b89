"""Registry mirrors for kind nodes: the kubelet pulls every image, as in production.

Each upstream registry host a run needs (docker.io, quay.io, gcr.io, registry.k8s.io, the
harness's own ``kserve-compat.local``, ...) gets a mirror: Debian's ``docker-registry``
(CNCF distribution) as a process of the run, with its storage in the harness's cache so that
what one run put there the next finds. containerd in every node reads
``/etc/containerd/certs.d/<host>/hosts.toml`` (a directory of the run, bind-mounted into the
nodes), whose ``server`` line replaces the host by its mirror, so nothing falls back to the
real registry. ``_default/hosts.toml`` sends any other host to a closed port.

- Offline (``--local-images``): a mirror holds what the run pushed into it from the local
  Docker engine (the image set ``kserve-compat images build`` made), under the image's exact
  upstream name. Nothing comes from the internet; an image nobody pushed answers 404, so a
  retired registry's image fails as in production since 2026-03-06: the kubelet's
  ``code = NotFound ... not found``.
- Online (a ``remote`` URL per host): a pull-through cache of the real registry
  (distribution's ``proxy.remoteurl``).

Addresses: the registry listens on loopback only (where ``docker push`` may speak plain HTTP);
the nodes reach it through a relay on the kind network's gateway address, the one address of
this host they see. Neither listens on every interface; both stop with the cluster.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import requests
import yaml

from e2e import docker_cli
from e2e.atomic_write import write_atomic
from e2e.cache import cache_root
from e2e.errors import EnvironmentMissing, HarnessError
from e2e.images import ImageReference
from e2e.local.processes import ManagedProcess, OneProcess, free_loopback_port
from e2e.local.service_relay import ServiceRelay

log = logging.getLogger(__name__)

REGISTRY_BINARIES = ("docker-registry", "registry")
# Inside the node: where containerd looks for per-host registry configuration.
NODE_CERTS_DIR = "/etc/containerd/certs.d"
# A host no mirror was made for goes here: connection refused at once, no DNS, no traffic.
CLOSED_PORT = "http://127.0.0.1:1"
# Distribution's canonical name for Docker Hub, and where its API really lives.
DOCKER_HUB = "docker.io"
UPSTREAM_URLS = {DOCKER_HUB: "https://registry-1.docker.io"}
# What `docker push` of a single-platform image stores, with its config digest (= image Id).
SINGLE_MANIFEST_TYPES = ", ".join(
    ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")
)
# Registries that exist only here: the harness's own images (Prometheus, the model store).
OWN_HOSTS = frozenset({"kserve-compat.local"})
READY_TIMEOUT_S = 30.0
PUSH_TIMEOUT_S = 1800.0
# What the registry logs when its storage's filesystem is full (ENOSPC, as Go words it).
DISK_FULL = "no space left on device"


def registry_binary() -> str:
    for name in REGISTRY_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise EnvironmentMissing(
        "registry mirrors need CNCF distribution's registry binary: apt-get install docker-registry"
    )


def hosts_toml(server: str, served_by: str = "the run's mirror") -> str:
    """containerd's hosts.toml: ``server`` replaces the registry (no fallback to it)."""
    return f'# kserve-compat: this registry is served by {served_by}\nserver = "{server}"\n'


def mirror_config(storage: Path, port: int, remote: str | None) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if remote:
        config["proxy"] = {"remoteurl": remote}
    return config


def upstream_name(image: str) -> tuple[str, str]:
    """(registry host, ``path:tag`` or ``path@digest`` within it) of an image reference."""
    ref = ImageReference.parse(image).normalized()
    assert ref.registry is not None  # normalized() always names one
    host = DOCKER_HUB if ref.registry in ("docker.io", "index.docker.io") else ref.registry
    suffix = f"@{ref.digest}" if ref.digest else f":{ref.tag}"
    return host, f"{ref.path}{suffix}"


class RegistryMirror(OneProcess):
    """One host's mirror: a registry on loopback and a relay to it on the nodes' gateway."""

    def __init__(self, host: str, storage: Path, workdir: Path, gateway: str, remote: str | None) -> None:
        self.host = host
        self.remote = remote
        self.storage = storage
        self.port = free_loopback_port()
        self.config_file = workdir / f"{_slug(host)}.yml"
        self.gateway = gateway
        self.process = ManagedProcess(
            f"mirror {host}", [registry_binary(), "serve", self.config_file], log_path=workdir / f"{_slug(host)}.log"
        )
        self.relay: ServiceRelay | None = None  # bound at start, so a failed start leaks no socket

    @property
    def local_url(self) -> str:
        """Where this host pushes and asks: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def node_url(self) -> str:
        """Where the nodes pull from: ``http://GATEWAY:PORT``."""
        if self.relay is None:
            raise HarnessError(f"mirror of {self.host}: not started")
        return f"http://{self.relay.address}"

    def start(self) -> Self:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(mirror_config(self.storage, self.port, self.remote)))

        def probe() -> tuple[bool, str]:
            try:
                answer = requests.get(f"{self.local_url}/v2/", timeout=2)
            except requests.RequestException as exc:
                return False, type(exc).__name__
            return answer.status_code == 200, f"GET /v2/ answered {answer.status_code}"

        self._start_and_wait(f"registry mirror of {self.host}", probe, READY_TIMEOUT_S)
        try:
            self.relay = ServiceRelay(lambda: f"127.0.0.1:{self.port}", name=f"mirror-{self.host}", host=self.gateway)
            self.relay.start()
        except BaseException as exc:
            self.process.stop()
            if isinstance(exc, OSError):
                raise HarnessError(
                    f"mirror of {self.host}: cannot listen on {self.gateway}, the kind network's gateway ({exc}); "
                    "the nodes reach this host only there (rootless or remote Docker engines are not supported)"
                ) from None
            raise
        how = f"pull-through cache of {self.remote}" if self.remote else "holds what the run pushed"
        log.info("mirror of %s at %s for the nodes (%s; storage %s)", self.host, self.node_url, how, self.storage)
        return self

    def stop(self) -> int | None:
        if self.relay is not None:
            self.relay.stop()
        return self.process.stop()

    def config_digest(self, name: str) -> str | None:
        """The config digest of ``path:tag`` in the mirror (what ``docker image inspect``
        calls the image's Id), or None when the mirror does not hold it."""
        path, reference = _split(name)
        answer = requests.get(
            f"{self.local_url}/v2/{path}/manifests/{reference}", headers={"Accept": SINGLE_MANIFEST_TYPES}, timeout=30
        )
        if answer.status_code != 200:
            return None
        digest = (answer.json().get("config") or {}).get("digest")
        return str(digest) if digest else None

    def push(self, image: str, name: str, docker: str = "docker") -> None:
        """Copy ``image`` from the local Docker engine into the mirror as ``name``."""
        log.info("pushing %s into the mirror of %s (from the local Docker engine)", image, self.host)
        try:
            push_from_engine(image, f"127.0.0.1:{self.port}/{name}", docker)
        except HarnessError:
            # docker push says only "500 Internal Server Error"; the registry's log says why.
            full = self.storage_full()
            if full:
                raise HarnessError(f"pushing {image}: {full}") from None
            raise

    def storage_full(self) -> str | None:
        """One line when the registry's log says its storage's filesystem is full, else None."""
        if not any(DISK_FULL in line for line in self.tail_lines(50)):
            return None
        try:
            free = f"{shutil.disk_usage(self.storage).free / 2**20:.1f} MiB free there now"
        except OSError as exc:
            free = f"its free space unknown: {exc.strerror}"
        return (
            f"mirror of {self.host}: its storage {self.storage} is full ({DISK_FULL}; {free}); free space on "
            f"that filesystem, or delete that folder (a cache: the next run fills it again)"
        )

    def evidence(self) -> list[str]:
        """Why the mirror may have failed a pull: alive or not (or out of disk), and its last log lines."""
        state = "running" if self.alive else f"exited with {self.exit_code}"
        where = self.node_url if self.relay is not None else f"127.0.0.1:{self.port}"
        full = self.storage_full()
        if full:
            state += f", {full.removeprefix(f'mirror of {self.host}: ')}"
        return [f"mirror of {self.host} ({where}): {state}", *self.tail_lines(10)]


@dataclass(frozen=True)
class MirrorMode:
    """Offline (``remotes`` empty: only what was pushed) or online (a pull-through URL per host)."""

    remotes: Mapping[str, str]
    name: str

    @classmethod
    def offline(cls) -> MirrorMode:
        return cls({}, "offline")

    @classmethod
    def online(cls, remotes: Mapping[str, str] | None = None) -> MirrorMode:
        return cls(dict(remotes or {}), "online")

    def remote(self, host: str) -> str | None:
        """The upstream to cache, or None: the mirror holds what the run pushes into it."""
        if self.name == "offline" or host in OWN_HOSTS:
            return None
        return self.remotes.get(host) or UPSTREAM_URLS.get(host) or f"https://{host}"


class NodeMirrors:
    """The mirrors of one kind cluster: started per host on first use, stopped together.

    ``certs_dir`` is bind-mounted into every node at ``/etc/containerd/certs.d`` before the
    cluster exists; containerd reads it at every pull, so a host's mirror may start later.
    """

    def __init__(
        self,
        certs_dir: Path,
        workdir: Path,
        mode: MirrorMode,
        gateway: Callable[[], str],
        storage_root: Path | None = None,
        user_registries: dict[str, str] | None = None,
    ) -> None:
        self.certs_dir = certs_dir
        # --registry-mirror HOST=URL: these hosts are the user's registry's, not a mirror of ours.
        self.user_registries = dict(user_registries or {})
        self.workdir = workdir
        self.mode = mode
        self.storage_root = storage_root or cache_root() / "mirrors" / mode.name
        self._find_gateway = gateway  # asked once, when the first mirror starts (the network exists by then)
        self.gateway: str | None = None
        self.mirrors: dict[str, RegistryMirror] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """The certs.d directory the nodes mount. Offline, every host without a mirror goes to
        the closed port; online such a host is pulled from directly, as without a mirror."""
        self.certs_dir.mkdir(parents=True, exist_ok=True)
        if self.mode.name == "offline":
            default = self.certs_dir / "_default"
            default.mkdir(exist_ok=True)
            _write(default / "hosts.toml", hosts_toml(CLOSED_PORT))
        for host, url in self.user_registries.items():
            (self.certs_dir / host).mkdir(parents=True, exist_ok=True)
            _write(self.certs_dir / host / "hosts.toml", hosts_toml(url, "your registry (--registry-mirror)"))

    def mirror(self, host: str) -> RegistryMirror:
        if host in self.user_registries:
            raise HarnessError(
                f"{host}: served by {self.user_registries[host]} (--registry-mirror), not by a mirror of the run"
            )
        with self._lock:
            found = self.mirrors.get(host)
            if found is not None:
                return found
            if self.gateway is None:
                self.gateway = self._find_gateway()
            started = RegistryMirror(
                host, self.storage_root / _slug(host), self.workdir, self.gateway, self.mode.remote(host)
            ).start()
            self.mirrors[host] = started
            (self.certs_dir / host).mkdir(parents=True, exist_ok=True)
            _write(self.certs_dir / host / "hosts.toml", hosts_toml(started.node_url))
            return started

    def stop(self) -> None:
        """Stop every mirror, each even when another one's stop failed."""
        with self._lock:
            mirrors, self.mirrors = list(self.mirrors.values()), {}
        failures = []
        for mirror in mirrors:
            try:
                mirror.stop()
            except Exception as exc:  # the others must still stop
                failures.append(f"mirror of {mirror.host}: {exc}")
        if failures:
            raise HarnessError("; ".join(failures))

    def broken(self) -> list[str]:
        """The state and last log lines of every mirror that is no longer running, or whose
        storage is full (a pull-through cache then fails the pulls it cannot store)."""
        return [
            line
            for mirror in list(self.mirrors.values())
            if not mirror.alive or mirror.storage_full()
            for line in mirror.evidence()
        ]

    def describe(self) -> list[str]:
        return [
            f"{host} -> {mirror.node_url} ({'pull-through ' + mirror.remote if mirror.remote else 'pushed here'})"
            for host, mirror in sorted(self.mirrors.items())
        ] + [
            f"{host} -> {url} (your registry, --registry-mirror)" for host, url in sorted(self.user_registries.items())
        ]


def push_from_engine(image: str, target: str, docker: str = "docker") -> None:
    """``docker push`` of the local ``image`` as ``target`` (a temporary tag, removed after)."""
    docker_cli.docker(["tag", image, target], f"tag {image} as {target}", client=docker, timeout=120)
    try:
        docker_cli.docker(["push", target], f"push {target}", client=docker, timeout=PUSH_TIMEOUT_S)
    finally:
        docker_cli.remove_image(target, client=docker)


def registry_name(image: str, registry: str) -> str:
    """Where ``image`` goes in a user's registry that mirrors every upstream host: its path
    there is the upstream path (``quay.io/brancz/x:v1`` -> ``REGISTRY/brancz/x:v1``), which is
    what containerd asks a ``server`` of certs.d/<host>/hosts.toml for."""
    return f"{registry.rstrip('/')}/{upstream_name(image)[1]}"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` at once: containerd may read it while it is written."""
    write_atomic(path, text, mode=0o644)


def _split(name: str) -> tuple[str, str]:
    if "@" in name:
        path, digest = name.split("@", 1)
        return path, digest
    path, _, tag = name.rpartition(":")
    return path, tag


def _slug(host: str) -> str:
    return host.replace(":", "_")
