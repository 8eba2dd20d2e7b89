"""``nox -s bench``: wall time of the local matrix, shared control planes vs one per cell.

Runs the fresh-install scenario twice as subprocesses (``pytest scenarios --provider
local``): once as the harness normally runs (one control plane per KServe release, the
proxy swapped in place between cells), once in the naive mode (``--cluster-per-cell``).
Prints seconds, seconds per cell and the ratio, and writes them to
``reports/bench/bench.json``. Figures, never assertions: the README quotes them. A run
whose cells did not all pass (or that ran none, or whose pytest failed) timed something
else than the matrix, e.g. downloads failing: then no figure is printed or written, one
line says why, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Verdicts of cells that did no timed work: skipped, or a retired image judged from the
# matrix without starting anything. Every other cell must pass for the figures to count.
NOT_TIMED = frozenset({"skipped", "image-unavailable"})


def run_matrix(extra: list[str], reports_dir: Path) -> dict[str, Any]:
    """One timed pytest run of the local matrix; returns seconds and cell counts."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "scenarios/test_fresh_install.py",
        "--provider",
        "local",
        "--reports-dir",
        str(reports_dir),
        "-q",
        "-p",
        "no:cacheprovider",
        *extra,
    ]
    started = time.monotonic()
    completed = subprocess.run(command, check=False)
    seconds = time.monotonic() - started
    cells = json.loads((reports_dir / "report.json").read_text()) if (reports_dir / "report.json").exists() else []
    verdicts: dict[str, int] = {}
    for cell in cells:
        verdicts[cell["verdict"]] = verdicts.get(cell["verdict"], 0) + 1
    ran = sum(n for v, n in verdicts.items() if v not in NOT_TIMED)
    return {
        "seconds": round(seconds, 1),
        "cells": len(cells),
        "cells_run": ran,
        "seconds_per_cell": round(seconds / ran, 2) if ran else None,
        "verdicts": verdicts,
        "pytest_exit": completed.returncode,
    }


def why_no_figures(figures: dict[str, Any]) -> str | None:
    """Why a timed run's figures do not measure the matrix, or None when they do."""
    verdicts = figures["verdicts"]
    failed = {v: n for v, n in verdicts.items() if v != "pass" and v not in NOT_TIMED}
    if failed:
        listed = ", ".join(f"{n} {v}" for v, n in sorted(failed.items()))
        return f"{sum(failed.values())} of {figures['cells_run']} cells that ran did not pass ({listed})"
    if figures["pytest_exit"] != 0:
        return f"pytest exited {figures['pytest_exit']}"
    if not figures["cells_run"]:
        return f"ran no cell ({figures['cells']} cells, verdicts {verdicts or 'none'})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--out", default="reports/bench", help="where the runs' reports and bench.json go")
    parser.add_argument("--skip-naive", action="store_true", help="only time the shared mode")
    args, selection = parser.parse_known_args(argv)
    out = Path(args.out)
    selection = selection or ["--all-releases"]
    modes = {"shared": selection}
    if not args.skip_naive:
        modes["naive"] = [*selection, "--cluster-per-cell"]
    results: dict[str, Any] = {}
    for mode, extra in modes.items():
        results[mode] = run_matrix(extra, out / mode)
        reason = why_no_figures(results[mode])
        if reason is not None:
            (out / "bench.json").unlink(missing_ok=True)  # no stale figures beside a failed run
            print(f"bench: no figures: the {mode} run: {reason}; its reports are in {out / mode}", file=sys.stderr)
            return 1
    if "naive" in results:
        shared, naive = results["shared"]["seconds"], results["naive"]["seconds"]
        results["ratio"] = {"naive_over_shared": round(naive / shared, 1) if shared else None}
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    for mode in ("shared", "naive"):
        if mode in results:
            figures = results[mode]
            print(
                f"{mode:>6}: {figures['seconds']:7.1f} s for {figures['cells_run']} cells "
                f"({figures['seconds_per_cell']} s/cell), verdicts {figures['verdicts']}"
            )
    if "ratio" in results:
        print(f" ratio: naive / shared = {results['ratio']['naive_over_shared']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
