"""``kserve-compat run``: the scenarios, on kind or the local tier, from wherever the tool is
installed. The same run as ``nox -s e2e`` / ``nox -s local`` in a checkout: pytest over the
scenarios with the harness's plugins; every other argument is pytest's or the harness's
(``--provider``, ``--kserve``, ``--plan``, ...; ``kserve-compat run --help`` lists them
under "kserve-compat"). The exit code is pytest's.

``--parallel-groups N`` runs N of these at once, each on its share of the cluster groups,
and merges their reports (``e2e/parallel_groups.py``).
"""

from __future__ import annotations

import argparse

EXIT_CODES = (
    (0, "every scenario ended with its expected verdict (or --plan printed the plan)"),
    (1, "a scenario did not (its verdict, check and evidence are printed and in reports/)"),
    (2, "usage error (an option, a selection the matrix refuses), or the run was interrupted"),
    (3, "the tier cannot run here (e.g. no Docker for kind), said in one line"),
    (5, "no scenario ran for the selection"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, metavar="ARGS",
        help="the harness's and pytest's options, e.g. --provider kind --kserve v0.14.0 --plan; "
        "and --parallel-groups N: N runs at once, each with its share of the cluster groups "
        "(reports under REPORTS_DIR/shard-I, merged into REPORTS_DIR)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import pytest

    # Before pytest loads pytest-kind's plugin: this pins the kind/kubectl versions it reads.
    import e2e.cluster.kind  # noqa: F401
    from e2e.parallel_groups import run_shares, split_parallel_option
    from e2e.scenario import SCENARIOS_DIR

    passed = list(args.pytest_args)
    # The `--` e2e.cli puts after `run`, and one the user may have typed there: both end
    # kserve-compat's own options, neither is pytest's.
    while passed[:1] == ["--"]:
        passed = passed[1:]
    shares, passed = split_parallel_option(passed)
    # `run --parallel-groups N -- ARGS`: the `--` after kserve-compat's own option.
    while passed[:1] == ["--"]:
        passed = passed[1:]
    if shares > 1:
        return run_shares(shares, passed)
    plugins = ["-p", "e2e.pytest_redaction", "-p", "e2e.plugin", "-p", "no:cacheprovider"]
    return int(pytest.main([str(SCENARIOS_DIR), *plugins, "-ra", *passed]))
