"""The go/no-go report model of ``kserve-compat preflight``: exit codes, a check's line, what was found."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from e2e.audit import (
    EXIT_CLEAN,
    EXIT_RETIRED,
    EXIT_UNAVAILABLE,
    EXIT_UNCHECKED,
    EXIT_UNKNOWN_FLAG,
    AuditedImage,
    AuditReport,
)
from e2e.errors import UsageError
from e2e.matrix import (
    KServeRelease,
)
from e2e.results import CheckResult
from e2e.secrets import redact

EXIT_GO = EXIT_CLEAN
EXIT_USAGE = UsageError.exit_code
#: The swap would be rejected (dry run refused, no proxy container), the proxy's
#: ServiceAccount lacks RBAC, or ``--check-metrics`` failed.
EXIT_REJECTED = 5
#: Of several failed checks, the first code in this order is the run's (6, "could not
#: check an image", ranks below what is known to be broken and above a retired registry;
#: 7, the planned proxy args hold a flag the target version refuses, is known broken).
EXIT_RANK = (EXIT_USAGE, EXIT_REJECTED, EXIT_UNAVAILABLE, EXIT_UNKNOWN_FLAG, EXIT_UNCHECKED, EXIT_RETIRED)
#: For --help.
EXIT_CODES = (
    (EXIT_GO, "go"),
    (EXIT_USAGE, "usage error (unreachable cluster, unknown context, no KServe in the namespace)"),
    (EXIT_RETIRED, "an image in use (or the target) is on a retired registry (and nothing below)"),
    (EXIT_UNAVAILABLE, "an image is unavailable or not a valid reference (wins over 7, 6 and 3)"),
    (EXIT_REJECTED, "the swap would be rejected, the proxy lacks RBAC, or --check-metrics failed (wins over 4)"),
    (EXIT_UNCHECKED, "an image could not be checked, its registry did not answer (wins over 3)"),
    (EXIT_UNKNOWN_FLAG, "the planned proxy args hold a flag the target proxy version refuses (wins over 6 and 3)"),
)

FIELD_MANAGER = "kserve-compat-preflight"
#: Label on every object ``--check-metrics`` creates, so a leftover can be found by hand.
MANAGED_BY = ("app.kubernetes.io/managed-by", "kserve-compat-preflight")
VERSION_LABEL = "app.kubernetes.io/version"
REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds for every API call

LIVE_SOURCE = "cluster"
PLANNED_SOURCE = "planned"

# What kube-rbac-proxy's own ServiceAccount must be allowed to do (delegated authn/authz).
PROXY_PERMISSIONS: tuple[tuple[str, str, str], ...] = (
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
)


class Status(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    WARN = "warn"
    SKIPPED = "skipped"


@dataclass
class Check:
    """One line of the verdict: a failed check is a no-go reason with its exit code."""

    name: str
    status: Status
    detail: str
    exit_code: int = EXIT_GO  # what a failure of this check means
    evidence: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.detail = redact(self.detail)
        self.evidence = [redact(line) for line in self.evidence]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "exit_code": self.exit_code if self.status is Status.FAIL else EXIT_GO,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class InstalledVersion:
    version: str | None
    how: str  # "the tag of the manager image kserve/kserve-controller:v0.14.0"
    release: KServeRelease | None  # the matrix entry (or its line's defaults), if the matrix has the line

    def describe(self) -> str:
        text = f"{self.version or 'unknown'} ({self.how})"
        if self.release is not None and self.release.derived_from:
            text += f"; its line ships {self.release.proxy_image} (defaults of {self.release.derived_from})"
        elif self.release is not None:
            text += f"; the release ships {self.release.proxy_image}"
        elif self.version:
            text += "; no release line the matrix knows"
        return text


@dataclass(frozen=True)
class ProxySidecar:
    deployment: str  # namespace/name
    container: str
    image: str | None  # None: the Deployment has no such container
    service_account: str  # namespace/name


@dataclass
class PreflightReport:
    context: str
    server: str
    namespace: str
    all_namespaces: bool
    version: InstalledVersion
    proxy: ProxySidecar
    target: str | None
    target_source: str
    images: AuditReport
    checks: list[Check] = field(default_factory=list)
    metrics: list[CheckResult] = field(default_factory=list)
    wrote: list[str] = field(default_factory=list)  # what --check-metrics created (and removed)
    cleanup_problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status is Status.FAIL]

    @property
    def exit_code(self) -> int:
        codes = {check.exit_code for check in self.failed}
        return next((code for code in EXIT_RANK if code in codes), max(codes, default=EXIT_GO))

    @property
    def verdict(self) -> str:
        return "no-go" if self.failed else "go"

    def in_use(self, image: AuditedImage) -> bool:
        return any(use.source == LIVE_SOURCE for use in image.uses)

    def role(self, image: AuditedImage) -> str:
        roles = []
        if self.in_use(image):
            roles.append("in use")
        if self.target is not None and image.image == self.target:
            roles.append("target")
        return ", ".join(roles) or "planned"
