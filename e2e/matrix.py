"""The compatibility matrix: releases, proxy images, Kubernetes versions, cells and groups.

Reads ``e2e/data/matrix.yaml`` (documented in README.md) into typed records, expands the
selection the user asked for into ``MatrixCell``s, groups cells that can share a cluster,
and renders a GitHub Actions matrix. Knows nothing of clusters.

The file lists defaults, not the only versions a run may name: ``Matrix.release`` takes any
KServe release tag and derives an unlisted one from its minor line's entry (profile, files,
cert-manager, default proxy image); what a release really ships is read from its manifest
(``e2e.manifests.ReleaseManifest``). ``--proxy-image REF`` adds an ad-hoc ``ProxyImage``
(``adhoc_proxy_image``) beside the file's.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from e2e.data import MATRIX_FILE
from e2e.errors import ImageReferenceError, UsageError
from e2e.images import ImageReference, replacement, retirement

_T = TypeVar("_T")

DEFAULT_MATRIX_FILE = MATRIX_FILE

_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$")
# What KServe tags its releases: v0.14.1, v0.15.0-rc1.
_RELEASE_TAG = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-rc\d+)?$")
# The repository every kube-rbac-proxy image is named after; left out of ad-hoc aliases.
_PROXY_REPOSITORY = "kube-rbac-proxy"


def version_key(version: str) -> tuple[int, int, int, int, str]:
    """Sort key for ``vX.Y.Z[-pre]`` versions: a pre-release sorts before its release."""
    match = _VERSION.match(version)
    if not match:
        raise UsageError(f"version {version!r}: expected vMAJOR.MINOR.PATCH[-PRE]")
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


@dataclass(frozen=True)
class ControllerProfile:
    """Where a KServe release keeps the controller pieces the harness touches."""

    name: str
    namespace: str
    deployment: str
    service_account: str
    manager_container: str
    proxy_container: str
    metrics_service: str
    metrics_port: int
    manager_metrics_address: str
    proxy_cluster_role: str
    proxy_cluster_role_binding: str
    config_map: str


@dataclass(frozen=True)
class KServeRelease:
    """A KServe release as the matrix file lists it, or derived from its line's entry.

    ``proxy_image`` is the matrix's default for the line: what the release is expected to
    ship. The release manifest's controller Deployment is the authority on what it does
    ship (``e2e.manifests.shipped_proxy``).
    """

    version: str
    files: tuple[str, ...]
    proxy_image: str
    cert_manager: str
    profile: ControllerProfile
    latest_patch: bool = False
    # The matrix entry whose defaults an unlisted release takes ("" for a listed one).
    derived_from: str = ""
    # "Kubernetes 1.x is the minimally required version" of the line's install guide, if known.
    kubernetes_minimum: str | None = None

    @property
    def line(self) -> str:
        """The minor line, e.g. ``v0.14``."""
        return line_of(self.version)

    @property
    def runtimes_file(self) -> str | None:
        """The file with ServingRuntimes: ``kserve-runtimes.yaml`` or
        ``kserve-cluster-resources.yaml`` depending on the release."""
        for name in self.files:
            if name != "kserve.yaml":
                return name
        return None


def line_of(version: str) -> str:
    """The minor line of a version: ``v0.14.1`` -> ``v0.14``."""
    major, minor, *_ = version_key(version)
    return f"v{major}.{minor}"


def check_release_tag(version: str, option: str = "--kserve") -> str:
    """``version`` if it has the shape of a KServe release tag, else a one-line UsageError."""
    if not _RELEASE_TAG.match(version):
        raise UsageError(f"{option} {version}: expected a KServe release tag vMAJOR.MINOR.PATCH[-rcN], e.g. v0.14.1")
    return version


@dataclass(frozen=True)
class ProxyImage:
    alias: str
    image: str
    status: str  # retired | frozen | served
    note: str = ""
    newest: bool = False
    adhoc: bool = False  # from --proxy-image, not from the matrix file

    @property
    def tag(self) -> str:
        return ImageReference.parse(self.image).tag or ""

    @property
    def retired(self) -> bool:
        return self.status == "retired"


def adhoc_alias(ref: ImageReference) -> str:
    """A readable alias for an image the matrix file does not list, from its reference alone.

    ``adhoc-`` + the registry's first label (and port) + the repository's path without
    ``kube-rbac-proxy`` + the tag (+ the digest's first 12 hex digits):
    ``quay.io/me/kube-rbac-proxy:v0.18.0-fix1`` -> ``adhoc-quay-me-v0.18.0-fix1``. Only
    lowercase letters, digits, '.' and single '-', so it is valid inside a cell id (whose
    parts are joined by ``--``).
    """
    host, _, port = ref.domain.partition(":")
    parts = [host.split(".")[0], port]
    path = ref.repository.split("/")
    if path[-1] == _PROXY_REPOSITORY:
        path = path[:-1]
    parts += path
    parts.append(ref.tag or ("" if ref.digest else "latest"))
    if ref.digest:
        parts.append(ref.digest.replace(":", "-")[: len("sha256-") + 12])
    text = "-".join(part for part in parts if part).lower()
    text = re.sub(r"[^a-z0-9.]+", "-", text).strip("-.")
    return "adhoc-" + re.sub(r"-{2,}", "-", text)


def adhoc_proxy_image(reference: str, option: str = "--proxy-image") -> ProxyImage:
    """A ``ProxyImage`` for an image reference the matrix file does not list.

    Retired when its registry is a retired one (``e2e.images.RETIRED_REGISTRIES``), else
    served. A malformed reference is a one-line UsageError naming ``option``.
    """
    try:
        ref = ImageReference.parse(reference)
    except ImageReferenceError as exc:
        raise UsageError(f"{option} {reference}: {exc}") from None
    gone = retirement(ref)
    return ProxyImage(
        alias=adhoc_alias(ref),
        image=reference,
        status="retired" if gone else "served",
        note=f"ad-hoc image; {gone.describe()}" if gone else "ad-hoc image",
        adhoc=True,
    )


@dataclass(frozen=True)
class KubernetesVersion:
    """A Kubernetes minor of the matrix and the patch the harness builds of it."""

    version: str  # "1.34": the minor, as cell ids and --k8s name it
    build: str  # "v1.34.4": control plane and node image built from the k8s.io/kubernetes module
    node_image: str | None = None  # a published kind node image (a run with internet), when one is known
    default: bool = False  # selected when --k8s is not given


# `--k8s all`: every minor of the matrix, not only the default ones.
ALL_KUBERNETES = "all"


@dataclass(frozen=True)
class Variant:
    """A change to the proxy container beyond its image, expressed as data."""

    name: str
    description: str = ""
    args_drop: tuple[str, ...] = ()
    args_add: tuple[str, ...] = ()
    security_context: dict[str, Any] | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class MatrixCell:
    release: KServeRelease
    proxy: ProxyImage
    kubernetes: KubernetesVersion
    variant: Variant | None = None

    @property
    def id(self) -> str:
        parts = [
            f"kserve-{self.release.version}",
            self.proxy.alias,
            f"k8s-{self.kubernetes.version}",
        ]
        if self.variant:
            parts.append(self.variant.name)
        return "--".join(parts)

    @property
    def group_key(self) -> tuple[str, str]:
        return (self.release.version, self.kubernetes.version)


@dataclass(frozen=True)
class ClusterGroup:
    """Cells that share one cluster: same KServe release, same Kubernetes version."""

    release: KServeRelease
    kubernetes: KubernetesVersion
    cells: tuple[MatrixCell, ...]

    @property
    def id(self) -> str:
        return f"kserve-{self.release.version}--k8s-{self.kubernetes.version}"


@dataclass(frozen=True)
class Selection:
    """What the user asked for on the command line. Empty means "the default"."""

    kserve: tuple[str, ...] = ()
    proxy: tuple[str, ...] = ()
    k8s: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    all_releases: bool = False  # every release in the file, not just latest patches
    proxy_images: tuple[str, ...] = ()  # ad-hoc image references (--proxy-image)
    proxy_binary: str | None = None  # the local tier's binary for the one ad-hoc image

    @classmethod
    def from_options(
        cls,
        kserve: str | Iterable[str] | None = None,
        proxy: str | Iterable[str] | None = None,
        k8s: str | Iterable[str] | None = None,
        cells: Iterable[str] = (),
        variants: str | Iterable[str] | None = None,
        all_releases: bool = False,
        proxy_images: Iterable[str] = (),
        proxy_binary: str | None = None,
    ) -> Selection:
        """The selection of command-line values; malformed ones are one-line UsageErrors.

        Every list takes repeats and commas alike (``--kserve a --kserve b,c``). ``--cell``
        names exact cells, so it cannot be combined with the options it would override.
        """
        cell_ids = tuple(c for cell in cells for c in _split(cell))
        if cell_ids:
            overridden = [name for name, value in (("--kserve", kserve), ("--proxy", proxy), ("--k8s", k8s))
                          if _split(value)]
            if overridden:
                raise UsageError(
                    f"--cell {cell_ids[0]}: names exact cells, so {', '.join(overridden)} would be ignored; "
                    "expected --cell alone or the selection options alone"
                )
        kserve_versions = _split(kserve)
        for version in kserve_versions:
            check_release_tag(version)
        images = tuple(i for image in proxy_images for i in _split(image))
        for image in images:
            adhoc_proxy_image(image)  # validates the reference
        if proxy_binary is not None:
            path = Path(proxy_binary).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise UsageError(f"--proxy-binary {proxy_binary}: expected an executable file")
            if len(images) != 1:
                raise UsageError(
                    f"--proxy-binary {proxy_binary}: expected exactly one --proxy-image REF, the image it plays"
                )
            proxy_binary = str(path)
        return cls(
            kserve=kserve_versions,
            proxy=_split(proxy),
            k8s=_split(k8s),
            cells=cell_ids,
            variants=_split(variants),
            all_releases=all_releases,
            proxy_images=images,
            proxy_binary=proxy_binary,
        )

    def proxy_binaries(self) -> dict[str, Path]:
        """Image reference -> the local binary that plays it (``--proxy-binary``)."""
        if self.proxy_binary is None or not self.proxy_images:
            return {}
        return {self.proxy_images[0]: Path(self.proxy_binary)}


def _split(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b,c"]`` (repeated options) as one tuple, in order, once each."""
    if not value:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    parts = (part.strip() for item in values for part in item.split(","))
    return tuple(dict.fromkeys(part for part in parts if part))


@dataclass(frozen=True)
class Matrix:
    releases: tuple[KServeRelease, ...]
    proxies: tuple[ProxyImage, ...]
    kubernetes: tuple[KubernetesVersion, ...]
    variants: tuple[Variant, ...]
    source: Path

    # -- lookups ----------------------------------------------------------------------

    def release(self, version: str) -> KServeRelease:
        """The release of any KServe tag: the file's entry, or one derived from its line.

        An unlisted version (``v0.11.1``, ``v0.15.0``) takes profile, files, cert-manager and
        default proxy image from its minor line's entry (the line's latest patch, else its
        newest entry). Whether its files exist is found out when they are fetched.
        """
        for release in self.releases:
            if release.version == version:
                return release
        check_release_tag(version)
        line = line_of(version)
        siblings = [r for r in self.releases if r.line == line]
        if not siblings:
            lines = sorted({r.line for r in self.releases}, key=lambda v: version_key(v + ".0"))
            span = f"{lines[0]}..{lines[-1]}" if len(lines) > 1 else lines[0]
            raise UsageError(f"--kserve {version}: no defaults for the {line} line; the matrix has {span}")
        base = next((r for r in siblings if r.latest_patch), max(siblings, key=lambda r: version_key(r.version)))
        return replace(base, version=version, latest_patch=False, derived_from=base.version)

    def proxy(self, alias_or_image: str, option: str = "--proxy") -> ProxyImage:
        """The entry of an alias or image; ``option`` names the user's option in the error."""
        for proxy in self.proxies:
            if alias_or_image in (proxy.alias, proxy.image):
                return proxy
        known = ", ".join(p.alias for p in self.proxies)
        raise UsageError(f"{option} {alias_or_image}: unknown proxy image alias; expected one of {known}")

    def proxy_for_image(self, image: str) -> ProxyImage:
        """The matrix entry for an image reference, or an ad-hoc one if the matrix lacks it."""
        for proxy in self.proxies:
            if proxy.image == image:
                return proxy
        return adhoc_proxy_image(image, option="image")

    def with_proxy_images(self, references: Iterable[str]) -> Matrix:
        """This matrix with ad-hoc images (``--proxy-image``) beside the file's.

        A reference the file lists keeps its entry; two references whose aliases collide
        are a UsageError.
        """
        added: list[ProxyImage] = []
        for reference in references:
            if any(p.image == reference for p in self.proxies):
                continue
            proxy = adhoc_proxy_image(reference)
            clash = next((p for p in [*self.proxies, *added] if p.alias == proxy.alias), None)
            if clash is not None and clash.image != proxy.image:
                raise UsageError(
                    f"--proxy-image {reference}: its alias {proxy.alias} is already {clash.image}'s; "
                    "expected references that differ in registry, path or tag"
                )
            if clash is None:
                added.append(proxy)
        return replace(self, proxies=(*self.proxies, *added)) if added else self

    def adhoc_proxies(self, references: Iterable[str]) -> list[ProxyImage]:
        """The ``ProxyImage``s (file entries or ad-hoc) of ``--proxy-image`` references."""
        extended = self.with_proxy_images(references)
        return [extended.proxy_for_image(reference) for reference in references]

    def k8s(self, version: str) -> KubernetesVersion:
        """The minor of ``1.34``, ``v1.34`` or a patch of it (``1.34.8``, ``v1.34.4``)."""
        match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", version.strip())
        wanted = f"{match.group(1)}.{match.group(2)}" if match else version
        for kube in self.kubernetes:
            if kube.version == wanted:
                return kube
        known = ", ".join(k.version for k in self.kubernetes)
        raise UsageError(f"--k8s {version}: unknown Kubernetes version; expected one of {known} or {ALL_KUBERNETES}")

    def kubernetes_selected(self, wanted: Sequence[str]) -> list[KubernetesVersion]:
        """The minors of ``--k8s`` values: the default ones when none is given, every one for
        ``all``."""
        if not wanted:
            return [k for k in self.kubernetes if k.default] or list(self.kubernetes)
        if ALL_KUBERNETES in wanted:
            return list(self.kubernetes)
        return list({kube.version: kube for kube in map(self.k8s, wanted)}.values())

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        known = ", ".join(v.name for v in self.variants)
        raise UsageError(f"--variant {name}: unknown variant; expected one of {known}")

    # -- expansion --------------------------------------------------------------------

    def all_cells(self) -> list[MatrixCell]:
        """Every cell of every release, proxy and Kubernetes version (no variants)."""
        return [
            MatrixCell(release, proxy, kube)
            for release in self.releases
            for proxy in self.proxies
            for kube in self.kubernetes
        ]

    def cell(self, cell_id: str) -> MatrixCell:
        """The cell of an id: ``kserve-<version>--<proxy alias>--k8s-<version>[--<variant>]``.

        The version may be any KServe release tag (see ``release``).
        """
        parts = cell_id.split("--")
        if len(parts) not in (3, 4) or not parts[0].startswith("kserve-") or not parts[2].startswith("k8s-"):
            raise UsageError(
                f"--cell {cell_id}: unknown cell id; expected "
                "kserve-<version>--<proxy alias>--k8s-<version>[--<variant>], e.g. "
                f"{self.all_cells()[0].id}"
            )
        release = self._cell_part(cell_id, lambda: self.release(parts[0].removeprefix("kserve-")))
        proxy = self._cell_part(cell_id, lambda: self.proxy(parts[1]))
        kube = self._cell_part(cell_id, lambda: self.k8s(parts[2].removeprefix("k8s-")))
        variant = self._cell_part(cell_id, lambda: self.variant(parts[3])) if len(parts) == 4 else None
        return MatrixCell(release, proxy, kube, variant)

    @staticmethod
    def _cell_part(cell_id: str, lookup: Callable[[], _T]) -> _T:
        try:
            return lookup()
        except UsageError as exc:
            raise UsageError(f"--cell {cell_id}: {exc}") from None

    def select(self, selection: Selection) -> list[MatrixCell]:
        """The cells a selection names, in a stable order (grouped by cluster)."""
        if selection.proxy_images:
            return self.with_proxy_images(selection.proxy_images)._select(selection)
        return self._select(selection)

    def _select(self, selection: Selection) -> list[MatrixCell]:
        if selection.cells:
            cells = [self.cell(cell_id) for cell_id in selection.cells]
        else:
            if selection.kserve:
                releases = [self.release(v) for v in selection.kserve]
            elif selection.all_releases:
                releases = list(self.releases)
            else:
                releases = [r for r in self.releases if r.latest_patch]
            proxies = [self.proxy(p) for p in selection.proxy]
            proxies += self.adhoc_proxies(selection.proxy_images)
            if not proxies:
                proxies = list(self.proxies)
            proxies = list({p.alias: p for p in proxies}.values())
            kubes = self.kubernetes_selected(selection.k8s)
            variants: list[Variant | None] = [None]
            variants += [self.variant(v) for v in selection.variants]
            cells = [
                MatrixCell(release, proxy, kube, variant)
                for release in releases
                for kube in kubes
                for proxy in proxies
                for variant in variants
            ]
        unique: dict[str, MatrixCell] = {}
        for cell in cells:
            unique.setdefault(cell.id, cell)
        return sorted(
            unique.values(),
            key=lambda c: (version_key(c.release.version), c.kubernetes.version, self._proxy_rank(c)),
        )

    def _proxy_rank(self, cell: MatrixCell) -> tuple[int, str]:
        index = next((i for i, p in enumerate(self.proxies) if p.alias == cell.proxy.alias), len(self.proxies))
        return (index, cell.variant.name if cell.variant else "")


def group_cells(cells: Sequence[MatrixCell]) -> list[ClusterGroup]:
    """Cells sharing (KServe release, Kubernetes version) share one cluster."""
    groups: dict[tuple[str, str], list[MatrixCell]] = {}
    for cell in cells:
        groups.setdefault(cell.group_key, []).append(cell)
    return [ClusterGroup(members[0].release, members[0].kubernetes, tuple(members)) for members in groups.values()]


def github_actions_matrix(cells: Sequence[MatrixCell]) -> dict[str, list[dict[str, str]]]:
    """A GitHub Actions ``strategy.matrix`` with one entry per cluster group.

    Each entry carries the group's cell ids joined by commas, so one job creates one
    cluster and runs all of its cells (``nox -s e2e -- --cell "${{ matrix.cells }}"``).
    """
    include = []
    for group in group_cells(cells):
        include.append(
            {
                "group": group.id,
                "kserve": group.release.version,
                "k8s": group.kubernetes.version,
                "cells": ",".join(cell.id for cell in group.cells),
            }
        )
    return {"include": include}


def migration_start_image(cell: MatrixCell, shipped: str | None = None) -> str:
    """The image a migration starts from: the one the release ships, unless retired.

    ``shipped`` is the image read from the release's manifest once it is loaded; before
    that (plan, applicability) the matrix's default for the release stands in for it.
    A retired gcr.io/kubebuilder image cannot be pulled any more; an operator starts from
    its frozen copy on registry.k8s.io, and so does the scenario.
    """
    image = shipped or cell.release.proxy_image
    return replacement(image) or image


def no_image_change(cell: MatrixCell, change: str) -> str | None:
    """Why ``change`` (migrate to the cell's image, roll back from it) has nothing to do, or
    None: the cell's image is the one the release starts from, or a retired image, which
    never runs (the retired-image scenario covers it)."""
    if cell.proxy.image == migration_start_image(cell):
        return f"the cell runs the image the release starts from: nothing to {change}"
    if cell.proxy.retired:
        return f"a retired image never runs: nothing to {change}; the retired-image scenario covers it"
    return None


def github_actions_matrix_json(cells: Sequence[MatrixCell]) -> str:
    return json.dumps(github_actions_matrix(cells), separators=(",", ":"))


# -- loading --------------------------------------------------------------------------


@functools.cache
def packaged_matrix() -> Matrix:
    """The matrix file that ships with the package, read once: for module-level defaults (the
    Kubernetes build the tools run unless a cell names another) that must not re-read it."""
    return load_matrix()


def load_matrix(path: Path | str | None = None) -> Matrix:
    """Read and validate the matrix file; every problem is a one-line ``UsageError``."""
    source = Path(path) if path else DEFAULT_MATRIX_FILE
    try:
        raw = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise UsageError(f"matrix file {source}: not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"matrix file {source}{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise UsageError(f"matrix file {source}: expected a mapping with releases, proxy_images, kubernetes")
    reader = _Reader(source)
    profiles = {name: reader.profile(name, body) for name, body in reader.mapping(raw, "profiles").items()}
    releases = tuple(reader.release(item, profiles) for item in reader.sequence(raw, "releases"))
    proxies = tuple(reader.proxy(item) for item in reader.sequence(raw, "proxy_images"))
    kubes = tuple(reader.kubernetes(item) for item in reader.sequence(raw, "kubernetes"))
    variants = tuple(reader.variant(item) for item in raw.get("variants") or ())
    reader.unique("releases", [r.version for r in releases])
    reader.unique("proxy_images", [p.alias for p in proxies])
    reader.unique("kubernetes", [k.version for k in kubes])
    reader.unique("variants", [v.name for v in variants])
    return Matrix(releases, proxies, kubes, variants, source)


class _Reader:
    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, what: str) -> UsageError:
        return UsageError(f"matrix file {self.source}: {what}")

    def mapping(self, raw: dict[str, Any], key: str) -> dict[str, Any]:
        value = raw.get(key)
        if not isinstance(value, dict) or not value:
            raise self.fail(f"'{key}' must be a non-empty mapping")
        return value

    def sequence(self, raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = raw.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise self.fail(f"'{key}' must be a non-empty list of mappings")
        return value

    def field(self, item: dict[str, Any], key: str, where: str) -> Any:
        if key not in item or item[key] in (None, ""):
            raise self.fail(f"an entry of '{where}' lacks '{key}': {item}")
        return item[key]

    def unique(self, where: str, keys: list[str]) -> None:
        seen = set()
        for key in keys:
            if key in seen:
                raise self.fail(f"'{where}' lists {key} twice")
            seen.add(key)

    def profile(self, name: str, body: Any) -> ControllerProfile:
        if not isinstance(body, dict):
            raise self.fail(f"profile {name} must be a mapping")
        names = [f for f in ControllerProfile.__dataclass_fields__ if f != "name"]
        missing = [f for f in names if f not in body]
        if missing:
            raise self.fail(f"profile {name} lacks {', '.join(missing)}")
        values = {f: body[f] for f in names}
        values["metrics_port"] = int(values["metrics_port"])
        return ControllerProfile(name=name, **values)

    def kubernetes(self, item: dict[str, Any]) -> KubernetesVersion:
        value = self.field(item, "version", "kubernetes")
        if not isinstance(value, str):
            # YAML reads 1.30 as the number 1.3: insist on a string.
            raise self.fail(f'kubernetes version {value}: quote it, e.g. "1.30"')
        if not re.fullmatch(r"\d+\.\d+", value):
            raise self.fail(f'kubernetes version {value!r}: expected a minor, e.g. "1.34"')
        build = str(self.field(item, "build", f"kubernetes {value}"))
        if not re.fullmatch(rf"v{re.escape(value)}\.\d+", build):
            raise self.fail(f"kubernetes {value} build {build!r}: expected a patch of {value}, e.g. v{value}.0")
        node_image = item.get("node_image")
        return KubernetesVersion(
            version=value,
            build=build,
            node_image=str(node_image) if node_image else None,
            default=bool(item.get("default", False)),
        )

    def release(self, item: dict[str, Any], profiles: dict[str, ControllerProfile]) -> KServeRelease:
        version = str(self.field(item, "version", "releases"))
        try:
            version_key(version)
        except UsageError:
            raise self.fail(f"release {version!r}: expected vMAJOR.MINOR.PATCH[-PRE]") from None
        profile_name = item.get("profile", "default")
        if profile_name not in profiles:
            raise self.fail(f"release {version} names unknown profile {profile_name}")
        files = tuple(self.field(item, "files", "releases"))
        if "kserve.yaml" not in files:
            raise self.fail(f"release {version}: 'files' must include kserve.yaml")
        return KServeRelease(
            version=version,
            files=files,
            proxy_image=str(self.field(item, "proxy_image", "releases")),
            cert_manager=str(self.field(item, "cert_manager", "releases")),
            profile=profiles[profile_name],
            latest_patch=bool(item.get("latest_patch", False)),
            kubernetes_minimum=self.minimum(version, item.get("kubernetes_minimum")),
        )

    def minimum(self, version: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not re.fullmatch(r"\d+\.\d+", value):
            raise self.fail(f'release {version} kubernetes_minimum {value!r}: expected a quoted minor, e.g. "1.28"')
        return value

    def proxy(self, item: dict[str, Any]) -> ProxyImage:
        status = str(item.get("status", "served"))
        if status not in ("retired", "frozen", "served"):
            raise self.fail(f"proxy image {item.get('alias')}: status must be retired, frozen or served")
        return ProxyImage(
            alias=str(self.field(item, "alias", "proxy_images")),
            image=str(self.field(item, "image", "proxy_images")),
            status=status,
            note=str(item.get("note", "")),
            newest=bool(item.get("newest", False)),
        )

    def variant(self, item: Any) -> Variant:
        if not isinstance(item, dict):
            raise self.fail("each entry of 'variants' must be a mapping")
        for key in ("args_drop", "args_add"):
            if item.get(key) is not None and not isinstance(item[key], list):
                raise self.fail(f"variant {item.get('name')}: {key} must be a list")
        security_context = item.get("security_context")
        if security_context is not None and not isinstance(security_context, dict):
            raise self.fail(f"variant {item.get('name')}: security_context must be a mapping")
        return Variant(
            name=str(self.field(item, "name", "variants")),
            description=str(item.get("description", "")),
            args_drop=tuple(str(a) for a in item.get("args_drop") or ()),
            args_add=tuple(str(a) for a in item.get("args_add") or ()),
            security_context=security_context,
        )
