"""What one ``kserve-compat migrate`` did: its steps, what the probes saw, how it ended; as JSON and Markdown."""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.checks.migration import ProbeSummary, TargetTally
from e2e.report import write_report_file
from e2e.secrets import redact


class Outcome(enum.StrEnum):
    MIGRATED = "migrated"  # the new Deployment rolled out; metrics (and models) answer
    UNCHANGED = "unchanged"  # the proxy already runs the target image
    DRY_RUN = "dry-run"  # --dry-run: every step printed, nothing written
    REFUSED = "refused"  # the preflight said no-go for this change (no --force)
    NOT_APPLIED = "not-applied"  # a tool (Helm, kustomize, a GitOps controller) owns the Deployment
    ROLLED_BACK = "rolled-back"  # a check failed: the recorded Deployment is back
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: rolled back if anything had been applied
    ROLLBACK_FAILED = "rollback-failed"  # the restore itself failed: see the report
    ABORTED = "aborted"  # a step before the patch failed (RBAC for the probe, a port-forward): nothing applied


#: The exit code of each outcome; REFUSED exits with the preflight's own code (3-7).
EXIT_MIGRATED = 0
EXIT_NOT_APPLIED = 8
EXIT_ROLLED_BACK = 9
EXIT_ROLLBACK_FAILED = 10
EXIT_ABORTED = 11
EXIT_INTERRUPTED = 130
OUTCOME_EXIT = {
    Outcome.MIGRATED: EXIT_MIGRATED,
    Outcome.UNCHANGED: EXIT_MIGRATED,
    Outcome.DRY_RUN: EXIT_MIGRATED,
    Outcome.NOT_APPLIED: EXIT_NOT_APPLIED,
    Outcome.ROLLED_BACK: EXIT_ROLLED_BACK,
    Outcome.INTERRUPTED: EXIT_INTERRUPTED,
    Outcome.ROLLBACK_FAILED: EXIT_ROLLBACK_FAILED,
    Outcome.ABORTED: EXIT_ABORTED,
}


@dataclass
class Step:
    """One named step, as narrated while it ran."""

    name: str
    status: str  # "ok", "failed", "skipped", "planned"
    detail: str
    at_s: float  # seconds since the command started
    duration_s: float = 0.0
    evidence: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": redact(self.detail),
            "at_s": round(self.at_s, 1),
            "duration_s": round(self.duration_s, 1),
            "evidence": [redact(line) for line in self.evidence],
        }


@dataclass
class MigrationReport:
    context: str = ""
    server: str = ""
    deployment: str = ""  # namespace/name
    container: str = ""
    kserve_version: str = ""
    from_image: str = ""
    to_image: str = ""
    target_source: str = ""
    preflight_verdict: str = ""
    preflight_checks: list[dict[str, Any]] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    managed_by: str = ""
    patch: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    probe: ProbeSummary | None = None
    probe_note: str = ""  # e.g. metrics unreachable before the migration (the outage it fixes)
    outcome: Outcome = Outcome.DRY_RUN
    exit_code: int = EXIT_MIGRATED
    reason: str = ""
    ends_on: str = ""  # which Deployment the cluster runs at the end, read back from the API
    started: float = field(default_factory=time.time)
    files: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.time() - self.started

    def end(self, outcome: Outcome, reason: str, exit_code: int | None = None) -> None:
        self.outcome = outcome
        self.reason = reason
        self.exit_code = OUTCOME_EXIT[outcome] if exit_code is None else exit_code

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "exit_code": self.exit_code,
            "reason": redact(self.reason),
            "ends_on": self.ends_on,
            "cluster": {"context": self.context, "server": self.server},
            "deployment": self.deployment,
            "container": self.container,
            "kserve_version": self.kserve_version,
            "from_image": self.from_image,
            "to_image": self.to_image,
            "target_source": self.target_source,
            "preflight": {"verdict": self.preflight_verdict, "checks": self.preflight_checks},
            "blockers": [redact(line) for line in self.blockers],
            "managed_by": self.managed_by,
            "patch": self.patch,
            "steps": [step.as_json() for step in self.steps],
            "probe": _probe_json(self.probe, self.probe_note),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "duration_s": round(self.elapsed(), 1),
        }


