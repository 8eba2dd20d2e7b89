"""Which proxy image to run per KServe release, from the cells that passed, and the
commands that apply it (kubectl, Helm, kustomize)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from e2e.matrix import Matrix
from e2e.report.grid import NOT_RUN, md_code, md_text, rank_images, release_key, split_image
from e2e.results import CellResult, Verdict
from e2e.secrets import redact

# Used only when no matrix describes a release: the names every KServe release v0.10-v0.20
# uses for its controller (checked against each release's install/<version>/kserve.yaml by
# tests/manifests/test_manifests.py), and the registry path whose pulls fail since about 2026-03-06.
_FALLBACK_NAMESPACE = "kserve"
_FALLBACK_DEPLOYMENT = "kserve-controller-manager"
_FALLBACK_PROXY_CONTAINER = "kube-rbac-proxy"
_FALLBACK_SHIPPED_OLD = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"  # KServe v0.10-v0.13
_FALLBACK_SHIPPED_NEW = "quay.io/brancz/kube-rbac-proxy:v0.18.0"  # KServe v0.14+
_FIRST_QUAY_RELEASE = "v0.14.0"

# The KServe Helm chart's value for the proxy image, read from kserve/kserve's
# charts/kserve-resources/values.yaml at v0.20.0 (the chart is not installed by any test here).
HELM_PROXY_VALUE = "kserve.controller.rbacProxyImage"
HELM_PROXY_VALUE_SINCE = "v0.20.0"
HELM_CHART = "oci://ghcr.io/kserve/charts/kserve"

# -- recommendations ------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """A proxy image that passed every check of a KServe release with no security finding."""

    kserve_version: str
    rank: int  # 1 = best for this release
    proxy_alias: str
    proxy_image: str
    shipped_image: str  # what the release manifest ships
    cells: tuple[str, ...]  # "provider/cell id" of the passing cells behind it
    kubectl_commands: tuple[str, ...]
    helm_command: str | None  # None: the release's chart has no value for it
    helm_note: str
    kustomize_images: str  # a kustomization.yaml ``images:`` block

    @property
    def already_shipped(self) -> bool:
        return self.proxy_image == self.shipped_image


def recommendations(results: Sequence[CellResult], matrix: Matrix | None = None) -> list[Recommendation]:
    """Per KServe release, best first: images with only passing cells and no findings."""
    by_release: dict[str, dict[tuple[str, str], list[CellResult]]] = {}
    for result in results:
        if result.variant:  # the commands change the image only; variants change more
            continue
        by_release.setdefault(result.kserve_version, {}).setdefault(
            (result.proxy_alias, result.proxy_image), []
        ).append(result)
    chosen: list[Recommendation] = []
    for release in sorted(by_release, key=release_key):
        clean = [
            pair
            for pair, cells in by_release[release].items()
            if all(c.verdict is Verdict.PASS and not c.findings for c in cells)
        ]
        for rank, (alias, image) in enumerate(rank_images(clean, matrix), start=1):
            cells = by_release[release][(alias, image)]
            chosen.append(_recommendation(release, rank, alias, image, cells, matrix))
    return chosen


def _recommendation(
    release: str, rank: int, alias: str, image: str, cells: Sequence[CellResult], matrix: Matrix | None
) -> Recommendation:
    namespace, deployment, container = _FALLBACK_NAMESPACE, _FALLBACK_DEPLOYMENT, _FALLBACK_PROXY_CONTAINER
    quay_era = release_key(release) >= release_key(_FIRST_QUAY_RELEASE)
    shipped = _FALLBACK_SHIPPED_NEW if quay_era else _FALLBACK_SHIPPED_OLD
    known = {r.version: r for r in matrix.releases} if matrix else {}
    if release in known:
        profile = known[release].profile
        namespace, deployment, container = profile.namespace, profile.deployment, profile.proxy_container
        shipped = known[release].proxy_image
    patch = {"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}
    kubectl = (
        f"kubectl -n {shlex.quote(namespace)} patch deployment {shlex.quote(deployment)} --type strategic "
        f"-p {shlex.quote(json.dumps(patch, separators=(',', ':')))}",
        f"kubectl -n {shlex.quote(namespace)} rollout status deployment/{shlex.quote(deployment)}",
    )
    if release_key(release) >= release_key(HELM_PROXY_VALUE_SINCE):
        helm: str | None = (
            f"helm upgrade kserve {HELM_CHART} --version {release} -n {shlex.quote(namespace)} "
            f"--reuse-values --set {HELM_PROXY_VALUE}={shlex.quote(image)}"
        )
        helm_note = f"the chart value {HELM_PROXY_VALUE} sets the image (charts from {HELM_PROXY_VALUE_SINCE})"
    else:
        helm = None
        helm_note = (
            f"the KServe {release} Helm chart has no value for the proxy image "
            f"({HELM_PROXY_VALUE} exists from {HELM_PROXY_VALUE_SINCE}): use the kustomize entry; "
            "a kubectl patch is reverted by the next helm upgrade"
        )
    return Recommendation(
        kserve_version=release,
        rank=rank,
        proxy_alias=alias,
        proxy_image=image,
        shipped_image=shipped,
        cells=tuple(f"{c.provider}/{c.cell_id}" for c in cells),
        kubectl_commands=kubectl,
        helm_command=helm,
        helm_note=helm_note,
        kustomize_images=_kustomize_images(shipped, image),
    )


def _kustomize_images(shipped: str, image: str) -> str:
    old_name = split_image(shipped)[0]
    new_name, tag, digest = split_image(image)
    lines = ["images:", f"  - name: {old_name}"]
    if new_name != old_name:
        lines.append(f"    newName: {new_name}")
    if digest:
        lines.append(f"    digest: {digest}")
    elif tag:
        lines.append(f"    newTag: {tag}")
    return "\n".join(lines)


RECOMMENDATIONS_TITLE = "Recommended proxy image per KServe release"
RECOMMENDATIONS_INTRO = (
    "Images whose cells (without variants) passed every check with no security finding, best first: "
    "newest kube-rbac-proxy, then the most alive registry (quay.io, registry.k8s.io, then the retired gcr.io)."
)


def releases_in(results: Sequence[CellResult]) -> list[str]:
    return sorted({r.kserve_version for r in results if not r.variant}, key=release_key)


def markdown_recommendations(results: Sequence[CellResult], matrix: Matrix | None = None) -> str:
    recs = recommendations(results, matrix)
    lines = [f"## {RECOMMENDATIONS_TITLE}", "", RECOMMENDATIONS_INTRO, ""]
    lines += ["| KServe | recommended | also passed |", "| --- | --- | --- |"]
    for release in releases_in(results):
        mine = [r for r in recs if r.kserve_version == release]
        best = md_code(mine[0].proxy_image) if mine else "none passed cleanly"
        others = ", ".join(md_text(r.proxy_alias) for r in mine[1:]) or NOT_RUN
        lines.append(f"| {md_text(release)} | {best} | {others} |")
    lines.append("")
    for rec in (r for r in recs if r.rank == 1):
        lines += [f"### KServe {md_text(rec.kserve_version)} → {md_code(rec.proxy_image)}", ""]
        shipped = " (the release already ships it: no change needed)" if rec.already_shipped else ""
        passed = ", ".join(md_code(c) for c in rec.cells)
        lines += [f"Ships {md_code(rec.shipped_image)}{shipped}. Passed: {passed}", ""]
        lines += ["kubectl (takes effect now):", "", "```sh", *rec.kubectl_commands, "```", ""]
        if rec.helm_command:
            lines += ["Helm:", "", "```sh", rec.helm_command, "```", ""]
        else:
            lines += [f"Helm: {md_text(rec.helm_note)}.", ""]
        lines += ["Kustomize (`kustomization.yaml` over the release manifest):", ""]
        lines += ["```yaml", rec.kustomize_images, "```", ""]
    return redact("\n".join(lines).rstrip() + "\n")
