"""Multi-document YAML as the harness reads it: the C loader, and a cache of large texts' documents as
JSON (an install parses a 1-3 MB release manifest once per cluster group)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml

from e2e.atomic_write import write_atomic
from e2e.cache import cache_root
from e2e.manifests.lock import sha256_hex

# The C loader parses the 3.5 MB v0.16 manifest in about a second; the pure-Python one
# takes many times that. Both give the same documents.
YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Even the C loader spends 0.1-0.5 s of CPU on a 1-3 MB release manifest (the Python
# constructors do most of the work), once per cluster group, on the thread that prepares the
# next group while cells run; JSON loads the same documents twenty times faster. So an
# install keeps a large text's documents as JSON in the cache, named by the text's SHA-256;
# every reader uses them, and only an install writes them (a --plan writes nothing).
PARSED_CACHE_MIN_BYTES = 64 * 1024


def parsed_cache_dir() -> Path:
    return cache_root() / "parsed-yaml"


def yaml_documents(text: str, *, remember: bool = False) -> list[Any]:
    """Every document of a multi-document YAML text (``None`` for an empty one), read from
    the cache when a large text was parsed before; ``remember`` keeps a new parse there.
    Raises ``yaml.YAMLError`` on invalid YAML."""
    if len(text) < PARSED_CACHE_MIN_BYTES:
        return list(yaml.load_all(text, Loader=YAML_LOADER))
    cached = parsed_cache_dir() / f"{sha256_hex(text.encode())}.json"
    try:
        return list(json.loads(cached.read_bytes()))
    except (OSError, ValueError):  # not there yet, or unreadable: parse the YAML again
        pass
    documents = list(yaml.load_all(text, Loader=YAML_LOADER))
    if not remember:
        return documents
    try:
        as_json = json.dumps(documents)
    except (TypeError, ValueError):  # e.g. a YAML timestamp: JSON cannot hold it as parsed
        return documents
    if json.loads(as_json) == documents:  # e.g. integer keys would come back as strings
        with contextlib.suppress(OSError):  # a read-only cache only costs the next parse
            write_atomic(cached, as_json.encode())
    return documents


def load_yaml_documents(text: str, *, remember: bool = False) -> list[dict[str, Any]]:
    """The non-empty documents of a multi-document YAML text (see ``yaml_documents``)."""
    return [document for document in yaml_documents(text, remember=remember) if document]
