"""``kserve-compat run --parallel-groups N``: N runs at once, each with its share of the
cluster groups (``--shard I/N``), then one report of them all.

Each share is a whole ``kserve-compat run`` in a process of its own (its own harness,
clusters, Prometheus and prepare-ahead), with its reports under ``<reports-dir>/shard-I``
(emptied first, so no earlier run's cells are merged) and its output in
``<reports-dir>/shard-I/run.log``. A group is never split, so no two processes touch one
cluster. When all have ended, their cell results are merged into ``<reports-dir>`` as
``kserve-compat report`` merges CI shards, and printed once (the shares do not write the
GitHub step summary; the merge does).

Ctrl-C from a terminal reaches every share (they are in its process group); SIGTERM and
SIGHUP sent to this process are passed on to each share. Either way each share stops its
cells and deletes its clusters, this waits for all of them, merges what they saved and
exits 2, as an interrupted single run does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from e2e.errors import HarnessError, UsageError
from e2e.run import PREPARE_AHEAD

PARALLEL_OPTION = "--parallel-groups"
# pytest's "no tests collected": a share gets no group when there are fewer groups than shares.
NOTHING_COLLECTED = 5
INTERRUPTED = 2
STEP_SUMMARY = "GITHUB_STEP_SUMMARY"


def say(message: str) -> None:
    """One line of progress, flushed: a CI log shows it as it happens."""
    print(f"parallel-groups: {message}", flush=True)


def _count(text: str, what: str) -> int:
    if text.isascii() and text.isdecimal() and int(text) >= 1:
        return int(text)
    raise UsageError(f"{what} {text}: expected a whole number of at least 1")


def split_parallel_option(arguments: Sequence[str]) -> tuple[int, list[str]]:
    """(N, the other arguments) of ``--parallel-groups N`` / ``--parallel-groups=N`` (N=1 without it)."""
    rest: list[str] = []
    count = 1
    words = list(arguments)
    while words:
        word = words.pop(0)
        if word == PARALLEL_OPTION:
            if not words:
                raise UsageError(f"{PARALLEL_OPTION}: expected a number of shares, e.g. {PARALLEL_OPTION} 2")
            count = _count(words.pop(0), PARALLEL_OPTION)
        elif word.startswith(PARALLEL_OPTION + "="):
            count = _count(word.split("=", 1)[1], PARALLEL_OPTION)
        else:
            rest.append(word)
    return count, rest


def refuse_conflicts(arguments: Sequence[str]) -> None:
    for word in arguments:
        if word == "--shard" or word.startswith("--shard="):
            raise UsageError(f"{PARALLEL_OPTION} chooses each share's --shard; leave --shard out")
        if word == "--plan":
            raise UsageError(f"--plan prints the whole run's plan; leave {PARALLEL_OPTION} out")


def _run_options(arguments: Sequence[str]) -> argparse.Namespace:
    """The run's options the merge needs: where reports go, the matrix, strictness (exact
    names only: pytest's own ``--strict`` is not ``--strict-security``)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--reports-dir", default="reports", type=Path)
    parser.add_argument("--matrix", default=None, type=Path)
    parser.add_argument("--strict-security", action="store_true")
    try:
        known, _ = parser.parse_known_args(list(arguments))
    except argparse.ArgumentError as exc:
        raise UsageError(f"{exc.argument_name}: {exc.message}") from None
    return known


@dataclass(frozen=True)
class Share:
    index: int
    count: int
    reports_dir: Path
    process: subprocess.Popen[bytes]
    started: float

    @property
    def log_file(self) -> Path:
        return self.reports_dir / "run.log"


