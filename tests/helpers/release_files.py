"""Release manifests for the tests, obtained only through the harness's own resolver.

``e2e.manifests.ReleaseFiles.from_environment`` decides where a file comes from, exactly as
it does for a run: the offline directory ``KSERVE_COMPAT_MANIFEST_DIR`` (``.ci/run`` points it
at ``../shared/fixtures``), else the cache, else a download of the release asset. When none
of them has the file, the test that needs it skips locally and fails with ``CI=true``
(``e2e.availability.unavailable``), in one line that names ``KSERVE_COMPAT_MANIFEST_DIR``.

Nothing here reads a manifest at import time, so a checkout without manifests still
collects; parametrize lists use ``MIRRORED_KSERVE_VERSIONS``, a constant.

The session's resolver is built once, from the environment the session started with (some
tests later sandbox ``HOME`` and the cache), by the autouse fixture in ``conftest.py``. It
checks every file against the repository's lock file, but records new pins in a copy of it:
a test run never edits the checkout.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NoReturn

from e2e.availability import unavailable
from e2e.errors import ManifestError
from e2e.manifests import (
    DEFAULT_LOCK_FILE,
    ENV_MANIFEST_DIR,
    DownloadFailed,
    ManifestLock,
    ReleaseFile,
    ReleaseFiles,
    kserve_file,
)

# The KServe versions the project's offline directory (../shared/fixtures) mirrors, as its
# README lists them. Tests parametrized over "every mirrored release" use this list, so that
# collecting them needs no directory; each case then asks the resolver for its file.
MIRRORED_KSERVE_VERSIONS = (
    "v0.10.1",
    "v0.12.1",
    "v0.13.0-rc0",
    "v0.14.0",
    "v0.15.2",
    "v0.16.0",
    "v0.18.0",
    "v0.20.0",
)

HOW_TO_PROVIDE = (
    f"set {ENV_MANIFEST_DIR} to a directory of release manifests laid out as "
    "<project>/<version>/<file> (.ci/run uses ../shared/fixtures)"
)


class SessionReleaseFiles(ReleaseFiles):
    """``ReleaseFiles`` whose unobtainable files skip the test (fail it in CI) instead of raising.

    A lock mismatch is not "unobtainable": it still raises, so a changed file fails the test.
    After one failed download, later files that would need a download are not tried again:
    the network is the same for the whole session, and each attempt retries with backoff.
    """

    download_failure: str | None = None

    def read(self, ref: ReleaseFile) -> bytes:
        needs_download = self.offline_dir is None and not (self.cache_dir / ref.key).is_file()
        if needs_download and self.download_failure is not None:
            self._unavailable(f"{ref.label}: not tried, an earlier download failed ({self.download_failure})")
        try:
            return super().read(ref)
        except DownloadFailed as exc:
            self.download_failure = reason = str(exc)
        except ManifestError as exc:  # not in the offline directory, no such directory, HTTP 404
            reason = str(exc)
        self._unavailable(reason)  # outside the handler: one line, no chained exception

    def path(self, ref: ReleaseFile) -> Path:
        """A file on disk with ``ref``'s verified content: in the offline directory or the cache."""
        self.read(ref)
        root = self.offline_dir if self.offline_dir is not None else self.cache_dir
        return root / ref.key

    def kserve_path(self, version: str, name: str = "kserve.yaml") -> Path:
        return self.path(kserve_file(version, name))

    def materialize(self, refs: Iterable[ReleaseFile], into: Path) -> Path:
        """Copy ``refs`` into ``into`` in the offline directory's layout; returns ``into``."""
        for ref in refs:
            target = into / ref.key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path(ref), target)
        return into

    def offline_directory(self) -> Path:
        """The offline directory, for tests that hand a whole directory to a command."""
        if self.offline_dir is None:
            self._unavailable(f"this test hands a command an offline manifest directory; {ENV_MANIFEST_DIR} is unset")
        if not self.offline_dir.is_dir():
            self._unavailable(f"offline manifest directory {self.offline_dir} ({ENV_MANIFEST_DIR}): not a directory")
        return self.offline_dir

    def _unavailable(self, reason: str) -> NoReturn:
        unavailable(f"release manifest unavailable: {reason}; {HOW_TO_PROVIDE}")


_session: SessionReleaseFiles | None = None


def start_session(lock_copy: Path, environ: Mapping[str, str] | None = None) -> SessionReleaseFiles:
    """Build the session's resolver from ``environ`` (default: the process environment)."""
    global _session
    if DEFAULT_LOCK_FILE.is_file():
        lock_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEFAULT_LOCK_FILE, lock_copy)
    files = SessionReleaseFiles.from_environment(
        environ=os.environ if environ is None else environ, lock=ManifestLock(lock_copy)
    )
    assert isinstance(files, SessionReleaseFiles)
    _session = files
    return files


def session_release_files() -> SessionReleaseFiles:
    """The session's resolver, for helper functions that are not fixtures."""
    if _session is None:
        raise RuntimeError("tests/conftest.py's release_files fixture has not started the session")
    return _session
