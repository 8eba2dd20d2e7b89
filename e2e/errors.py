"""The harness's error model.

Every error a user can cause or meet is a ``HarnessError``: its message is one line that
names the input and what was expected. The CLI and the pytest plugin print that line
(no traceback unless ``--debug``) and exit with ``exit_code``.
"""

from __future__ import annotations


class HarnessError(Exception):
    """An expected failure with a one-line, user-facing message."""

    exit_code = 1


class UsageError(HarnessError):
    """Bad input from the user: an unknown version, a malformed file, a bad option."""

    exit_code = 2


class ManifestError(UsageError):
    """A release manifest is missing, malformed, or lacks what the profile names."""


class NotInOfflineDirectory(ManifestError):
    """The offline manifest directory has no copy of the requested release file."""


class LockMismatch(HarnessError):
    """A downloaded file's sha256 differs from the digest recorded in the lock file."""


class ImageReferenceError(UsageError):
    """A container image reference does not parse."""


class EnvironmentMissing(HarnessError):
    """A tool the run needs (docker, go, a built binary) is not available."""

    exit_code = 2


class WorkloadUnavailable(HarnessError):
    """A container cannot run on this provider (e.g. no local binary for that proxy version)."""


class WorkloadFailed(HarnessError):
    """A container the provider runs exited; ``evidence`` has its exit code and last lines."""

    def __init__(self, message: str, evidence: list[str]) -> None:
        super().__init__(message)
        self.evidence = evidence
