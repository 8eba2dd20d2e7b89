"""The Markdown report: one grid per provider, Kubernetes version and variant (or scenario
grid), what did not pass with its evidence, the proxy images, the recommendations."""

from __future__ import annotations

from collections.abc import Sequence

from e2e.matrix import Matrix
from e2e.report.grid import (
    OTHER_FINDING_MARKER,
    OUTSIDE_SUPPORT,
    OUTSIDE_SUPPORT_MARKER,
    REPORT_TITLE,
    SECURITY_MARKERS,
    VERDICT_SYMBOLS,
    Group,
    cell_symbol,
    expected_unavailable,
    grid_columns,
    grid_groups,
    grid_rows,
    legend_items,
    md_code,
    md_text,
    proxy_retired,
    summary_counts,
    unique,
    why,
)
from e2e.report.recommend import markdown_recommendations
from e2e.results import CellResult, Verdict
from e2e.secrets import redact
from e2e.text import one_line

# -- Markdown -------------------------------------------------------------------------


def markdown_grid(results: Sequence[CellResult], matrix: Matrix | None = None) -> str:
    """The grids (one per provider, Kubernetes version and variant), legend and details."""
    lines = ["**Legend:** " + " · ".join(f"{symbol} {meaning}" for symbol, meaning in legend_items()), ""]
    for group in grid_groups(results):
        lines += _markdown_group(group, matrix)
    return redact("\n".join(lines).rstrip() + "\n")


def _markdown_group(group: Group, matrix: Matrix | None) -> list[str]:
    columns = grid_columns(group.results, matrix)
    by_cell = {(r.kserve_version, r.proxy_alias): r for r in group.results}
    lines = [f"### {md_text(group.title)}", ""]
    lines.append("| KServe | " + " | ".join(md_text(c) for c in columns) + " |")
    lines.append("| --- |" + " :---: |" * len(columns))
    for release in grid_rows(group.results):
        cells = [cell_symbol(by_cell.get((release, alias))) for alias in columns]
        mark = f" {OUTSIDE_SUPPORT_MARKER}" if group.outside_support(release) else ""
        lines.append(f"| {md_text(release)}{mark} | " + " | ".join(cells) + " |")
    lines.append("")
    outside = [r for r in map(group.outside_support, grid_rows(group.results)) if r is not None]
    if outside:
        lines.append(f"{OUTSIDE_SUPPORT_MARKER} {OUTSIDE_SUPPORT}: the verdict stands; the release was not built for "
                     "this Kubernetes minor:")  # fmt: skip
        lines += [f"- {md_text(r.support_reason)}" for r in outside]
        lines.append("")
    deviations = unique(d for r in group.results for d in r.deviations)
    if deviations:
        lines += ["Cluster deviations: " + "; ".join(md_text(d) for d in deviations), ""]
    notes = unique(n for r in group.results for n in r.notes)
    if notes:
        lines += ["Notes: " + "; ".join(md_text(n) for n in notes), ""]
    # Cells that did not pass for the same reason share a line (a retired image fails every
    # release alike); each line still names every cell.
    not_passing: dict[tuple[str, str, str], list[str]] = {}
    for result in group.results:
        if result.verdict is not Verdict.PASS:
            check, detail = why(result)
            expected = " (expected: retired registry)" if expected_unavailable(result, matrix) else ""
            outcome = f"{VERDICT_SYMBOLS[result.verdict]} {result.verdict.value}{expected}"
            not_passing.setdefault((outcome, check, one_line(detail)), []).append(result.cell_id)
    if not_passing:
        lines.append("**Not passing:**")
        for (outcome, check, detail), cell_ids in not_passing.items():
            where = f"{md_code(check)}: " if check else ""
            lines.append(f"- {_md_cells(cell_ids)} {outcome} — {where}{md_code(detail)}")
        lines.append("")
    findings: dict[tuple[str, str], list[str]] = {}
    for result in group.results:
        for finding in result.findings:
            findings.setdefault((finding.kind, one_line(finding.detail)), []).append(result.cell_id)
    if findings:
        lines.append("**Security findings:**")
        for (kind, detail), cell_ids in findings.items():
            marker = SECURITY_MARKERS.get(kind, OTHER_FINDING_MARKER)
            lines.append(f"- {_md_cells(cell_ids)} {marker} {md_code(kind)}: {md_code(detail)}")
        lines.append("")
    return lines


def _md_cells(cell_ids: Sequence[str]) -> str:
    return ", ".join(md_code(cell_id) for cell_id in unique(cell_ids))


def proxy_rows(results: Sequence[CellResult], matrix: Matrix | None) -> list[tuple[str, str, str]]:
    """(alias, image, status) of every proxy image in the results."""
    seen = {r.proxy_alias: r.proxy_image for r in results}
    rows = []
    for alias in grid_columns(results, matrix):
        status = "retired" if proxy_retired(seen[alias], alias, matrix) else "served"
        if matrix is not None:
            status = next((p.status for p in matrix.proxies if p.alias == alias), status)
        rows.append((alias, seen[alias], status))
    return rows


def markdown_report(results: Sequence[CellResult], matrix: Matrix | None = None) -> str:
    """The whole Markdown report: summary, grids, proxy images, recommendations."""
    lines = ["# " + REPORT_TITLE, "", summary_counts(results), ""]
    lines.append(markdown_grid(results, matrix))
    lines += ["## Proxy images", "", "| alias | image | registry |", "| --- | --- | --- |"]
    lines += [f"| {md_text(a)} | {md_code(i)} | {md_text(s)} |" for a, i, s in proxy_rows(results, matrix)]
    lines += ["", markdown_recommendations(results, matrix)]
    return redact("\n".join(lines).rstrip() + "\n")
