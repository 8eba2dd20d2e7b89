"""Writing a file so that a reader sees the old content or the new, never half of it.

The data goes to a temporary file beside the target (``mkstemp``: two writers never share
one), then is renamed over it; on any failure, Ctrl-C included, the temporary file is
removed. Every file the harness rewrites in place goes through here: the manifest lock and
parse cache, release downloads' pins, the proxy flag contracts, build records, reports.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(target: Path | str, data: bytes | str, *, mode: int | None = None, durable: bool = False) -> Path:
    """Replace ``target`` with ``data`` (text is written as UTF-8).

    ``mode``: the file's permissions (``mkstemp`` makes it 0600); ``durable``: flushed to
    disk before the rename, for a file that must survive a crash right after (a report)."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        if mode is not None:
            os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
