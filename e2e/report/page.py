"""The HTML report: one self-contained page (no script, no external file): the grids,
each cell linked to its checks, evidence and diagnostics, and an image change's traffic
chart."""

from __future__ import annotations

import html
from collections.abc import Sequence

from e2e.matrix import Matrix
from e2e.report.grid import (
    NOT_RUN,
    OTHER_FINDING_MARKER,
    OUTSIDE_SUPPORT,
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
    summary_counts,
    unique,
    why,
)
from e2e.report.markdown import proxy_rows
from e2e.report.recommend import RECOMMENDATIONS_INTRO, RECOMMENDATIONS_TITLE, recommendations, releases_in
from e2e.results import CellResult, Verdict
from e2e.secrets import REDACTED, redact
from e2e.text import one_line

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
    body = [f"<h1>{_h(heading)}</h1>", f"<p>{_h(summary_counts(results))}</p>"]
    body.append(
        '<p class="legend">'
        + "".join(f"<span>{_h(symbol)} {_h(meaning)}</span>" for symbol, meaning in legend_items())
        + "</p>"
    )
    for group in grid_groups(results):
        body += _html_group(group, matrix)
    body += ["<h2>Proxy images</h2>", "<table><tr><th>alias</th><th>image</th><th>registry</th></tr>"]
    body += [
        f"<tr><td>{_h(a)}</td><td><code>{_h(i)}</code></td><td>{_h(s)}</td></tr>"
        for a, i, s in proxy_rows(results, matrix)
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


def _html_group(group: Group, matrix: Matrix | None) -> list[str]:
    columns = grid_columns(group.results, matrix)
    by_cell = {(r.kserve_version, r.proxy_alias): r for r in group.results}
    out = [f'<h2 id="{_h(group.slug)}">{_h(group.title)}</h2>', "<table>"]
    out.append("<tr><th>KServe</th>" + "".join(f"<th>{_h(c)}</th>" for c in columns) + "</tr>")
    for release in grid_rows(group.results):
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
    outside_results = [r for r in map(group.outside_support, grid_rows(group.results)) if r is not None]
    if outside_results:
        out.append(
            f"<p>{_h(OUTSIDE_SUPPORT)} (the verdict stands; the release was not built for this Kubernetes minor): "
            + "; ".join(_h(r.support_reason) for r in outside_results)
            + "</p>"
        )
    deviations = unique(d for r in group.results for d in r.deviations)
    if deviations:
        out.append("<p>Cluster deviations: " + "; ".join(_h(d) for d in deviations) + "</p>")
    notes = unique(n for r in group.results for n in r.notes)
    if notes:
        out.append("<p>Notes: " + "; ".join(_h(n) for n in notes) + "</p>")
    not_passing = [r for r in group.results if r.verdict is not Verdict.PASS]
    if not_passing:
        out.append("<h3>Not passing</h3><ul>")
        for result in not_passing:
            check, detail = why(result)
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
        f"{_h(result.verdict.value + expected)}"
        + (f" — {_h(one_line(result.reason))}" if result.reason else "")
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
    for release in releases_in(results):
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
