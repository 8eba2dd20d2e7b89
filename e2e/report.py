"""Rendering cell results: JSON files, the Markdown grid, an HTML page, JUnit XML, exit codes.

One JSON file per cell is what an e2e run leaves behind (``save_result``); CI shards are
merged back with ``load_results``. Every renderer reads only ``CellResult`` records and the
matrix (for column order, controller profiles and registry status), never a cluster.

Secrets: the result model redacts on the way in, and every string is redacted again on
the way out here, because evidence lists can be appended to after construction.

Decisions worth knowing (also in README.md, "Reports"):

* Duplicates: the same cell id on the same provider is one cell; when shards disagree, the
  result with the newer ``started_at`` wins. Kind and local results of one cell id stay
  side by side, one grid per provider.
* ``image-unavailable`` is a failure, except for a proxy image the matrix marks
  ``retired`` (e.g. the deleted gcr.io/kubebuilder): that outcome is the expected one, so
  it is reported (🚫, JUnit ``skipped``) but does not fail the run.
* A security finding never changes the compatibility verdict; it fails the run only with
  ``strict=True``.
* Recommendations consider cells without a variant only: the commands they print change
  the image and nothing else.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.errors import UsageError
from e2e.images import ImageReference, is_retired
from e2e.matrix import Matrix, version_key
from e2e.results import CellResult, Verdict
from e2e.secrets import REDACTED, redact
from e2e.support import Support
from e2e.text import one_line

VERDICT_SYMBOLS: dict[Verdict, str] = {
    Verdict.PASS: "✅",
    Verdict.FAIL: "❌",
    Verdict.IMAGE_UNAVAILABLE: "🚫",
    Verdict.ERROR: "⚠️",
    Verdict.SKIPPED: "⏭️",
}
VERDICT_MEANINGS: dict[Verdict, str] = {
    Verdict.PASS: "pass: every check passed",
    Verdict.FAIL: "fail: a check got an answer other than the expected one",
    Verdict.IMAGE_UNAVAILABLE: "image unavailable: the proxy image could not be pulled "
    "(expected for retired registries; does not fail the run for them)",
    Verdict.ERROR: "error: the harness could not complete a check",
    Verdict.SKIPPED: "skipped, for the stated reason",
}
NOT_RUN = "—"
# Security findings get their own marker so a cell can read "compatible, but leaks".
TOKEN_LEAK = "token-leak"
SECURITY_MARKERS: dict[str, str] = {TOKEN_LEAK: "🔓"}
# A release row whose Kubernetes minor is outside the release's window (e2e/support.py).
OUTSIDE_SUPPORT = Support.OUTSIDE.value
OUTSIDE_SUPPORT_MARKER = "⚑"
OTHER_FINDING_MARKER = "🛡️"
SECURITY_MEANINGS: dict[str, str] = {
    "🔓": "a bearer token leaked into the proxy's logs (security finding; independent of compatibility)",
    OTHER_FINDING_MARKER: "another security finding (see below the grid)",
}

REPORT_TITLE = "KServe and kube-rbac-proxy compatibility"
REPORT_FILES: dict[str, str] = {
    "json": "report.json",
    "markdown": "report.md",
    "html": "report.html",
    "junit": "junit.xml",
}

# Used only when no matrix describes a release: the names every KServe release v0.10-v0.20
# uses for its controller (checked against each release's install/<version>/kserve.yaml by
# tests/test_manifests.py), and the registry path whose pulls fail since about 2026-03-06.
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

# Best first: an active registry beats a frozen copy beats one that was deleted.
_REGISTRY_RANK = {"quay.io": 0, "registry.k8s.io": 1}
_UNKNOWN_REGISTRY_RANK = 2
_RETIRED_RANK = 3

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# -- JSON: one file per cell, merged lists --------------------------------------------


def save_result(result: CellResult, directory: Path | str) -> Path:
    """Write ``<cell_id>.json`` into ``directory`` atomically (readers never see half a file)."""
    if not result.cell_id or result.cell_id.startswith(".") or any(sep in result.cell_id for sep in "/\\"):
        raise UsageError(f"cell id {result.cell_id!r}: expected a file name (no path separators, no leading dot)")
    target = Path(directory) / f"{result.cell_id}.json"
    write_atomic(target, _json_text(result.to_dict()))
    return target


def load_results(paths: Iterable[Path | str]) -> list[CellResult]:
    """Read result files and directories (every result JSON below them) into one list.

    A file holds one cell (as ``save_result`` writes it) or a list of cells (``report.json``).
    Directories are read recursively, since CI lays each group's results out as
    ``reports/<group>/``; JSON below them that is not a result (e.g. ``kind export logs``'
    ``inspect.json``) is passed over. The same cell id on the same provider is one cell: a
    later one replaces an earlier one only when it started later, so the order of CI shards
    does not matter.
    """
    merged: dict[tuple[str, str], CellResult] = {}
    for file, named in _result_files(paths):
        for result in _read_result_file(file, named=named):
            key = (result.provider, result.cell_id)
            kept = merged.get(key)
            if kept is None or result.started_at > kept.started_at:
                merged[key] = result
    if not merged:
        names = ", ".join(str(p) for p in paths) or "(no paths)"
        raise UsageError(f"{names}: no result JSON files found (expected <cell id>.json from an e2e run)")
    return sorted(merged.values(), key=_result_sort_key)


def _result_files(paths: Iterable[Path | str]) -> list[tuple[Path, bool]]:
    """(file, named by the user) for each given file and each ``*.json`` below a given directory."""
    files: list[tuple[Path, bool]] = []
    for path in (Path(p) for p in paths):
        if path.is_dir():
            found = (p for p in path.rglob("*.json") if p.is_file() and not p.name.startswith("."))
            files.extend((p, False) for p in sorted(found))
        elif path.is_file():
            files.append((path, True))
        else:
            raise UsageError(f"{path}: no such file or directory (expected result JSON files or a directory of them)")
    return files


def _read_result_file(path: Path, named: bool = True) -> list[CellResult]:
    """The results in ``path``; valid JSON found in a directory that is no result gives none."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # Results are written atomically, so a broken JSON file is worth stopping for.
        where = f" line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise UsageError(f"result file {path}{where}: not valid JSON") from None
    except OSError as exc:
        raise UsageError(f"result file {path}: cannot be read ({exc.strerror})") from None
    items = raw if isinstance(raw, list) else [raw]
    looks_like_results = all(isinstance(item, dict) and "cell_id" in item for item in items)
    if not looks_like_results:
        if not named:
            return []
        raise UsageError(f"result file {path}: expected a cell result object (with cell_id) or a list of them")
    results = []
    for item in items:
        try:
            results.append(CellResult.from_dict(item))
        except (TypeError, ValueError, KeyError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            cell = item.get("cell_id")
            raise UsageError(f"result file {path}: cell {cell!r} is not a valid result ({reason})") from None
    return results


def _json_text(data: Any) -> str:
    return json.dumps(_redacted(data), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


REPORT_FILE_MODE = 0o644


def write_atomic(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: a reader sees the old file or the new one.
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    # mkstemp makes the file 0600; reports are for the user's group and CI viewers too (they
    # hold no token: everything written here is redacted).
    os.fchmod(descriptor, REPORT_FILE_MODE)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- ordering and grouping ------------------------------------------------------------


def _release_key(version: str) -> tuple[int, tuple[int, int, int, int, str]]:
    """Semver order; a version the grammar rejects sorts after all others instead of failing."""
    try:
        return (0, version_key(version))
    except UsageError:
        return (1, (0, 0, 0, 0, version))


def _kubernetes_key(version: str) -> tuple[tuple[int, ...], str]:
    parts = version.removeprefix("v").split(".")
    if all(p.isdigit() for p in parts):
        return (tuple(int(p) for p in parts), "")
    return ((1 << 30,), version)


def _result_sort_key(result: CellResult) -> tuple[Any, ...]:
    return (
        result.provider,
        _kubernetes_key(result.kubernetes_version),
        result.variant,
        _release_key(result.kserve_version),
        result.proxy_alias,
    )


@dataclass(frozen=True)
class _Group:
    provider: str
    kubernetes_version: str
    variant: str
    results: tuple[CellResult, ...]

    @property
    def title(self) -> str:
        # The API servers' own versions: the patch that really ran (v1.35.4), not only the minor.
        ran = _unique(r.kubernetes_server for r in self.results if r.kubernetes_server.startswith("v"))
        title = f"{self.provider} · Kubernetes {self.kubernetes_version}" + (f" ({', '.join(ran)})" if ran else "")
        if not self.variant:
            return title
        # A scenario's own grid (the migration's, the rollback's) is named as the scenario.
        if all(r.scenario == self.variant for r in self.results):
            return f"{title} · {self.variant} scenario"
        return f"{title} · variant {self.variant}"

    def outside_support(self, release: str) -> CellResult | None:
        """A result of ``release`` marked outside its Kubernetes support window, if any."""
        return next(
            (r for r in self.results if r.kserve_version == release and r.support == OUTSIDE_SUPPORT), None
        )

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def _groups(results: Sequence[CellResult]) -> list[_Group]:
    buckets: dict[tuple[str, str, str], list[CellResult]] = {}
    for result in results:
        buckets.setdefault((result.provider, result.kubernetes_version, result.variant), []).append(result)
    ordered = sorted(buckets, key=lambda k: (k[0], _kubernetes_key(k[1]), k[2]))
    return [_Group(p, k, v, tuple(buckets[(p, k, v)])) for p, k, v in ordered]


def _columns(results: Sequence[CellResult], matrix: Matrix | None) -> list[str]:
    """Proxy aliases in matrix order; aliases the matrix lacks follow, newest image first."""
    present = {r.proxy_alias: r.proxy_image for r in results}
    order = [p.alias for p in matrix.proxies] if matrix else []
    known = [alias for alias in order if alias in present]
    extra = _rank_images([(alias, present[alias]) for alias in present if alias not in order], matrix)
    return known + [alias for alias, _ in extra]


def _rows(results: Sequence[CellResult]) -> list[str]:
    return sorted({r.kserve_version for r in results}, key=_release_key)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


# -- images, registries, expectations -------------------------------------------------


def _split_image(reference: str) -> tuple[str, str, str]:
    """``(name as written, tag, digest)``; tag and digest may be empty, and a field that is no
    reference (an empty one) is all name."""
    ref = ImageReference.parse_or_none(reference)
    if ref is None:
        return reference, "", ""
    return ref.written_name, ref.tag or "", ref.digest or ""


def _registry(reference: str) -> str | None:
    ref = ImageReference.parse_or_none(reference)
    return ref.domain if ref is not None else None


def _is_retired(image: str, alias: str, matrix: Matrix | None) -> bool:
    if matrix is not None:
        for proxy in matrix.proxies:
            if image == proxy.image or (not image and alias == proxy.alias):
                return proxy.retired
    return is_retired(image)


def expected_unavailable(result: CellResult, matrix: Matrix | None = None) -> bool:
    """True when the cell's image could not be pulled because its registry is retired."""
    return result.verdict is Verdict.IMAGE_UNAVAILABLE and _is_retired(result.proxy_image, result.proxy_alias, matrix)


def _image_rank(alias: str, image: str, matrix: Matrix | None) -> tuple[Any, ...]:
    """Sort key, best first: newest kube-rbac-proxy, then the most alive registry."""
    tag = _split_image(image)[1]
    try:
        newest_first: tuple[Any, ...] = (0, tuple(-part for part in version_key(tag)[:4]), tag)
    except UsageError:  # "latest" or a digest: nothing to rank by, so last
        newest_first = (1, (), tag)
    if _is_retired(image, alias, matrix):
        registry_rank = _RETIRED_RANK
    else:
        registry_rank = _REGISTRY_RANK.get(_registry(image) or "", _UNKNOWN_REGISTRY_RANK)
    return (newest_first, registry_rank, alias)


def _rank_images(pairs: Iterable[tuple[str, str]], matrix: Matrix | None) -> list[tuple[str, str]]:
    return sorted(pairs, key=lambda pair: _image_rank(pair[0], pair[1], matrix))


# -- text helpers ---------------------------------------------------------------------


def _md_text(text: str) -> str:
    """Free text for Markdown: no table breaks, and ``<redacted>`` must not read as HTML."""
    return re.sub(r"([\\`*<>|\[\]])", r"\\\1", one_line(text))


def _md_code(text: str) -> str:
    flat = one_line(text)
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _markers(result: CellResult) -> str:
    return " ".join(_unique(SECURITY_MARKERS.get(f.kind, OTHER_FINDING_MARKER) for f in result.findings))


def cell_symbol(result: CellResult | None) -> str:
    """What a grid cell shows: the verdict's symbol, then any security markers."""
    if result is None:
        return NOT_RUN
    markers = _markers(result)
    symbol = VERDICT_SYMBOLS[result.verdict]
    return f"{symbol} {markers}" if markers else symbol


def _why(result: CellResult) -> tuple[str, str]:
    """(check name, one-line detail) that explains a cell that did not pass."""
    failing = result.failing_check
    if failing is not None:
        return failing.name, failing.detail or result.reason
    return "", result.reason or "no reason recorded"


def _summary_counts(results: Sequence[CellResult]) -> str:
    counts = [
        f"{sum(r.verdict is verdict for r in results)} {verdict.value}"
        for verdict in Verdict
        if any(r.verdict is verdict for r in results)
    ]
    leaking = sum(bool(r.findings) for r in results)
    line = f"{len(results)} cells: " + ", ".join(counts)
    return line + f"; {leaking} with security findings" if leaking else line


# -- Markdown -------------------------------------------------------------------------


def legend_items() -> list[tuple[str, str]]:
    items = [(VERDICT_SYMBOLS[v], VERDICT_MEANINGS[v]) for v in Verdict]
    items.append((NOT_RUN, "not run"))
    items.extend(SECURITY_MEANINGS.items())
    return items


def markdown_grid(results: Sequence[CellResult], matrix: Matrix | None = None) -> str:
    """The grids (one per provider, Kubernetes version and variant), legend and details."""
    lines = ["**Legend:** " + " · ".join(f"{symbol} {meaning}" for symbol, meaning in legend_items()), ""]
    for group in _groups(results):
        lines += _markdown_group(group, matrix)
    return redact("\n".join(lines).rstrip() + "\n")


def _markdown_group(group: _Group, matrix: Matrix | None) -> list[str]:
    columns = _columns(group.results, matrix)
    by_cell = {(r.kserve_version, r.proxy_alias): r for r in group.results}
    lines = [f"### {_md_text(group.title)}", ""]
    lines.append("| KServe | " + " | ".join(_md_text(c) for c in columns) + " |")
    lines.append("| --- |" + " :---: |" * len(columns))
    for release in _rows(group.results):
        cells = [cell_symbol(by_cell.get((release, alias))) for alias in columns]
        mark = f" {OUTSIDE_SUPPORT_MARKER}" if group.outside_support(release) else ""
        lines.append(f"| {_md_text(release)}{mark} | " + " | ".join(cells) + " |")
    lines.append("")
    outside = [r for r in map(group.outside_support, _rows(group.results)) if r is not None]
    if outside:
        lines.append(f"{OUTSIDE_SUPPORT_MARKER} {OUTSIDE_SUPPORT}: the verdict stands; the release was not built for "
                     "this Kubernetes minor:")  # fmt: skip
        lines += [f"- {_md_text(r.support_reason)}" for r in outside]
        lines.append("")
    deviations = _unique(d for r in group.results for d in r.deviations)
    if deviations:
        lines += ["Cluster deviations: " + "; ".join(_md_text(d) for d in deviations), ""]
    notes = _unique(n for r in group.results for n in r.notes)
    if notes:
        lines += ["Notes: " + "; ".join(_md_text(n) for n in notes), ""]
    # Cells that did not pass for the same reason share a line (a retired image fails every
    # release alike); each line still names every cell.
    not_passing: dict[tuple[str, str, str], list[str]] = {}
    for result in group.results:
        if result.verdict is not Verdict.PASS:
            check, detail = _why(result)
            expected = " (expected: retired registry)" if expected_unavailable(result, matrix) else ""
            outcome = f"{VERDICT_SYMBOLS[result.verdict]} {result.verdict.value}{expected}"
            not_passing.setdefault((outcome, check, one_line(detail)), []).append(result.cell_id)
    if not_passing:
        lines.append("**Not passing:**")
        for (outcome, check, detail), cell_ids in not_passing.items():
            where = f"{_md_code(check)}: " if check else ""
            lines.append(f"- {_md_cells(cell_ids)} {outcome} — {where}{_md_code(detail)}")
        lines.append("")
    findings: dict[tuple[str, str], list[str]] = {}
    for result in group.results:
        for finding in result.findings:
            findings.setdefault((finding.kind, one_line(finding.detail)), []).append(result.cell_id)
    if findings:
        lines.append("**Security findings:**")
        for (kind, detail), cell_ids in findings.items():
            marker = SECURITY_MARKERS.get(kind, OTHER_FINDING_MARKER)
            lines.append(f"- {_md_cells(cell_ids)} {marker} {_md_code(kind)}: {_md_code(detail)}")
        lines.append("")
    return lines


def _md_cells(cell_ids: Sequence[str]) -> str:
    return ", ".join(_md_code(cell_id) for cell_id in _unique(cell_ids))


def _proxy_rows(results: Sequence[CellResult], matrix: Matrix | None) -> list[tuple[str, str, str]]:
    """(alias, image, status) of every proxy image in the results."""
    seen = {r.proxy_alias: r.proxy_image for r in results}
    rows = []
    for alias in _columns(results, matrix):
        status = "retired" if _is_retired(seen[alias], alias, matrix) else "served"
        if matrix is not None:
            status = next((p.status for p in matrix.proxies if p.alias == alias), status)
        rows.append((alias, seen[alias], status))
    return rows


def markdown_report(results: Sequence[CellResult], matrix: Matrix | None = None) -> str:
    """The whole Markdown report: summary, grids, proxy images, recommendations."""
    lines = ["# " + REPORT_TITLE, "", _summary_counts(results), ""]
    lines.append(markdown_grid(results, matrix))
    lines += ["## Proxy images", "", "| alias | image | registry |", "| --- | --- | --- |"]
    lines += [f"| {_md_text(a)} | {_md_code(i)} | {_md_text(s)} |" for a, i, s in _proxy_rows(results, matrix)]
    lines += ["", markdown_recommendations(results, matrix)]
    return redact("\n".join(lines).rstrip() + "\n")


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
    for release in sorted(by_release, key=_release_key):
        clean = [
            pair
            for pair, cells in by_release[release].items()
            if all(c.verdict is Verdict.PASS and not c.findings for c in cells)
        ]
        for rank, (alias, image) in enumerate(_rank_images(clean, matrix), start=1):
            cells = by_release[release][(alias, image)]
            chosen.append(_recommendation(release, rank, alias, image, cells, matrix))
    return chosen


def _recommendation(
    release: str, rank: int, alias: str, image: str, cells: Sequence[CellResult], matrix: Matrix | None
) -> Recommendation:
    namespace, deployment, container = _FALLBACK_NAMESPACE, _FALLBACK_DEPLOYMENT, _FALLBACK_PROXY_CONTAINER
    quay_era = _release_key(release) >= _release_key(_FIRST_QUAY_RELEASE)
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
    if _release_key(release) >= _release_key(HELM_PROXY_VALUE_SINCE):
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
    old_name = _split_image(shipped)[0]
    new_name, tag, digest = _split_image(image)
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


def _releases_in(results: Sequence[CellResult]) -> list[str]:
    return sorted({r.kserve_version for r in results if not r.variant}, key=_release_key)


def markdown_recommendations(results: Sequence[CellResult], matrix: Matrix | None = None) -> str:
    recs = recommendations(results, matrix)
    lines = [f"## {RECOMMENDATIONS_TITLE}", "", RECOMMENDATIONS_INTRO, ""]
    lines += ["| KServe | recommended | also passed |", "| --- | --- | --- |"]
    for release in _releases_in(results):
        mine = [r for r in recs if r.kserve_version == release]
        best = _md_code(mine[0].proxy_image) if mine else "none passed cleanly"
        others = ", ".join(_md_text(r.proxy_alias) for r in mine[1:]) or NOT_RUN
        lines.append(f"| {_md_text(release)} | {best} | {others} |")
    lines.append("")
    for rec in (r for r in recs if r.rank == 1):
        lines += [f"### KServe {_md_text(rec.kserve_version)} → {_md_code(rec.proxy_image)}", ""]
        shipped = " (the release already ships it: no change needed)" if rec.already_shipped else ""
        passed = ", ".join(_md_code(c) for c in rec.cells)
        lines += [f"Ships {_md_code(rec.shipped_image)}{shipped}. Passed: {passed}", ""]
        lines += ["kubectl (takes effect now):", "", "```sh", *rec.kubectl_commands, "```", ""]
        if rec.helm_command:
            lines += ["Helm:", "", "```sh", rec.helm_command, "```", ""]
        else:
            lines += [f"Helm: {_md_text(rec.helm_note)}.", ""]
        lines += ["Kustomize (`kustomization.yaml` over the release manifest):", ""]
        lines += ["```yaml", rec.kustomize_images, "```", ""]
    return redact("\n".join(lines).rstrip() + "\n")


# -- HTML -----------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: center; }
th:first-child, td:first-child { text-align: left; }
td.pass { background: #dafbe1; } td.fail, td.image-unavailable { background: #ffebe9; }
td.image-unavailable.expected { background: #ddf4ff; color: #0a3069; }
td.outside-support small { color: #9a6700; }
td a { color: inherit; text-decoration: none; display: block; }
details { margin: 0.3rem 0; } details table { margin: 0.3rem 0 0.3rem 1rem; } .check-fail { color: #cf222e; }
td.error { background: #fff8c5; } td.skipped, td.not-run { background: #f6f8fa; }
td.leak { outline: 3px solid #cf222e; outline-offset: -3px; }
code, pre { font-family: ui-monospace, monospace; background: #f6f8fa; }
pre { padding: 0.6rem; overflow-x: auto; }
.legend span { margin-right: 1rem; white-space: nowrap; }
"""


def _h(text: str) -> str:
    return html.escape(redact(text), quote=True)


def html_report(results: Sequence[CellResult], matrix: Matrix | None = None, title: str | None = None) -> str:
    """A self-contained page (inline CSS, no scripts, no external links) with everything."""
    heading = title or REPORT_TITLE
    body = [f"<h1>{_h(heading)}</h1>", f"<p>{_h(_summary_counts(results))}</p>"]
    body.append(
        '<p class="legend">'
        + "".join(f"<span>{_h(symbol)} {_h(meaning)}</span>" for symbol, meaning in legend_items())
        + "</p>"
    )
    for group in _groups(results):
        body += _html_group(group, matrix)
    body += ["<h2>Proxy images</h2>", "<table><tr><th>alias</th><th>image</th><th>registry</th></tr>"]
    body += [
        f"<tr><td>{_h(a)}</td><td><code>{_h(i)}</code></td><td>{_h(s)}</td></tr>"
        for a, i, s in _proxy_rows(results, matrix)
    ]
    body.append("</table>")
    body += _html_recommendations(results, matrix)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_h(heading)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    # A last pass for anything that slipped through; its marker must stay text, not a tag.
    return redact(page).replace(REDACTED, html.escape(REDACTED))


def _html_group(group: _Group, matrix: Matrix | None) -> list[str]:
    columns = _columns(group.results, matrix)
    by_cell = {(r.kserve_version, r.proxy_alias): r for r in group.results}
    out = [f'<h2 id="{_h(group.slug)}">{_h(group.title)}</h2>', "<table>"]
    out.append("<tr><th>KServe</th>" + "".join(f"<th>{_h(c)}</th>" for c in columns) + "</tr>")
    for release in _rows(group.results):
        cells = []
        for alias in columns:
            result = by_cell.get((release, alias))
            if result is None:
                cells.append(f'<td class="not-run" title="not run">{_h(cell_symbol(result))}</td>')
                continue
            # An expected verdict (a retired image) looks apart from a failure; each cell links
            # to its checks and evidence below.
            expected = " expected" if expected_unavailable(result, matrix) else ""
            css = result.verdict.value + expected + (" leak" if result.findings else "")
            tip = f"{result.cell_id}: {result.verdict.value}" + (" (expected: retired registry)" if expected else "")
            cells.append(
                f'<td class="{css}" title="{_h(tip)}"><a href="#{_h(_cell_anchor(result))}">'
                f"{_h(cell_symbol(result))}</a></td>"
            )
        outside = group.outside_support(release)
        label = (
            f'<td class="outside-support" title="{_h(outside.support_reason)}">{_h(release)} '
            f"<small>{_h(OUTSIDE_SUPPORT)}</small></td>"
            if outside
            else f"<td>{_h(release)}</td>"
        )
        out.append(f"<tr>{label}" + "".join(cells) + "</tr>")
    out.append("</table>")
    outside_results = [r for r in map(group.outside_support, _rows(group.results)) if r is not None]
    if outside_results:
        out.append(
            f"<p>{_h(OUTSIDE_SUPPORT)} (the verdict stands; the release was not built for this Kubernetes minor): "
            + "; ".join(_h(r.support_reason) for r in outside_results)
            + "</p>"
        )
    deviations = _unique(d for r in group.results for d in r.deviations)
    if deviations:
        out.append("<p>Cluster deviations: " + "; ".join(_h(d) for d in deviations) + "</p>")
    notes = _unique(n for r in group.results for n in r.notes)
    if notes:
        out.append("<p>Notes: " + "; ".join(_h(n) for n in notes) + "</p>")
    not_passing = [r for r in group.results if r.verdict is not Verdict.PASS]
    if not_passing:
        out.append("<h3>Not passing</h3><ul>")
        for result in not_passing:
            check, detail = _why(result)
            expected = " (expected: retired registry)" if expected_unavailable(result, matrix) else ""
            where = f"<code>{_h(check)}</code>: " if check else ""
            evidence = result.failing_check.evidence if result.failing_check else []
            out.append(
                f"<li><code>{_h(result.cell_id)}</code> {_h(VERDICT_SYMBOLS[result.verdict])} "
                f"{_h(result.verdict.value + expected)} — {where}{_h(one_line(detail))}"
                + (f"<pre>{_h(chr(10).join(evidence))}</pre>" if evidence else "")
                + "</li>"
            )
        out.append("</ul>")
    out.append("<h3>Cells</h3>")
    out += [_html_cell_details(result, matrix) for result in group.results]
    findings = [(r, f) for r in group.results for f in r.findings]
    if findings:
        out.append("<h3>Security findings</h3><ul>")
        for result, finding in findings:
            marker = SECURITY_MARKERS.get(finding.kind, OTHER_FINDING_MARKER)
            out.append(
                f"<li><code>{_h(result.cell_id)}</code> {_h(marker)} <code>{_h(finding.kind)}</code>: "
                f"{_h(one_line(finding.detail))}"
                + (f"<pre>{_h(chr(10).join(finding.evidence))}</pre>" if finding.evidence else "")
                + "</li>"
            )
        out.append("</ul>")
    return out


def _cell_anchor(result: CellResult) -> str:
    return f"cell-{result.provider}-{result.cell_id}"


def _html_cell_details(result: CellResult, matrix: Matrix | None) -> str:
    """One cell's checks (status, detail, evidence) and where its diagnostics are, folded."""
    expected = " (expected: retired registry)" if expected_unavailable(result, matrix) else ""
    summary = (
        f"<summary><code>{_h(result.cell_id)}</code> {_h(VERDICT_SYMBOLS[result.verdict])} "
        f"{_h(result.verdict.value + expected)}" + (f" — {_h(one_line(result.reason))}" if result.reason else "")
        + "</summary>"
    )
    rows = []
    for check in result.checks:
        css = "" if check.passed or check.status.value == "skipped" else ' class="check-fail"'
        evidence = f"<pre>{_h(chr(10).join(check.evidence))}</pre>" if check.evidence else ""
        rows.append(
            f"<tr><td><code>{_h(check.name)}</code></td><td{css}>{_h(check.status.value)}</td>"
            f'<td style="text-align:left">{_h(one_line(check.detail))}{evidence}</td></tr>'
        )
    table = "<table><tr><th>check</th><th>status</th><th>detail</th></tr>" + "".join(rows) + "</table>" if rows else ""
    diagnostics = (
        f"<p>Diagnostics (<code>diagnostics/{_h(result.cell_id)}/</code>):</p>"
        f"<pre>{_h(chr(10).join(result.diagnostics))}</pre>"
        if result.diagnostics
        else ""
    )
    chart = traffic_chart(result) if result.traffic else ""
    return f'<details id="{_h(_cell_anchor(result))}">{summary}{chart}{table}{diagnostics}</details>'


# Chart geometry (pixels): a lane per kind of request, a bar per time bucket.
_CHART_W, _LANE_H, _LANE_GAP, _LEFT, _TOP = 560, 44, 18, 78, 14
_OK, _FAILED = "#2da44e", "#cf222e"


def traffic_chart(result: CellResult) -> str:
    """An image change's requests over time (a migration, a rollback) as an inline SVG: per
    bucket, the metrics requests and the inference requests that were answered (green) or
    failed (red), and when the swap began and the rollout ended. No script, no external
    file: the page stays one file."""
    rows = result.traffic
    bucket = rows[1][0] - rows[0][0] if len(rows) > 1 else 0.5
    end = max(rows[-1][0] + bucket, *result.traffic_marks.values(), 0.1)
    lanes = [("metrics", 1, 2), ("inference", 3, 4)] if any(r[3] or r[4] for r in rows) else [("metrics", 1, 2)]
    height = _TOP + len(lanes) * (_LANE_H + _LANE_GAP) + 12

    def x(seconds: float) -> float:
        return _LEFT + _CHART_W * seconds / end

    width = max(1.0, _CHART_W * bucket / end - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _CHART_W + 10}" height="{height}" '
        f'role="img" aria-label="requests over time during the image change" class="traffic">'
    ]
    for lane, (name, ok_column, failed_column) in enumerate(lanes):
        top = _TOP + lane * (_LANE_H + _LANE_GAP)
        peak = max((r[ok_column] + r[failed_column] for r in rows), default=0) or 1
        parts.append(f'<text x="4" y="{top + _LANE_H / 2 + 4:.0f}" font-size="12">{name}</text>')
        parts.append(f'<line x1="{_LEFT}" y1="{top + _LANE_H}" x2="{_LEFT + _CHART_W}" y2="{top + _LANE_H}" '
                     'stroke="#d0d7de"/>')  # fmt: skip
        for row in rows:
            ok, failed = row[ok_column], row[failed_column]
            ok_h, failed_h = _LANE_H * ok / peak, _LANE_H * failed / peak
            if ok:
                parts.append(f'<rect x="{x(row[0]):.1f}" y="{top + _LANE_H - ok_h:.1f}" width="{width:.1f}" '
                             f'height="{ok_h:.1f}" fill="{_OK}"><title>{row[0]:.1f} s: {ok:.0f} answered'
                             "</title></rect>")  # fmt: skip
            if failed:
                parts.append(f'<rect x="{x(row[0]):.1f}" y="{top + _LANE_H - ok_h - failed_h:.1f}" '
                             f'width="{width:.1f}" height="{failed_h:.1f}" fill="{_FAILED}"><title>{row[0]:.1f} s: '
                             f"{failed:.0f} failed</title></rect>")  # fmt: skip
    bottom = _TOP + len(lanes) * (_LANE_H + _LANE_GAP) - _LANE_GAP
    for name, at in sorted(result.traffic_marks.items(), key=lambda item: item[1]):
        # A label in the right third is written leftwards of its line, so the chart never cuts it.
        anchor, dx = ("end", -2) if x(at) > _LEFT + _CHART_W * 2 / 3 else ("start", 2)
        parts.append(f'<line x1="{x(at):.1f}" y1="{_TOP - 4}" x2="{x(at):.1f}" y2="{bottom}" stroke="#57606a" '
                     f'stroke-dasharray="3,2"/><text x="{x(at) + dx:.1f}" y="{_TOP - 4}" font-size="10" '
                     f'fill="#57606a" text-anchor="{anchor}">{_h(name)} {at:.1f} s</text>')  # fmt: skip
    parts.append(f'<text x="{_LEFT}" y="{height - 2}" font-size="10" fill="#57606a">0 s</text>')
    parts.append(f'<text x="{_LEFT + _CHART_W}" y="{height - 2}" font-size="10" fill="#57606a" '
                 f'text-anchor="end">{end:.1f} s</text>')  # fmt: skip
    parts.append("</svg>")
    caption = (
        f"<p><small>Requests per {bucket:g} s during the image change: answered "
        f'<span style="color:{_OK}">■</span>, failed <span style="color:{_FAILED}">■</span>.</small></p>'
    )
    return "".join(parts) + caption


def _html_recommendations(results: Sequence[CellResult], matrix: Matrix | None) -> list[str]:
    recs = recommendations(results, matrix)
    out = [f"<h2>{_h(RECOMMENDATIONS_TITLE)}</h2>", f"<p>{_h(RECOMMENDATIONS_INTRO)}</p>"]
    out.append("<table><tr><th>KServe</th><th>recommended</th><th>also passed</th></tr>")
    for release in _releases_in(results):
        mine = [r for r in recs if r.kserve_version == release]
        best = f"<code>{_h(mine[0].proxy_image)}</code>" if mine else "none passed cleanly"
        others = _h(", ".join(r.proxy_alias for r in mine[1:]) or NOT_RUN)
        out.append(f"<tr><td>{_h(release)}</td><td>{best}</td><td>{others}</td></tr>")
    out.append("</table>")
    for rec in (r for r in recs if r.rank == 1):
        out.append(f"<h3>KServe {_h(rec.kserve_version)} → <code>{_h(rec.proxy_image)}</code></h3>")
        shipped = " (the release already ships it: no change needed)" if rec.already_shipped else ""
        passed = _h(", ".join(rec.cells))
        out.append(f"<p>Ships <code>{_h(rec.shipped_image)}</code>{_h(shipped)}. Passed: {passed}</p>")
        out.append(f"<p>kubectl (takes effect now):</p><pre>{_h(chr(10).join(rec.kubectl_commands))}</pre>")
        if rec.helm_command:
            out.append(f"<p>Helm:</p><pre>{_h(rec.helm_command)}</pre>")
        else:
            out.append(f"<p>Helm: {_h(rec.helm_note)}.</p>")
        out.append("<p>Kustomize (kustomization.yaml over the release manifest):</p>")
        out.append(f"<pre>{_h(rec.kustomize_images)}</pre>")
    return out


# -- JUnit ----------------------------------------------------------------------------


def junit_properties(result: CellResult) -> list[tuple[str, str]]:
    """Name/value pairs for pytest's ``record_property`` (and the standalone JUnit file)."""
    props = [
        ("cell_id", result.cell_id),
        ("provider", result.provider),
        ("kserve_version", result.kserve_version),
        ("proxy_alias", result.proxy_alias),
        ("proxy_image", result.proxy_image),
        ("kubernetes_version", result.kubernetes_version),
    ]
    if result.variant:
        props.append(("variant", result.variant))
    props.append(("verdict", result.verdict.value))
    if result.reason:
        props.append(("reason", result.reason))
    for check in result.checks:
        status = check.status.value
        props.append((f"check.{check.name}", f"{status}: {check.detail}" if check.detail else status))
    props.append(("security_findings", str(len(result.findings))))
    props += [(f"security_finding.{i}", f"{f.kind}: {f.detail}") for i, f in enumerate(result.findings, start=1)]
    return [(name, _xml_text(one_line(value, limit=1000))) for name, value in props]


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold: log lines can carry terminal control characters."""
    return _XML_INVALID.sub("\N{REPLACEMENT CHARACTER}", redact(text))


def junit_xml(results: Sequence[CellResult], matrix: Matrix | None = None) -> str:
    """JUnit XML, one testcase per cell, one testsuite per grid.

    pass → plain testcase; fail → ``failure``; error → ``error``; skipped → ``skipped``;
    image-unavailable → ``skipped`` when the image is retired (expected), else ``failure``.
    Security findings appear as properties and in ``system-out``; they do not fail a case.
    """
    root = ET.Element("testsuites", name="kserve-compat")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for group in _groups(results):
        suite = ET.SubElement(root, "testsuite", name=group.title)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        started = min(r.started_at for r in group.results)
        for result in group.results:
            counts["tests"] += 1
            outcome = _junit_case(suite, group, result, matrix)
            if outcome:
                counts[outcome] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{sum(r.duration_s for r in group.results):.3f}")
        suite.set("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)))
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _junit_case(suite: ET.Element, group: _Group, result: CellResult, matrix: Matrix | None) -> str:
    """Add one testcase; return the counter it adds to ("" for a pass)."""
    classname = f"kserve-compat.{group.provider}.k8s-{group.kubernetes_version}"
    case = ET.SubElement(
        suite,
        "testcase",
        name=_xml_text(result.cell_id),
        classname=_xml_text(classname),
        time=f"{result.duration_s:.3f}",
    )
    properties = ET.SubElement(case, "properties")
    for name, value in junit_properties(result):
        ET.SubElement(properties, "property", name=name, value=value)
    check, detail = _why(result)
    message = _xml_text(one_line(f"{check}: {detail}" if check else detail))
    evidence = result.failing_check.evidence if result.failing_check else []
    body = _xml_text("\n".join([result.reason, *evidence]).strip())
    outcome = ""
    if result.verdict is Verdict.FAIL or (
        result.verdict is Verdict.IMAGE_UNAVAILABLE and not expected_unavailable(result, matrix)
    ):
        element = ET.SubElement(case, "failure", message=message, type=result.verdict.value)
        element.text, outcome = body, "failures"
    elif result.verdict is Verdict.ERROR:
        element = ET.SubElement(case, "error", message=message, type=result.verdict.value)
        element.text, outcome = body, "errors"
    elif result.verdict in (Verdict.SKIPPED, Verdict.IMAGE_UNAVAILABLE):
        unavailable = result.verdict is Verdict.IMAGE_UNAVAILABLE
        prefix = "image unavailable (expected: retired registry): " if unavailable else ""
        ET.SubElement(case, "skipped", message=_xml_text(prefix) + message)
        outcome = "skipped"
    extra = [f"security finding {f.kind}: {f.detail}" for f in result.findings]
    extra += [f"cluster deviation: {d}" for d in result.deviations] + [f"note: {n}" for n in result.notes]
    if extra:
        ET.SubElement(case, "system-out").text = _xml_text("\n".join(extra))
    return outcome


def write_junit(results: Sequence[CellResult], path: Path | str, matrix: Matrix | None = None) -> Path:
    target = Path(path)
    write_atomic(target, junit_xml(results, matrix))
    return target


# -- outputs and exit code ------------------------------------------------------------


def step_summary(markdown: str) -> Path | None:
    """Append to ``$GITHUB_STEP_SUMMARY`` when GitHub Actions set it; returns the file."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as summary:
        summary.write(redact(markdown).rstrip() + "\n\n")
    return path


def write_reports(
    results: Sequence[CellResult], directory: Path | str, matrix: Matrix | None = None
) -> dict[str, Path]:
    """``report.json`` (the merged list), ``report.md``, ``report.html``, ``junit.xml``."""
    out = Path(directory)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    write_atomic(paths["json"], _json_text([r.to_dict() for r in results]))
    write_atomic(paths["markdown"], markdown_report(results, matrix))
    write_atomic(paths["html"], html_report(results, matrix))
    write_junit(results, paths["junit"], matrix)
    return paths


def failing_cells(results: Sequence[CellResult], strict: bool, matrix: Matrix | None = None) -> list[CellResult]:
    """The cells that make the run fail (see ``exit_code``)."""
    failing = []
    for result in results:
        broken = result.verdict in (Verdict.FAIL, Verdict.ERROR)
        unexpectedly_unavailable = result.verdict is Verdict.IMAGE_UNAVAILABLE and not expected_unavailable(
            result, matrix
        )
        unexplained_skip = result.verdict is Verdict.SKIPPED and not result.reason  # a skip must say why
        if broken or unexpectedly_unavailable or unexplained_skip or (strict and result.findings):
            failing.append(result)
    return failing


def exit_code(results: Sequence[CellResult], strict: bool, matrix: Matrix | None = None) -> int:
    """0 when every cell passed, was skipped for a stated reason, or hit a retired image;
    1 otherwise. With ``strict`` a security finding is a failure too."""
    return 1 if failing_cells(results, strict, matrix) else 0
