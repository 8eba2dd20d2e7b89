"""Flake hunt: run a selection of the suite several times, optionally beside a CPU/I-O load.

``nox -s flakes -- [--rounds N] [--load [STRESS_NG_ARGS]] [--out DIR] [pytest args]``

Without pytest args it runs two selections, each ``--rounds`` times: the suite without the
kind fault tests (``tests -m "not kind_faults"``), then the kind fault tests on their own
(``tests -m kind_faults``). Each round writes a JUnit file; the tally says per test how many
rounds it failed, with the first failure's output. Exit 0 when no test failed in any round,
1 when one did, 2 on bad usage. A round in which pytest collected nothing (exit 5) or
crashed counts as a failure of the round, never as a pass.

``--load`` starts Debian's ``stress-ng`` (default ``--cpu 2``: as busy as a shared CI runner
gets) for the whole hunt and stops it at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LOAD = "--cpu 2"
DEFAULT_SELECTIONS: tuple[tuple[str, ...], ...] = (
    ("tests", "-m", "not kind_faults"),
    ("tests", "-m", "kind_faults"),
)
LOAD_PGID_VARIABLE = "FLAKES_LOAD_PGID"
_running_round: subprocess.Popen[bytes] | None = None
# Lines of a failure's output kept in the tally: enough for the assertion and its context.
FAILURE_LINES = 40


@dataclass
class TestTally:
    nodeid: str
    runs: int = 0
    failures: int = 0
    first_failure: str = ""


@dataclass
class Round:
    selection: tuple[str, ...]
    number: int
    exit_code: int
    seconds: float
    junit: Path


@dataclass
class Hunt:
    rounds: list[Round] = field(default_factory=list)
    tests: dict[str, TestTally] = field(default_factory=dict)

    def record(self, round_: Round) -> None:
        self.rounds.append(round_)
        for nodeid, failure in read_junit(round_.junit):
            tally = self.tests.setdefault(nodeid, TestTally(nodeid))
            tally.runs += 1
            if failure is not None:
                tally.failures += 1
                tally.first_failure = tally.first_failure or failure

    @property
    def flaky(self) -> list[TestTally]:
        return sorted((t for t in self.tests.values() if t.failures), key=lambda t: (-t.failures, t.nodeid))

    @property
    def broken_rounds(self) -> list[Round]:
        """Rounds whose exit says more than "some tests failed": nothing collected, a crash."""
        return [r for r in self.rounds if r.exit_code not in (0, 1)]

    @property
    def ok(self) -> bool:
        return not self.flaky and not self.broken_rounds and all(r.exit_code == 0 for r in self.rounds)


def read_junit(path: Path) -> Iterator[tuple[str, str | None]]:
    """(test id, failure text or None) for each test case that ran; skipped ones are left out."""
    if not path.is_file():
        return
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            continue
        nodeid = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = [child for child in case if child.tag in ("failure", "error")]
        if not bad:
            yield nodeid, None
            continue
        text = "\n".join(f"{b.get('message', '')}\n{b.text or ''}".strip() for b in bad)
        yield nodeid, "\n".join(text.splitlines()[-FAILURE_LINES:])


@contextmanager
def background_load(stress_args: str | None) -> Iterator[None]:
    """stress-ng beside the hunt, in its own process group so that all its workers stop."""
    if stress_args is None:
        yield
        return
    binary = shutil.which("stress-ng")
    if binary is None:
        raise SystemExit("flakes: --load needs stress-ng on PATH (Debian: apt-get install stress-ng)")
    command = [binary, *shlex.split(stress_args), "--quiet"]
    load = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
    print(f"flakes: load: process group {load.pid}: {shlex.join(command)}", flush=True)
    # The rounds inherit it: a test may check that it ran loaded.
    os.environ[LOAD_PGID_VARIABLE] = str(load.pid)
    try:
        time.sleep(0.5)
        if load.poll() is not None:
            raise SystemExit(f"flakes: stress-ng {stress_args!r} exited at once with code {load.returncode}")
        yield
    finally:
        os.environ.pop(LOAD_PGID_VARIABLE, None)
        if load.poll() is None:
            os.killpg(load.pid, signal.SIGTERM)
            try:
                load.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(load.pid, signal.SIGKILL)
                load.wait()


def run_round(selection: tuple[str, ...], number: int, out: Path) -> Round:
    junit = out / f"{'-'.join(_slug(a) for a in selection)[:80]}-round-{number}.xml"
    command = [sys.executable, "-m", "pytest", *selection, "-p", "no:cacheprovider", "-q",
               f"--junitxml={junit}"]
    print(f"flakes: round {number}: {shlex.join(command[1:])}", flush=True)
    started = time.monotonic()
    global _running_round
    _running_round = subprocess.Popen(command)
    try:
        code = _running_round.wait()
    finally:
        if _running_round.poll() is None:  # interrupted: the round ends with the hunt
            _running_round.terminate()
            try:
                _running_round.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _running_round.kill()
        _running_round = None
    return Round(selection, number, code, time.monotonic() - started, junit)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_") or "x"


def render(hunt: Hunt) -> str:
    lines = ["", "flakes: rounds"]
    for r in hunt.rounds:
        lines.append(f"  {shlex.join(r.selection)}  round {r.number}: exit {r.exit_code}, {r.seconds:.0f} s")
    lines.append(f"flakes: {len(hunt.tests)} tests ran; {len(hunt.flaky)} failed at least once")
    for tally in hunt.flaky:
        lines.append(f"  {tally.failures}/{tally.runs}  {tally.nodeid}")
    for tally in hunt.flaky:
        lines += ["", f"--- first failure of {tally.nodeid} ---", tally.first_failure]
    for r in hunt.broken_rounds:
        lines.append(f"flakes: round {r.number} of {shlex.join(r.selection)} ended with exit {r.exit_code}"
                     " (5: no test collected; other: pytest itself failed): it counts as a failure")
    return "\n".join(lines)


def summary(hunt: Hunt, load: str | None) -> dict[str, object]:
    return {
        "load": load,
        "rounds": [{"selection": list(r.selection), "round": r.number, "exit_code": r.exit_code,
                    "seconds": round(r.seconds, 1)} for r in hunt.rounds],
        "tests": len(hunt.tests),
        "failed": [{"test": t.nodeid, "failures": t.failures, "runs": t.runs} for t in hunt.flaky],
        "ok": hunt.ok,
    }


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="nox -s flakes --", description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to pytest and replace the default selections. "
               "Exit codes: 0 no failure, 1 a test or round failed, 2 bad usage.")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each selection (default 3)")
    parser.add_argument("--load", nargs="?", const=DEFAULT_LOAD, default=None, metavar="STRESS_NG_ARGS",
                        help=f"run stress-ng beside the hunt (default args: {DEFAULT_LOAD!r})")
    parser.add_argument("--out", type=Path, default=Path("flakes"),
                        help="where the JUnit files and summary.json go (default ./flakes)")
    args, pytest_args = parser.parse_known_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: expected a whole number of at least 1")
    return args, pytest_args


def main(argv: Sequence[str] | None = None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    selections = (tuple(pytest_args),) if pytest_args else DEFAULT_SELECTIONS
    args.out.mkdir(parents=True, exist_ok=True)
    hunt = Hunt()
    with background_load(args.load):
        for selection in selections:
            for number in range(1, args.rounds + 1):
                hunt.record(run_round(selection, number, args.out))
    print(render(hunt), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary(hunt, args.load), indent=2) + "\n")
    return 0 if hunt.ok else 1


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C, so the load is stopped too


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a cancelled CI job sends SIGTERM
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("flakes: interrupted", file=sys.stderr)
        sys.exit(130)
