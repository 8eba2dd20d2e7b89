"""JUnit XML: a test case per cell, its checks as properties; an expected
``image-unavailable`` is ``skipped``, a failure carries its evidence."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from e2e.matrix import Matrix
from e2e.report.grid import Group, expected_unavailable, grid_groups, why
from e2e.report.store import write_report_file
from e2e.results import CellResult, Verdict
from e2e.secrets import redact
from e2e.text import one_line

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

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
    for group in grid_groups(results):
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


def _junit_case(suite: ET.Element, group: Group, result: CellResult, matrix: Matrix | None) -> str:
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
    check, detail = why(result)
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
    write_report_file(target, junit_xml(results, matrix))
    return target
