"""The result model: what one cell found, check by check. Rendering lives in ``report``.

A cell's compatibility ``verdict`` and its security ``findings`` are separate on purpose:
a cell can serve metrics perfectly and still leak tokens into its logs.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from e2e.secrets import redact


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    IMAGE_UNAVAILABLE = "image-unavailable"
    ERROR = "error"
    SKIPPED = "skipped"


class CheckStatus(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass
class CheckResult:
    """One check of one cell: e.g. ``metrics-no-token`` expected 401, got 401."""

    name: str
    status: CheckStatus
    detail: str = ""  # one line; redacted on the way in
    duration_s: float = 0.0
    evidence: list[str] = field(default_factory=list)  # a few lines (log tail, pod reason)

    def __post_init__(self) -> None:
        self.detail = redact(self.detail)
        self.evidence = [redact(line) for line in self.evidence]

    @property
    def passed(self) -> bool:
        return self.status is CheckStatus.PASS


@dataclass
class SecurityFinding:
    """A security problem found in a cell, e.g. a bearer token in the proxy's logs."""

    kind: str  # e.g. "token-leak"
    detail: str
    evidence: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.detail = redact(self.detail)
        self.evidence = [redact(line) for line in self.evidence]


@dataclass
class CellResult:
    cell_id: str
    provider: str
    kserve_version: str
    proxy_alias: str
    proxy_image: str
    kubernetes_version: str
    variant: str = ""
    scenario: str = ""  # the Scenario that produced this result
    verdict: Verdict = Verdict.SKIPPED
    reason: str = ""  # one line: why the verdict is what it is
    checks: list[CheckResult] = field(default_factory=list)
    findings: list[SecurityFinding] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)  # how the cluster differs from a real one
    notes: list[str] = field(default_factory=list)  # e.g. port remaps
    steps: list[str] = field(default_factory=list)  # the scenario's steps that ran, in order
    diagnostics: list[str] = field(default_factory=list)  # summary lines of the collected diagnostics
    duration_s: float = 0.0
    started_at: float = field(default_factory=time.time)
    # The release's Kubernetes window (e2e/support.py): "inside support", "outside support" or
    # "support unknown", and why. An outside cell's verdict stands; the report marks it.
    support: str = ""
    support_reason: str = ""
    kubernetes_server: str = ""  # the API server's own version (e.g. v1.35.4): what really ran
    # A migration's requests over time (e2e.checks.migration.ProbeSummary.timeline) and when
    # its swap began and ended: the report draws them.
    traffic: list[list[float]] = field(default_factory=list)
    traffic_marks: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reason = redact(self.reason)
        self.diagnostics = [redact(line) for line in self.diagnostics]

    def add(self, check: CheckResult) -> CheckResult:
        self.checks.append(check)
        return check

    @property
    def failing_check(self) -> CheckResult | None:
        return next((c for c in self.checks if c.status in (CheckStatus.FAIL, CheckStatus.ERROR)), None)

    def conclude(self) -> Verdict:
        """Derive the verdict from the checks unless one was already set explicitly."""
        if self.verdict in (Verdict.IMAGE_UNAVAILABLE, Verdict.ERROR, Verdict.FAIL) or (
            self.verdict is Verdict.SKIPPED and self.reason
        ):
            return self.verdict
        failing = self.failing_check
        if failing is not None:
            self.verdict = Verdict.ERROR if failing.status is CheckStatus.ERROR else Verdict.FAIL
            self.reason = self.reason or f"{failing.name}: {failing.detail}"
        elif self.checks:
            self.verdict = Verdict.PASS
        return self.verdict

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        for check in data["checks"]:
            check["status"] = CheckStatus(check["status"]).value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        checks = [CheckResult(**{**c, "status": CheckStatus(c["status"])}) for c in data.get("checks", [])]
        findings = [SecurityFinding(**f) for f in data.get("findings", [])]
        fields = {k: v for k, v in data.items() if k not in ("checks", "findings", "verdict")}
        return cls(**fields, verdict=Verdict(data.get("verdict", "skipped")), checks=checks, findings=findings)


@contextmanager
def timed_check(cell: CellResult, name: str) -> Iterator[CheckResult]:
    """Record a check with its duration; the body sets ``status`` and ``detail``.

    An exception in the body becomes an ``error`` check with the exception's message.
    """
    check = CheckResult(name=name, status=CheckStatus.ERROR, detail="did not complete")
    started = time.monotonic()
    try:
        yield check
    except Exception as exc:
        check.status = CheckStatus.ERROR
        check.detail = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    finally:
        check.duration_s = round(time.monotonic() - started, 3)
        check.detail = redact(check.detail)
        check.evidence = [redact(line) for line in check.evidence]
        cell.add(check)
