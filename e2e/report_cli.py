"""``kserve-compat report``: merge saved cell results and render every report format.

Reads result JSON files and directories (CI shards), writes ``report.json``, ``report.md``,
``report.html`` and ``junit.xml`` to ``--out``, prints the Markdown, appends it to the
GitHub Actions step summary when there is one, and exits with ``report.exit_code``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from e2e.matrix import DEFAULT_MATRIX_FILE, Matrix, load_matrix
from e2e.report import failing_cells, load_results, markdown_report, step_summary, write_reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="DIR_OR_FILE",
        help="result JSON files, or directories holding them (e.g. one per CI shard)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports"), metavar="DIR", help="where to write the reports (default: reports)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="a security finding (e.g. a token in the proxy's logs) fails the run too"
    )
    parser.add_argument(
        "--matrix",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"matrix for column order, controller names, registry status (default: {DEFAULT_MATRIX_FILE.name})",
    )


def _matrix(path: Path | None) -> Matrix | None:
    # Without --matrix the report still renders from the results alone if the default
    # file is absent (e.g. an installed package without scenarios/).
    if path is None and not DEFAULT_MATRIX_FILE.is_file():
        return None
    return load_matrix(path)


def run(args: argparse.Namespace) -> int:
    matrix = _matrix(args.matrix)
    results = load_results(args.inputs)
    paths = write_reports(results, args.out, matrix)
    markdown = markdown_report(results, matrix)
    sys.stdout.write(markdown)
    step_summary(markdown)
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    failing = failing_cells(results, strict=args.strict, matrix=matrix)
    if failing:
        print(f"{len(failing)} of {len(results)} cells fail the run", file=sys.stderr)
    return 1 if failing else 0
