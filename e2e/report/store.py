"""Results on disk: one JSON file per cell (``save_result``), merged back from CI shards
(``load_results``), every file written atomically and readable by the user's group."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from e2e.atomic_write import write_atomic
from e2e.errors import UsageError
from e2e.report.grid import result_sort_key
from e2e.results import CellResult
from e2e.secrets import redact

# -- JSON: one file per cell, merged lists --------------------------------------------


def save_result(result: CellResult, directory: Path | str) -> Path:
    """Write ``<cell_id>.json`` into ``directory`` atomically (readers never see half a file)."""
    if not result.cell_id or result.cell_id.startswith(".") or any(sep in result.cell_id for sep in "/\\"):
        raise UsageError(f"cell id {result.cell_id!r}: expected a file name (no path separators, no leading dot)")
    target = Path(directory) / f"{result.cell_id}.json"
    write_report_file(target, json_text(result.to_dict()))
    return target


def load_results(paths: Iterable[Path | str]) -> list[CellResult]:
    """Read result files and directories (every result JSON below them) into one list.

    A file holds one cell (as ``save_result`` writes it) or a list of cells (``report.json``).
    Directories are read recursively, since CI lays each group's results out as
    ``reports/<group>/``; JSON below them that is not a result (e.g. ``kind export logs``'
    ``inspect.json``) is passed over. The same cell id on the same provider is one cell: a
    later one replaces an earlier one only when it started later, so the order of CI shards
    does not matter.
    """
    merged: dict[tuple[str, str], CellResult] = {}
    for file, named in _result_files(paths):
        for result in _read_result_file(file, named=named):
            key = (result.provider, result.cell_id)
            kept = merged.get(key)
            if kept is None or result.started_at > kept.started_at:
                merged[key] = result
    if not merged:
        names = ", ".join(str(p) for p in paths) or "(no paths)"
        raise UsageError(f"{names}: no result JSON files found (expected <cell id>.json from an e2e run)")
    return sorted(merged.values(), key=result_sort_key)


def _result_files(paths: Iterable[Path | str]) -> list[tuple[Path, bool]]:
    """(file, named by the user) for each given file and each ``*.json`` below a given directory."""
    files: list[tuple[Path, bool]] = []
    for path in (Path(p) for p in paths):
        if path.is_dir():
            found = (p for p in path.rglob("*.json") if p.is_file() and not p.name.startswith("."))
            files.extend((p, False) for p in sorted(found))
        elif path.is_file():
            files.append((path, True))
        else:
            raise UsageError(f"{path}: no such file or directory (expected result JSON files or a directory of them)")
    return files


def _read_result_file(path: Path, named: bool = True) -> list[CellResult]:
    """The results in ``path``; valid JSON found in a directory that is no result gives none."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # Results are written atomically, so a broken JSON file is worth stopping for.
        where = f" line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise UsageError(f"result file {path}{where}: not valid JSON") from None
    except OSError as exc:
        raise UsageError(f"result file {path}: cannot be read ({exc.strerror})") from None
    items = raw if isinstance(raw, list) else [raw]
    looks_like_results = all(isinstance(item, dict) and "cell_id" in item for item in items)
    if not looks_like_results:
        if not named:
            return []
        raise UsageError(f"result file {path}: expected a cell result object (with cell_id) or a list of them")
    results = []
    for item in items:
        try:
            results.append(CellResult.from_dict(item))
        except (TypeError, ValueError, KeyError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            cell = item.get("cell_id")
            raise UsageError(f"result file {path}: cell {cell!r} is not a valid result ({reason})") from None
    return results


def json_text(data: Any) -> str:
    return json.dumps(_redacted(data), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


REPORT_FILE_MODE = 0o644


def write_report_file(target: Path, text: str) -> None:
    """A report file, written atomically and durably. Readable by the user's group and CI
    viewers (``mkstemp`` alone would make it 0600): it holds no token, everything written
    here is redacted."""
    write_atomic(target, text, mode=REPORT_FILE_MODE, durable=True)
