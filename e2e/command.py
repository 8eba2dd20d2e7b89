"""Running one short command: captured output, a bounded time, and one line when it fails.

Every short command the harness runs (docker, kind, go, helm, ldd, a binary's ``--help``)
goes through ``run``. A missing program is ``EnvironmentMissing``; a command that does not
finish in time or exits non-zero is one line of the caller's own ``HarnessError`` subclass
(``ImageBuildFailed``, ``ExtractFailed``, ...) naming what was being done, the program, its
exit code and its last lines of output, so that what catches those types keeps working.

Not here: processes that run for long (``e2e.local.processes``) and commands whose progress
is streamed while they run (go builds, pip installs of the sklearn server).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from e2e.errors import EnvironmentMissing, HarnessError
from e2e.text import one_line

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10 * 60.0
"""A command with no timeout of its own: long enough for a docker commit, short of a hang."""

# What tools put in front of every error line: it tells nothing in a one-line message.
_NOISE_PREFIXES = ("docker: ", "ERROR: ", "Error response from daemon: ")
# A word after the program that names what it was asked to do (`docker image`, `go version`).
_SUBCOMMAND = re.compile(r"^[a-z][a-z0-9-]*$")


def program(argv: Sequence[str | os.PathLike[str]]) -> str:
    """How a message names the command: the program's file name and its subcommand, if any
    (``docker image``, ``kind get``, ``python3 -m pip install``, ``ldd``)."""
    words = [os.fspath(word) for word in argv]
    name = [Path(words[0]).name]
    rest = words[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        name += rest[:2]
        rest = rest[2:]
    if rest and _SUBCOMMAND.match(rest[0]):
        name.append(rest[0])
    return " ".join(name)


def last_lines(output: str, count: int = 1) -> str:
    """The last ``count`` non-empty lines of ``output`` on one line (" / " between them),
    without the prefixes tools repeat on every error line; "no output" when there is none."""
    lines = [line.strip() for line in output.splitlines() if line.strip()][-count:]
    for index, line in enumerate(lines):
        for prefix in _NOISE_PREFIXES:
            line = line.removeprefix(prefix)
        lines[index] = line
    return one_line(" / ".join(lines)) or "no output"


def failure_line(
    result: subprocess.CompletedProcess[str], what: str, *, tail: int = 1, log_file: Path | None = None
) -> str:
    """``WHAT: PROGRAM exited CODE: LAST LINES`` of a finished command; its error output is
    read first (where tools say why), its standard output when that says nothing."""
    output = result.stderr if result.stderr.strip() else result.stdout
    where = f" (full output: {log_file})" if log_file is not None else ""
    return f"{what}: {program(result.args)} exited {result.returncode}: {last_lines(output, tail)}{where}"


def run(
    argv: Sequence[str | os.PathLike[str]],
    what: str,
    *,
    error: type[HarnessError] = HarnessError,
    timeout: float = DEFAULT_TIMEOUT_S,
    input_bytes: bytes | None = None,
    stdin: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    log_file: Path | None = None,
    check: bool = True,
    tail: int = 1,
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its output captured (decoded, undecodable bytes replaced).

    ``what`` says what the command does for the caller (the start of any message). Raises
    ``EnvironmentMissing`` when the program is not there (``hint``: how to get it); ``error``
    when it cannot be started, does not finish in ``timeout`` seconds or, with ``check``,
    exits non-zero (its last ``tail`` lines quoted). ``log_file`` receives the whole output,
    whatever the outcome, and the message points at it. The command reads ``input_bytes``,
    or the stream ``stdin`` (another process's output), or nothing: a captured command must
    never wait on the terminal.
    """
    args = [os.fspath(word) for word in argv]
    log.debug("running (%s): %s", what, " ".join(args))
    try:
        completed = subprocess.run(
            args,
            input=input_bytes,
            stdin=stdin if stdin is not None else (subprocess.DEVNULL if input_bytes is None else None),
            capture_output=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        if exc.filename not in (None, args[0]):  # the working directory, not the program
            raise error(f"{what}: cannot run {program(args)} ({one_line(exc)})") from None
        where = "" if os.sep in args[0] else " on PATH"
        raise EnvironmentMissing(f"{args[0]}: not found{where}" + (f"; {hint}" if hint else "")) from None
    except OSError as exc:  # not executable, too many open files...
        raise error(f"{what}: cannot run {program(args)} ({one_line(exc)})") from None
    except subprocess.TimeoutExpired as exc:
        _keep(log_file, exc.stdout, exc.stderr)
        where = f" (output so far: {log_file})" if log_file is not None else ""
        raise error(f"{what}: {program(args)} did not finish in {timeout:g}s{where}") from None
    result = subprocess.CompletedProcess(args, completed.returncode, _text(completed.stdout), _text(completed.stderr))
    _keep(log_file, completed.stdout, completed.stderr)
    if check and result.returncode != 0:
        raise error(failure_line(result, what, tail=tail, log_file=log_file))
    return result


def _text(output: bytes | None) -> str:
    return (output or b"").decode(errors="replace")


def _keep(log_file: Path | None, stdout: bytes | None, stderr: bytes | None) -> None:
    if log_file is not None:
        log_file.write_text(_text(stdout) + _text(stderr))
