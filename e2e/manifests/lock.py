"""Pinning (``ManifestLock``): ``e2e/data/release-manifests.lock.json`` maps
``<project>/<version>/<file>`` to a sha256; every read is checked against its pin."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from e2e.atomic_write import write_atomic
from e2e.data import LOCK_FILE
from e2e.errors import (
    LockMismatch,
    UsageError,
)
from e2e.manifests.release_file import ReleaseFile

log = logging.getLogger(__name__)

DEFAULT_LOCK_FILE = LOCK_FILE


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ManifestLock:
    """The sha256 pins of release files, kept in the repository so reviews see changes.

    The file is a flat JSON object ``{"kserve/v0.14.0/kserve.yaml": "<sha256>", ...}``,
    written sorted and indented so that a new pin is a one-line diff.
    """

    def __init__(self, path: Path = DEFAULT_LOCK_FILE) -> None:
        self.path = Path(path)
        self._write_lock = threading.Lock()

    def digests(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"lock file {self.path}: not readable JSON ({exc})") from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise UsageError(f"lock file {self.path}: expected a JSON object of file -> sha256")
        return raw

    def expected(self, ref: ReleaseFile) -> str | None:
        return self.digests().get(ref.key)

    def verify(self, ref: ReleaseFile, data: bytes, where: str) -> bool:
        """Raise ``LockMismatch`` if ``data`` differs from the pin; False if there is no pin."""
        expected = self.expected(ref)
        if expected is None:
            return False
        actual = sha256_hex(data)
        if actual != expected:
            raise LockMismatch(
                f"{ref.key} from {where}: sha256 {actual}, expected {expected} (recorded in {self.path})"
            )
        return True

    def record(self, ref: ReleaseFile, digest: str) -> None:
        """Pin ``ref`` to ``digest`` (read, merge, atomic rewrite: other pins are kept)."""
        with self._write_lock:
            digests = self.digests()
            if digests.get(ref.key) == digest:
                return
            digests[ref.key] = digest
            try:
                self.save(digests)
            except OSError as exc:
                # A read-only checkout can still run; it just cannot pin new files.
                log.warning("could not pin %s in %s: %s", ref.key, self.path, exc)
                return
        log.info("pinned %s to sha256 %s in %s", ref.key, digest, self.path)

    def save(self, digests: Mapping[str, str] | None = None) -> None:
        """Write the lock file atomically (``digests`` default: what it holds now)."""
        content = json.dumps(dict(sorted((digests or self.digests()).items())), indent=2) + "\n"
        write_atomic(self.path, content.encode())
