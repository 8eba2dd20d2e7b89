"""What every rendering of results shares: verdict symbols and markers, the order and
grouping of cells into grids, which image-unavailable is expected (a retired registry), and
the one-line texts of a cell."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from e2e.errors import UsageError
from e2e.images import ImageReference, is_retired
from e2e.matrix import Matrix, version_key
from e2e.results import CellResult, Verdict
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
# Best first: an active registry beats a frozen copy beats one that was deleted.
_REGISTRY_RANK = {"quay.io": 0, "registry.k8s.io": 1}
_UNKNOWN_REGISTRY_RANK = 2
_RETIRED_RANK = 3

# -- ordering and grouping ------------------------------------------------------------


def release_key(version: str) -> tuple[int, tuple[int, int, int, int, str]]:
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


def result_sort_key(result: CellResult) -> tuple[Any, ...]:
    return (
        result.provider,
        _kubernetes_key(result.kubernetes_version),
        result.variant,
        release_key(result.kserve_version),
        result.proxy_alias,
    )


@dataclass(frozen=True)
class Group:
    provider: str
    kubernetes_version: str
    variant: str
    results: tuple[CellResult, ...]

    @property
    def title(self) -> str:
        # The API servers' own versions: the patch that really ran (v1.35.4), not only the minor.
        ran = unique(r.kubernetes_server for r in self.results if r.kubernetes_server.startswith("v"))
        title = f"{self.provider} · Kubernetes {self.kubernetes_version}" + (f" ({', '.join(ran)})" if ran else "")
        if not self.variant:
            return title
        # A scenario's own grid (the migration's, the rollback's) is named as the scenario.
        if all(r.scenario == self.variant for r in self.results):
            return f"{title} · {self.variant} scenario"
        return f"{title} · variant {self.variant}"

    def outside_support(self, release: str) -> CellResult | None:
        """A result of ``release`` marked outside its Kubernetes support window, if any."""
        return next((r for r in self.results if r.kserve_version == release and r.support == OUTSIDE_SUPPORT), None)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def grid_groups(results: Sequence[CellResult]) -> list[Group]:
    buckets: dict[tuple[str, str, str], list[CellResult]] = {}
    for result in results:
        buckets.setdefault((result.provider, result.kubernetes_version, result.variant), []).append(result)
    ordered = sorted(buckets, key=lambda k: (k[0], _kubernetes_key(k[1]), k[2]))
    return [Group(p, k, v, tuple(buckets[(p, k, v)])) for p, k, v in ordered]


def grid_columns(results: Sequence[CellResult], matrix: Matrix | None) -> list[str]:
    """Proxy aliases in matrix order; aliases the matrix lacks follow, newest image first."""
    present = {r.proxy_alias: r.proxy_image for r in results}
    order = [p.alias for p in matrix.proxies] if matrix else []
    known = [alias for alias in order if alias in present]
    extra = rank_images([(alias, present[alias]) for alias in present if alias not in order], matrix)
    return known + [alias for alias, _ in extra]


def grid_rows(results: Sequence[CellResult]) -> list[str]:
    return sorted({r.kserve_version for r in results}, key=release_key)


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


# -- images, registries, expectations -------------------------------------------------


def split_image(reference: str) -> tuple[str, str, str]:
    """``(name as written, tag, digest)``; tag and digest may be empty, and a field that is no
    reference (an empty one) is all name."""
    ref = ImageReference.parse_or_none(reference)
    if ref is None:
        return reference, "", ""
    return ref.written_name, ref.tag or "", ref.digest or ""


def _registry(reference: str) -> str | None:
    ref = ImageReference.parse_or_none(reference)
    return ref.domain if ref is not None else None


def proxy_retired(image: str, alias: str, matrix: Matrix | None) -> bool:
    """Whether the cell's proxy image is retired: as the matrix marks it, else by its registry."""
    if matrix is not None:
        for proxy in matrix.proxies:
            if image == proxy.image or (not image and alias == proxy.alias):
                return proxy.retired
    return is_retired(image)


def expected_unavailable(result: CellResult, matrix: Matrix | None = None) -> bool:
    """True when the cell's image could not be pulled because its registry is retired."""
    return result.verdict is Verdict.IMAGE_UNAVAILABLE and proxy_retired(result.proxy_image, result.proxy_alias, matrix)


def _image_rank(alias: str, image: str, matrix: Matrix | None) -> tuple[Any, ...]:
    """Sort key, best first: newest kube-rbac-proxy, then the most alive registry."""
    tag = split_image(image)[1]
    try:
        newest_first: tuple[Any, ...] = (0, tuple(-part for part in version_key(tag)[:4]), tag)
    except UsageError:  # "latest" or a digest: nothing to rank by, so last
        newest_first = (1, (), tag)
    if proxy_retired(image, alias, matrix):
        registry_rank = _RETIRED_RANK
    else:
        registry_rank = _REGISTRY_RANK.get(_registry(image) or "", _UNKNOWN_REGISTRY_RANK)
    return (newest_first, registry_rank, alias)


def rank_images(pairs: Iterable[tuple[str, str]], matrix: Matrix | None) -> list[tuple[str, str]]:
    return sorted(pairs, key=lambda pair: _image_rank(pair[0], pair[1], matrix))


# -- text helpers ---------------------------------------------------------------------


def md_text(text: str) -> str:
    """Free text for Markdown: no table breaks, and ``<redacted>`` must not read as HTML."""
    return re.sub(r"([\\`*<>|\[\]])", r"\\\1", one_line(text))


def md_code(text: str) -> str:
    flat = one_line(text)
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _markers(result: CellResult) -> str:
    return " ".join(unique(SECURITY_MARKERS.get(f.kind, OTHER_FINDING_MARKER) for f in result.findings))


def cell_symbol(result: CellResult | None) -> str:
    """What a grid cell shows: the verdict's symbol, then any security markers."""
    if result is None:
        return NOT_RUN
    markers = _markers(result)
    symbol = VERDICT_SYMBOLS[result.verdict]
    return f"{symbol} {markers}" if markers else symbol


def why(result: CellResult) -> tuple[str, str]:
    """(check name, one-line detail) that explains a cell that did not pass."""
    failing = result.failing_check
    if failing is not None:
        return failing.name, failing.detail or result.reason
    return "", result.reason or "no reason recorded"


def summary_counts(results: Sequence[CellResult]) -> str:
    counts = [
        f"{sum(r.verdict is verdict for r in results)} {verdict.value}"
        for verdict in Verdict
        if any(r.verdict is verdict for r in results)
    ]
    leaking = sum(bool(r.findings) for r in results)
    line = f"{len(results)} cells: " + ", ".join(counts)
    return line + f"; {leaking} with security findings" if leaking else line


def legend_items() -> list[tuple[str, str]]:
    items = [(VERDICT_SYMBOLS[v], VERDICT_MEANINGS[v]) for v in Verdict]
    items.append((NOT_RUN, "not run"))
    items.extend(SECURITY_MEANINGS.items())
    return items
