"""``kserve-compat watch-images``: keep asking registries whether the images KServe runs can still be pulled.

``gcr.io/kubebuilder`` was announced for deletion on 2025-03-18 and stopped serving about
2026-03-06; most clusters learnt it when a pod moved to a node without the image. This
watches for the next such deletion, before a pod needs the image:

- every ``--interval`` seconds it lists the images of the KServe namespace's pods and
  workload templates and of every predictor pod (label ``serving.kserve.io/inferenceservice``,
  all namespaces), read through the same walker ``kserve-compat audit`` uses;
- it asks each image's registry for its manifest (``HEAD``, the bearer-token flow, bounded
  retries with backoff on 429/5xx: ``e2e.registry``), with the credentials of the pull
  secrets (``imagePullSecrets``) the pods and templates name, anonymously otherwise;
- it exposes on ``--listen`` (``/metrics``):

  - ``kserve_compat_image_available{image,registry}``: 1 the registry serves it, 0 the
    registry answered that it does not (404, denied): **gone**. Left at its last answer while
    the registry cannot be reached;
  - ``kserve_compat_image_check_ok{image,registry}``: 1 the last check got an answer, 0 the
    registry could not be reached (DNS, refused, timeout, 5xx): **could not check**, never "gone";
  - ``kserve_compat_image_last_error{image,registry,error}``: 1 for the last error's text;
  - ``kserve_compat_image_checked_timestamp_seconds{image,registry}`` and
    ``kserve_compat_images_watched``.

The alert rules (``e2e/data/manifests/watch-images-rules.yaml``, also inside the
PrometheusRule of ``watch-images.yaml``) fire on ``kserve_compat_image_available == 0``
(an image in use cannot be pulled any more) and, as a warning, on a registry that could not
be checked for an hour. ``--once`` checks one round, prints a table and exits 0 / 4 gone /
6 could not check, as ``audit --probe`` does.

In the cluster: ``--print-manifest`` prints ``e2e/data/manifests/watch-images.yaml`` filled
in (the image, the watcher's namespace, this command's options for the Deployment's args,
the rules file's groups in the PrometheusRule) and exits: a ServiceAccount with read-only
RBAC (``list`` of what a round reads, ``get`` of pull secrets), a Deployment of one
non-root replica, its Service (port ``metrics``, 9400) and a ServiceMonitor. There the
watcher connects with its ServiceAccount (``connect`` without a kubeconfig, in a pod). The
image: ``deploy/watch-images/Dockerfile``, or ``kserve-compat images build --watch-images``
offline (``e2e/imageset/watch_images.py``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from e2e import __version__
from e2e.audit import EXIT_CLEAN, EXIT_UNAVAILABLE, EXIT_UNCHECKED, image_uses
from e2e.data import MANIFESTS_DIR
from e2e.errors import HarnessError, ImageReferenceError, UsageError
from e2e.images import DEFAULT_REGISTRY, ImageReference, RegistryMirrors
from e2e.imageset.watch_images import image_reference
from e2e.manifests import pod_spec
from e2e.preflight.cluster import connect, live_workloads
from e2e.registry import ImageAvailability, RegistryProbe, Status
from e2e.secrets import register
from e2e.text import one_line

log = logging.getLogger(__name__)

PREDICTOR_LABEL = "serving.kserve.io/inferenceservice"
MANIFEST = MANIFESTS_DIR / "watch-images.yaml"
RULES = MANIFESTS_DIR / "watch-images-rules.yaml"
DEFAULT_LISTEN = "127.0.0.1:9400"
DEFAULT_WATCHER_NAMESPACE = "kserve-compat"
EXIT_CODES = (
    (EXIT_CLEAN, "--once: every image in use can be pulled"),
    (2, "usage error (unreachable cluster, a bad --listen or --interval)"),
    (EXIT_UNAVAILABLE, "--once: an image in use is gone (the registry answered: not found or denied)"),
    (EXIT_UNCHECKED, "--once: a registry could not be reached (and nothing is gone)"),
)


@dataclass(frozen=True)
class Check:
    image: str
    registry: str
    answer: ImageAvailability

    @property
    def answered(self) -> bool:
        return self.answer.status is not Status.UNREACHABLE


class ImageMetrics:
    """The Prometheus metrics of the watched images, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("image", "registry")
        self.available = Gauge(
            "kserve_compat_image_available",
            "1 the registry serves the image, 0 it answered that it does not (gone)",
            labels,
            registry=self.registry,
        )
        self.check_ok = Gauge(
            "kserve_compat_image_check_ok",
            "1 the last check got the registry's answer, 0 the registry could not be reached",
            labels,
            registry=self.registry,
        )
        self.last_error = Gauge(
            "kserve_compat_image_last_error", "1 for the last check's error", (*labels, "error"), registry=self.registry
        )
        self.checked = Gauge(
            "kserve_compat_image_checked_timestamp_seconds", "when the image was last checked", labels,
            registry=self.registry,
        )  # fmt: skip
        self.watched = Gauge("kserve_compat_images_watched", "images in use being watched", registry=self.registry)
        self._errors: dict[tuple[str, str], str] = {}
        self._known: set[tuple[str, str]] = set()

    def record(self, checks: Iterable[Check]) -> None:
        current = set()
        for check in checks:
            key = (check.image, check.registry)
            current.add(key)
            if check.answered:
                self.available.labels(*key).set(1 if check.answer.available else 0)
            self.check_ok.labels(*key).set(1 if check.answered else 0)
            self.checked.labels(*key).set(time.time())
            previous = self._errors.pop(key, None)
            if previous is not None:
                self.last_error.remove(*key, previous)
            if not check.answer.available:
                error = check.answer.describe()
                self.last_error.labels(*key, error).set(1)
                self._errors[key] = error
        for key in self._known - current:  # no longer in use: no longer watched
            for gauge in (self.available, self.check_ok, self.checked):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
            if key in self._errors:
                self.last_error.remove(*key, self._errors.pop(key))
        self._known = current
        self.watched.set(len(current))


