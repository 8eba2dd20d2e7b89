"""``nox -s bench -- kind [--kserve V --proxy A,B --k8s M]``: figures of the kind tier on the local image set.

Times, as subprocesses: ``kserve-compat images build`` of the release (every proxy image of
the matrix: a migration starts from the one the release ships; a no-op when the set is
current: the warm figure), then one run of the selection's scenarios on kind
(``--local-images``). Reports the wall time, each cell's own duration (the group's first
cell includes creating the cluster and installing cert-manager and KServe), and the cold
figures the caches recorded: each Go binary's ``build_seconds`` from its
``build-info.json``. Figures, never assertions; a run whose cells did not reach their
expected verdicts prints none and exits 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e.cache import cache_root

EXPECTED = frozenset({"pass", "image-unavailable"})  # a retired image's cell ends image-unavailable


def cold_builds() -> dict[str, float]:
    """``component version`` -> seconds of the go build that made the cached binary."""
    found: dict[str, float] = {}
    for info in sorted((cache_root() / "bin").glob("*/*/build-info.json")):
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("build_seconds"), int | float):
            found[f"{info.parent.parent.name} {info.parent.name}"] = float(data["build_seconds"])
    return found


def _timed(command: list[str]) -> tuple[float, int]:
    started = time.monotonic()
    completed = subprocess.run(command, check=False)
    return round(time.monotonic() - started, 1), completed.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench_kind", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="reports/bench-kind", help="where the run's reports and bench.json go")
    parser.add_argument("--kserve", default="v0.14.0", help="the release of the timed group (default v0.14.0)")
    parser.add_argument("--proxy", default="quay-v0.22.1,gcr-v0.13.1", help="proxy aliases of the timed group")
    parser.add_argument("--k8s", default="1.34", help="Kubernetes minor of the timed group")
    args = parser.parse_args(argv)
    out = Path(args.out)
    selection = ["--kserve", args.kserve, "--proxy", args.proxy, "--k8s", args.k8s]
    # Every proxy image of the matrix: a migration starts from the one the release ships.
    images_seconds, images_exit = _timed(
        [sys.executable, "-m", "e2e.cli", "images", "build", "--kserve", args.kserve, "--k8s", args.k8s]
    )
    if images_exit != 0:
        print(f"bench kind: no figures: `kserve-compat images build` exited {images_exit}", file=sys.stderr)
        return 1
    pytest_args = ["scenarios", "--provider", "kind", "--local-images", *selection, "--reports-dir", str(out)]
    run_seconds, run_exit = _timed([sys.executable, "-m", "pytest", *pytest_args, "-q", "-p", "no:cacheprovider"])
    report = out / "report.json"
    cells: list[dict[str, Any]] = json.loads(report.read_text()) if report.exists() else []
    unexpected = [c["cell_id"] + f" ({c['scenario']}: {c['verdict']})" for c in cells if c["verdict"] not in EXPECTED]
    if run_exit != 0 or unexpected or not cells:
        why = ", ".join(unexpected) or f"pytest exited {run_exit}" if cells else "no cell ran"
        print(f"bench kind: no figures: {why}; reports in {out}", file=sys.stderr)
        return 1
    runs = [
        {"cell": c["cell_id"], "scenario": c["scenario"], "verdict": c["verdict"], "seconds": c["duration_s"]}
        for c in cells
    ]
    builds = cold_builds()
    figures = {"images_build_warm_s": images_seconds, "run_s": run_seconds, "cells": runs, "cold_go_builds_s": builds}
    (out / "bench.json").write_text(json.dumps(figures, indent=2))
    print(f"images build (warm): {images_seconds} s")
    print(f"kind run: {run_seconds} s for {len(cells)} scenario runs (one cluster group)")
    for run in runs:
        print(f"  {run['seconds']:7.1f} s  {run['scenario']:<14} {run['cell']} ({run['verdict']})")
    print("cold Go builds recorded in the cache (build-info.json):")
    for name, seconds in builds.items():
        print(f"  {seconds:7.1f} s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
