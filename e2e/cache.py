"""Where the harness keeps what it builds and downloads, outside the repository.

``$KSERVE_COMPAT_CACHE`` when set, else ``$XDG_CACHE_HOME/kserve-compat``, else
``~/.cache/kserve-compat``. Below it: ``bin/`` (built and downloaded tools), ``manifests/``
(release files), ``venvs/`` (the local model server's virtualenv).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_CACHE = "KSERVE_COMPAT_CACHE"


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The harness's cache directory (see the module docstring for the order it is looked up in)."""
    env = os.environ if environ is None else environ
    configured = env.get(ENV_CACHE)
    if configured:
        return Path(configured).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kserve-compat"