def _tally_json(tally: TargetTally, summary: ProbeSummary) -> dict[str, Any]:
    return {
        "name": tally.name,
        "attempts": tally.attempts,
        "successes": tally.successes,
        "failures": tally.failures,
        "outage_s": round(summary.outage_s(tally), 1),
        "first_failure_s": tally.first_failure_s,
        "recovered_s": tally.recovered_s,
        "answering_at_end": tally.last_ok,
        "last_error": redact(tally.last_error),
    }


def _probe_json(summary: ProbeSummary | None, note: str) -> dict[str, Any] | None:
    if summary is None:
        return {"note": note} if note else None
    return {
        "duration_s": summary.duration_s,
        "metrics": _tally_json(summary.metrics, summary),
        "inference": [_tally_json(t, summary) for t in summary.inference],
        "note": note,
        # [bucket start s, metrics ok, metrics failed, inference ok, inference failed]
        "timeline": summary.timeline,
        "marks": summary.marks,
    }


def render_json(report: MigrationReport) -> str:
    return json.dumps(report.as_json(), indent=2, sort_keys=False) + "\n"


def _cell(text: str) -> str:
    return redact(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: MigrationReport) -> str:
    lines = [
        f"# kserve-compat migrate: {report.outcome}",
        "",
        f"**{_cell(report.reason)}**",
        "",
        "| | |",
        "|---|---|",
        f"| cluster | context `{report.context}`, {report.server} |",
        f"| Deployment | `{report.deployment}`, container `{report.container}` (KServe {report.kserve_version}) |",
        f"| from | `{report.from_image}` |",
        f"| to | `{report.to_image}` ({_cell(report.target_source)}) |",
        f"| preflight | {report.preflight_verdict or '-'} |",
        f"| managed by | {_cell(report.managed_by) or 'nothing found (no Helm, kustomize or GitOps marks)'} |",
        f"| ends on | {_cell(report.ends_on) or '-'} |",
        f"| took | {report.elapsed():.1f} s |",
        "",
    ]
    if report.blockers:
        lines += ["## Why not", "", *[f"- {_cell(line)}" for line in report.blockers], ""]
    lines += ["## Steps", "", "| at | step | status | what happened |", "|---:|---|---|---|"]
    for step in report.steps:
        took = f" ({step.duration_s:.1f} s)" if step.duration_s else ""
        lines.append(f"| {step.at_s:.1f} s | {step.name} | {step.status} | {_cell(step.detail)}{took} |")
    lines.append("")
    for step in report.steps:
        if step.evidence:
            lines += [f"Evidence of **{step.name}**:", "", "```", *[redact(e) for e in step.evidence[:20]], "```", ""]
    probe = _probe_json(report.probe, report.probe_note)
    if probe is not None:
        lines += ["## What the probes saw", ""]
        if probe.get("note"):
            lines += [_cell(str(probe["note"])), ""]
        if report.probe is not None:
            lines += ["| target | ok / asked | failed | outage | answering at the end |", "|---|---:|---:|---:|---|"]
            for tally in [probe["metrics"], *probe["inference"]]:
                at_end = "yes" if tally["answering_at_end"] else f"no: {_cell(tally['last_error'])}"
                lines.append(
                    f"| {tally['name']} | {tally['successes']} / {tally['attempts']} | {tally['failures']} | "
                    f"{tally['outage_s']:.1f} s | {at_end} |"
                )
            lines.append("")
    if report.patch:
        lines += ["## The change", "", "```json", json.dumps(report.patch, indent=2), "```", ""]
    return "\n".join(lines)


def write(report: MigrationReport, directory: Path) -> list[Path]:
    """``migration.json`` and ``migration.md`` in ``directory`` (readable by the user's group:
    nothing in them is secret, and every string is redacted anyway)."""
    written = []
    for name, text in (("migration.json", render_json(report)), ("migration.md", render_markdown(report))):
        path = directory / name
        write_report_file(path, text)
        written.append(path)
    return written