@dataclass(frozen=True)
class InUse:
    images: list[str]
    credentials: dict[str, tuple[str, str]]  # registry host -> (user, password), from pull secrets


def images_in_use(api: k8s_client.ApiClient, namespace: str) -> InUse:
    """The images of ``namespace``'s pods and workload templates and of every predictor pod,
    with the credentials of the pull secrets they name."""
    objects = live_workloads(api, namespace)
    predictors = k8s_client.CoreV1Api(api).list_pod_for_all_namespaces(label_selector=PREDICTOR_LABEL).items
    objects += [{"apiVersion": "v1", "kind": "Pod", **api.sanitize_for_serialization(pod)} for pod in predictors]
    text = yaml.safe_dump_all(objects)
    images = sorted({image for image, _ in image_uses("cluster", text)})
    return InUse(images, pull_secret_credentials(api, objects))


def pull_secret_credentials(api: k8s_client.ApiClient, objects: Iterable[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """host -> (user, password) from the ``imagePullSecrets`` of these pods and templates
    (``kubernetes.io/dockerconfigjson`` and ``kubernetes.io/dockercfg``); a secret that cannot
    be read is logged and skipped (its images are asked anonymously)."""
    wanted: set[tuple[str, str]] = set()
    for obj in objects:
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        secrets = pod_spec(obj).get("imagePullSecrets") or []
        wanted |= {(namespace, ref["name"]) for ref in secrets if ref.get("name")}
    core = k8s_client.CoreV1Api(api)
    found: dict[str, tuple[str, str]] = {}
    for namespace, name in sorted(wanted):
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            log.warning("pull secret %s/%s: %s %s; its images are asked anonymously", namespace, name, exc.status,
                        exc.reason)  # fmt: skip
            continue
        for host, login in docker_config_logins(secret.type or "", secret.data or {}).items():
            found.setdefault(host, login)
    return found


def docker_config_logins(secret_type: str, data: dict[str, str]) -> dict[str, tuple[str, str]]:
    """host -> (user, password) of a docker config Secret's ``data`` (base64 values)."""
    key = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}.get(
        secret_type
    )
    if key is None or key not in data:
        return {}
    try:
        config = json.loads(base64.b64decode(data[key]))
    except (ValueError, binascii.Error):
        log.warning("a %s Secret that is not JSON: skipped", secret_type)
        return {}
    auths = config.get("auths", {}) if key == ".dockerconfigjson" else config
    logins = {}
    for server, entry in (auths or {}).items():
        user, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode(errors="replace").partition(":")
        if user and password:
            register(password)
            logins[_registry_host(server)] = (str(user), str(password))
    return logins


def _registry_host(server: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``quay.io`` -> ``quay.io``."""
    host = server.split("://", 1)[-1].split("/", 1)[0]
    return DEFAULT_REGISTRY if host in ("index.docker.io", "registry-1.docker.io", "docker.io") else host


def check_images(images: Iterable[str], probe: RegistryProbe) -> list[Check]:
    checks = []
    for image in images:
        try:
            registry = ImageReference.parse(image).normalized().registry or ""
        except Exception as exc:  # an image the kubelet could never pull: gone, and say why
            checks.append(Check(image, "", ImageAvailability(Status.MISSING, detail=f"invalid reference: {exc}")))
            continue
        checks.append(Check(image, registry, probe.probe(image)))
    return checks


class Watcher:
    """One round every ``interval_s`` (the first at once), until ``stop`` is set."""

    def __init__(
        self,
        list_images: Callable[[], InUse],
        make_probe: Callable[[dict[str, tuple[str, str]]], RegistryProbe],
        metrics: ImageMetrics,
        interval_s: float,
    ) -> None:
        self.list_images = list_images
        self.make_probe = make_probe  # per round: with the pull secrets' credentials of that round
        self.metrics = metrics
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.rounds = 0
        self._in_use = InUse([], {})

    def round(self) -> list[Check]:
        try:
            self._in_use = self.list_images()
        except Exception as exc:  # the API server away: keep watching what was in use
            log.warning("could not list the images in use (%s); checking the last list", one_line(exc))
        checks = check_images(self._in_use.images, self.make_probe(self._in_use.credentials))
        self.metrics.record(checks)
        self.rounds += 1
        gone = [c.image for c in checks if c.answered and not c.answer.available]
        unchecked = [c.image for c in checks if not c.answered]
        log.info(
            "checked %d images: %d gone%s, %d could not be checked", len(checks), len(gone),
            f" ({', '.join(gone)})" if gone else "", len(unchecked),
        )  # fmt: skip
        return checks

    def run(self) -> None:
        while not self.stop.is_set():
            self.round()
            self.stop.wait(self.interval_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")
    parser.add_argument("--namespace", "-n", metavar="NS", default="kserve", help="KServe's namespace (default kserve)")
    parser.add_argument("--interval", type=float, default=300.0, metavar="S", help="seconds between rounds (300)")
    parser.add_argument("--listen", metavar="HOST:PORT", help=f"where /metrics is served (default {DEFAULT_LISTEN})")
    parser.add_argument(
        "--once", action="store_true", help="one round: print a table and exit (0, 4 gone, 6 unchecked)"
    )
    parser.add_argument(
        "--registry-mirror", action="append", default=[], metavar="SRC=DST|HOST=URL", help="as in audit --probe"
    )
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]", help="plain HTTP")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per registry request (default 10)")
    parser.add_argument(
        "--print-manifest", action="store_true",
        help="print the manifest that runs this watcher in the cluster (ServiceAccount, read-only RBAC, "
        "Deployment, Service, ServiceMonitor, PrometheusRule) with --namespace, --interval, --timeout, "
        "--registry-mirror and --insecure-registry as its args, and exit",
    )  # fmt: skip
    parser.add_argument(
        "--image", metavar="REF", help=f"--print-manifest: the watcher's image (default {image_reference()})"
    )
    parser.add_argument(
        "--watcher-namespace", metavar="NS",
        help=f"--print-manifest: the namespace the watcher runs in (default {DEFAULT_WATCHER_NAMESPACE})",
    )  # fmt: skip


def _listen_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {value}: expected HOST:PORT, e.g. 127.0.0.1:9400")
    return host.strip("[]"), int(port)


# A namespace name (RFC 1123 label), as the API server takes it.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def watch_args(args: argparse.Namespace) -> list[str]:
    """This command's options as the in-cluster watcher's args (after ``watch-images --listen``)."""
    options = [f"--namespace={args.namespace}", f"--interval={args.interval:g}", f"--timeout={args.timeout:g}"]
    options += [f"--registry-mirror={rule}" for rule in args.registry_mirror]
    return options + [f"--insecure-registry={host}" for host in args.insecure_registry]


def rule_groups_text() -> str:
    """The ``groups:`` block of the rules file, its comments kept: what the PrometheusRule's spec holds."""
    text = RULES.read_text()
    start = re.search(r"(?m)^groups:", text)
    if start is None:
        raise HarnessError(f"{RULES}: no top-level groups:; expected a Prometheus rule file")
    return text[start.start() :]


def render_manifest(image: str, watcher_namespace: str, options: Sequence[str]) -> str:
    """``watch-images.yaml`` filled in: ``${name}`` scalars (quoted), the list item
    ``- ${watch_args}`` as one item per option, the line ``${rule_groups}`` as the rules file's groups."""
    scalars = {"image": image, "watcher_namespace": watcher_namespace, "version": __version__}

    def scalar(match: re.Match[str]) -> str:
        if match.group(1) not in scalars:
            raise HarnessError(f"{MANIFEST}: unknown placeholder {match.group(0)}")
        return json.dumps(scalars[match.group(1)])

    lines: list[str] = []
    for line in MANIFEST.read_text().splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if line.strip() == "${rule_groups}":
            lines += [indent + rule if rule.strip() else "" for rule in rule_groups_text().splitlines()]
        elif line.strip() == "- ${watch_args}":
            lines += [f"{indent}- {json.dumps(option)}" for option in options]
        else:
            lines.append(_PLACEHOLDER.sub(scalar, line))
    text = "\n".join(lines) + "\n"
    try:
        list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:  # the template's fault, not the user's
        raise HarnessError(f"{MANIFEST}: does not render to YAML ({one_line(exc)})") from None
    return text


def _print_manifest(args: argparse.Namespace) -> int:
    given = [option for option, value in (("--once", args.once), ("--listen", args.listen),
             ("--kubeconfig", args.kubeconfig), ("--context", args.context)) if value]  # fmt: skip
    if given:
        raise UsageError(
            f"--print-manifest {given[0]}: the manifest's watcher uses its ServiceAccount and listens on its "
            f"Service's port; {given[0]} goes with watching from here"
        )
    watcher_namespace = args.watcher_namespace or DEFAULT_WATCHER_NAMESPACE
    for option, namespace in (("--namespace", args.namespace), ("--watcher-namespace", watcher_namespace)):
        if not _NAMESPACE.fullmatch(namespace):
            raise UsageError(f"{option} {namespace}: expected a namespace name (lowercase letters, digits, '-')")
    image = args.image or image_reference()
    try:
        ImageReference.parse(image)
    except ImageReferenceError as exc:
        raise UsageError(f"--image {image}: {exc}") from None
    RegistryMirrors.from_options(args.registry_mirror)  # a bad rule is this command's error, not the pod's
    sys.stdout.write(render_manifest(image, watcher_namespace, watch_args(args)))
    return EXIT_CLEAN


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0 or args.timeout <= 0:
        raise UsageError("--interval/--timeout: expected a positive number of seconds")
    if args.print_manifest:
        return _print_manifest(args)
    for option, value in (("--image", args.image), ("--watcher-namespace", args.watcher_namespace)):
        if value:
            raise UsageError(f"{option} {value}: goes with --print-manifest only")
    listen = args.listen or DEFAULT_LISTEN
    host, port = _listen_address(listen)
    mirrors = RegistryMirrors.from_options(args.registry_mirror)

    def make_probe(credentials: dict[str, tuple[str, str]]) -> RegistryProbe:
        return RegistryProbe(
            mirrors=mirrors,
            insecure_registries=args.insecure_registry,
            credentials=credentials,
            connect_timeout=args.timeout,
            read_timeout=args.timeout,
        )

    conn = connect(args.kubeconfig, args.context)
    metrics = ImageMetrics()
    watcher = Watcher(lambda: images_in_use(conn.api, args.namespace), make_probe, metrics, args.interval)
    if args.once:
        checks = watcher.round()
        for check in checks:
            state = "available" if check.answer.available else ("gone" if check.answered else "could not check")
            print(f"{check.image}  {state}" + (f"  {check.answer.detail}" if check.answer.detail else ""))
        if any(c.answered and not c.answer.available for c in checks):
            return EXIT_UNAVAILABLE
        return EXIT_UNCHECKED if any(not c.answered for c in checks) else EXIT_CLEAN
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise UsageError(f"--listen {listen}: cannot listen there ({exc.strerror})") from None
    print(
        f"watch-images: /metrics on http://{host}:{port}/metrics, a round every {args.interval:.0f}s", file=sys.stderr
    )
    try:
        watcher.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return EXIT_CLEAN