def share_command(arguments: Sequence[str], index: int, count: int, reports_dir: Path) -> list[str]:
    """The command line of share ``index`` of ``count``. Unless the arguments say otherwise,
    each share prepares 2 // count groups ahead (at least 1): the shares run on one machine."""
    chosen = any(word == "--prepare-ahead" or word.startswith("--prepare-ahead=") for word in arguments)
    ahead = [] if chosen else ["--prepare-ahead", str(max(1, PREPARE_AHEAD // count))]
    return [
        sys.executable, "-m", "e2e.cli", "run", "--",
        *arguments, *ahead, "--shard", f"{index}/{count}", "--reports-dir", str(reports_dir),
    ]  # fmt: skip


def exit_status(code: int) -> int:
    """A share's exit as a shell sees it: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


def run_shares(count: int, arguments: Sequence[str]) -> int:
    """Run ``count`` shares of the groups at once; the merged report's exit code."""
    refuse_conflicts(arguments)
    options = _run_options(arguments)
    reports: Path = options.reports_dir
    # The shares' own step summaries would repeat the grid N times; the merge writes one.
    environment = {key: value for key, value in os.environ.items() if key != STEP_SUMMARY}
    shares: list[Share] = []
    interrupted = False
    with _passing_signals_on(shares) as passed_on:
        try:
            for index in range(1, count + 1):
                directory = reports / f"shard-{index}"
                try:
                    shutil.rmtree(directory, ignore_errors=True)
                    directory.mkdir(parents=True)
                    output = (directory / "run.log").open("wb")
                except OSError as exc:
                    raise HarnessError(f"--reports-dir {reports}: cannot write {directory}: {exc.strerror}") from None
                with output:
                    process = subprocess.Popen(
                        share_command(arguments, index, count, directory),
                        stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
                    )  # fmt: skip
                shares.append(Share(index, count, directory, process, time.monotonic()))
                say(f"share {index}/{count} started (log: {directory / 'run.log'})")
            codes = _wait(shares)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted; waiting for every share to stop and delete its clusters")
            codes = _wait(shares, ignore_interrupts=True)
    merged = _merge(shares, codes, reports, options)
    if interrupted or passed_on:  # stopped from outside, as a single run stopped so exits
        return INTERRUPTED
    return merged


def _merge(shares: list[Share], codes: dict[int, int], reports: Path, options: argparse.Namespace) -> int:
    ran = [share for share in shares if codes[share.index] != NOTHING_COLLECTED]
    if not ran:
        say("no share had a group to run")
        return NOTHING_COLLECTED
    results = [share.reports_dir / "cells" for share in ran if (share.reports_dir / "cells").is_dir()]
    failed = [share for share in ran if codes[share.index] != 0]
    if not results:
        say(f"no share left a cell result; see {', '.join(str(share.log_file) for share in ran)}")
        return max(exit_status(codes[share.index]) for share in failed) if failed else 1
    from e2e import report_cli

    merged = report_cli.run(
        argparse.Namespace(inputs=results, out=reports, strict=options.strict_security, matrix=options.matrix)
    )
    if failed and merged == 0:
        # A share that failed without a failing cell (a usage error, a crash) still fails the run.
        ended = ", ".join(f"{share.index} ended {exit_status(codes[share.index])}" for share in failed)
        say(f"share {ended}; see {', '.join(str(share.log_file) for share in failed)}")
        return max(exit_status(codes[share.index]) for share in failed)
    return merged


def _wait(shares: list[Share], *, ignore_interrupts: bool = False) -> dict[int, int]:
    """Each share's exit code, as they end; a further Ctrl-C does not stop the waiting when
    ``ignore_interrupts`` (the shares are still deleting their clusters)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore_interrupts else None
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(shares):
            for share in shares:
                code = share.process.poll() if share.index not in codes else None
                if code is not None:
                    codes[share.index] = code
                    elapsed = time.monotonic() - share.started
                    say(f"share {share.index}/{share.count} ended {exit_status(code)} in {elapsed:.0f} s")
            time.sleep(0.5)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return codes


@contextmanager
def _passing_signals_on(shares: list[Share]) -> Iterator[list[int]]:
    """SIGTERM and SIGHUP to this process go to every share (which cleans up and exits);
    this one keeps waiting for them. Yields the signals passed on so far."""
    passed_on: list[int] = []

    def pass_on(signum: int, frame: FrameType | None) -> None:
        passed_on.append(signum)
        say(f"{signal.Signals(signum).name}: passed on to every share")
        for share in shares:
            if share.process.poll() is None:
                share.process.send_signal(signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield passed_on
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
