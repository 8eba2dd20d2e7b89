"""The report as a table, Markdown or JSON."""

from __future__ import annotations

import json
from typing import Any

from e2e.audit import AuditedImage
from e2e.preflight.model import (
    LIVE_SOURCE,
    PLANNED_SOURCE,
    PreflightReport,
    Status,
)
from e2e.secrets import redact


def _where(image: AuditedImage) -> str:
    live = [use for use in image.uses if use.source == LIVE_SOURCE] or image.uses
    first = live[0]
    obj = "/".join(part for part in (first.namespace, first.name) if part)
    text = f"{first.kind} {obj}" + (f" container {first.container}" if first.container else "")
    if first.source == PLANNED_SOURCE:
        text = f"planned: {text}"
    return text if len(live) == 1 else f"{text} (+{len(live) - 1} more)"


def _availability(image: AuditedImage) -> str:
    if image.invalid is not None:
        return "invalid reference"
    found = image.availability
    if found is None:
        return "-"
    text = str(found.status)
    if found.probed and image.reference and found.probed != image.reference.format():
        text += f" via {found.probed}"
    return text


def _image_rows(report: PreflightReport) -> list[list[str]]:
    return [
        [
            image.image,
            report.role(image),
            image.pin,
            "retired" if image.retirement else "ok",
            _availability(image),
            _where(image),
        ]
        for image in report.images.images
        if report.in_use(image) or image.image == report.target
    ]


IMAGE_HEADER = ["IMAGE", "ROLE", "PIN", "REGISTRY", "AVAILABILITY", "WHERE"]
CHECK_HEADER = ["CHECK", "RESULT", "DETAIL"]


def _summary_lines(report: PreflightReport) -> list[tuple[str, str]]:
    scope = "all namespaces" if report.all_namespaces else f"namespace {report.namespace}"
    mode = "wrote temporary objects (--check-metrics), removed" if report.wrote else "read-only"
    return [
        ("cluster", f"{report.server} (context {report.context}), images from {scope}, {mode}"),
        ("kserve", report.version.describe()),
        (
            "proxy",
            f"{report.proxy.image or '(no container ' + report.proxy.container + ')'} "
            f"(Deployment {report.proxy.deployment}, ServiceAccount {report.proxy.service_account})",
        ),
        ("target", f"{report.target} ({report.target_source})" if report.target else report.target_source),
    ]


def _verdict_line(report: PreflightReport) -> str:
    if not report.failed:
        return "verdict: GO"
    return f"verdict: NO-GO (exit {report.exit_code})"


def _reasons(report: PreflightReport) -> list[str]:
    lines = []
    for check in report.checks:
        if check.status in (Status.FAIL, Status.WARN):
            lines.append(f"{check.name} ({check.status}): {check.detail}")
            lines += [f"    {line}" for line in check.evidence]
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def render_table(report: PreflightReport) -> str:
    lines = [f"{key:<8} {value}" for key, value in _summary_lines(report)]
    lines += ["", *_table(IMAGE_HEADER, _image_rows(report))]
    lines += ["", *_table(CHECK_HEADER, [[c.name, str(c.status), c.detail] for c in report.checks])]
    if report.metrics:
        lines += ["", *_table(CHECK_HEADER, [[r.name, str(r.status), r.detail] for r in report.metrics])]
    reasons = _reasons(report)
    if reasons:
        lines += ["", "reasons:", *(f"  {line}" for line in reasons)]
    lines += [*(f"cleanup: {p}" for p in report.cleanup_problems), "", _verdict_line(report)]
    return redact("\n".join(lines) + "\n")


def _markdown_table(header: list[str], rows: list[list[str]], code_first: bool = False) -> list[str]:
    lines = ["| " + " | ".join(h.capitalize() for h in header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [f"`{row[0]}`" if code_first else row[0], *row[1:]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def render_markdown(report: PreflightReport) -> str:
    lines = [f"- **{key}**: {value}" for key, value in _summary_lines(report)]
    lines += ["", *_markdown_table(IMAGE_HEADER, _image_rows(report), code_first=True)]
    lines += ["", *_markdown_table(CHECK_HEADER, [[c.name, str(c.status), c.detail] for c in report.checks])]
    if report.metrics:
        lines += ["", *_markdown_table(CHECK_HEADER, [[r.name, str(r.status), r.detail] for r in report.metrics])]
    reasons = _reasons(report)
    if reasons:
        # Evidence lines (indented in the table form) become nested bullets.
        lines += ["", *(f"  - {line.strip()}" if line.startswith(" ") else f"- {line}" for line in reasons)]
    lines += ["", f"**{_verdict_line(report)}**"]
    return redact("\n".join(lines) + "\n")


def render_json(report: PreflightReport) -> str:
    relevant = {row[0] for row in _image_rows(report)}
    document = {
        "verdict": report.verdict,
        "exit_code": report.exit_code,
        "cluster": {"server": report.server, "context": report.context},
        "namespace": report.namespace,
        "all_namespaces": report.all_namespaces,
        "kserve": {
            "version": report.version.version,
            "found_by": report.version.how,
            "matrix_release": report.version.release.version if report.version.release else None,
        },
        "proxy": {
            "deployment": report.proxy.deployment,
            "container": report.proxy.container,
            "image": report.proxy.image,
            "service_account": report.proxy.service_account,
        },
        "target": {"image": report.target, "source": report.target_source},
        "images": [_image_json(report, image) for image in report.images.images if image.image in relevant],
        "checks": [check.as_json() for check in report.checks],
        "metrics_checks": [
            {"name": r.name, "status": str(r.status), "detail": r.detail, "evidence": r.evidence}
            for r in report.metrics
        ],
        "wrote": report.wrote,
        "cleanup_problems": report.cleanup_problems,
    }
    return redact(json.dumps(document, indent=2) + "\n")


def _image_json(report: PreflightReport, image: AuditedImage) -> dict[str, Any]:
    document = {**image.as_json(), "role": report.role(image)}
    # "source" says live or planned; a line number would point into YAML nobody sees.
    document["uses"] = [{k: v for k, v in use.items() if k != "line"} for use in document["uses"]]
    return document


RENDERERS = {"table": render_table, "json": render_json, "markdown": render_markdown}
