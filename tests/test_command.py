"""The one owner of running a short command and turning its failure into one line
(e2e.command), driven with real processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from e2e.command import failure_line, last_lines, program, run
from e2e.errors import EnvironmentMissing, HarnessError
from e2e.secrets import register


class BuildBroke(HarnessError):
    """A caller's own error type: what its callers catch."""


def test_a_non_zero_exit_is_one_line_of_the_callers_type_naming_what_program_code_and_last_line() -> None:
    with pytest.raises(BuildBroke) as caught:
        run(["sh", "-c", "echo progress; echo first problem >&2; echo the real error >&2; exit 3"], "the widget",
            error=BuildBroke)  # fmt: skip
    assert str(caught.value) == "the widget: sh exited 3: the real error"


def test_the_default_error_is_a_harness_error() -> None:
    with pytest.raises(HarnessError, match=r"^step: sh exited 1: no output$"):
        run(["sh", "-c", "exit 1"], "step")


def test_tail_quotes_the_last_lines_and_standard_output_speaks_when_stderr_is_silent() -> None:
    with pytest.raises(HarnessError) as caught:
        run(["sh", "-c", "printf 'a\\n\\nb\\nc\\n'; exit 2"], "tool", tail=2)
    assert str(caught.value) == "tool: sh exited 2: b / c"


def test_the_prefixes_tools_repeat_on_every_error_line_are_dropped() -> None:
    script = "echo 'docker: Error response from daemon: No such container: x' >&2; exit 125"
    with pytest.raises(HarnessError) as caught:
        run(["sh", "-c", script], "removing x")
    assert str(caught.value) == "removing x: sh exited 125: No such container: x"


def test_a_secret_in_the_output_never_reaches_the_message() -> None:
    secret = "s3cr3t-value-for-command-test"
    register(secret)
    with pytest.raises(HarnessError) as caught:
        run(["sh", "-c", f"echo 'token {secret} refused' >&2; exit 1"], "login")
    assert secret not in str(caught.value) and "refused" in str(caught.value)


def test_without_check_the_result_comes_back_and_failure_line_words_it_the_same() -> None:
    result = run(["sh", "-c", "echo out; echo err >&2; exit 4"], "probe", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (4, "out\n", "err\n")
    assert failure_line(result, "probe") == "probe: sh exited 4: err"


def test_a_missing_program_is_environment_missing_with_the_hint() -> None:
    with pytest.raises(EnvironmentMissing) as caught:
        run(["kserve-compat-no-such-tool", "version"], "anything", error=BuildBroke, hint="apt-get install it")
    assert str(caught.value) == "kserve-compat-no-such-tool: not found on PATH; apt-get install it"


def test_a_missing_program_given_by_path_is_not_looked_for_on_path(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentMissing, match=r"^/.*/absent: not found$"):
        run([tmp_path / "absent"], "anything")


def test_a_program_that_cannot_run_is_the_callers_error(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(BuildBroke, match=r"^the step: cannot run not-executable \(.*Permission denied"):
        run([script], "the step", error=BuildBroke)


def test_a_command_that_does_not_finish_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    log_file = tmp_path / "slow.log"
    started = time.monotonic()
    with pytest.raises(BuildBroke) as caught:
        run(["sh", "-c", "echo started; exec sleep 30"], "the slow step", error=BuildBroke, timeout=0.5,
            log_file=log_file)  # fmt: skip
    assert time.monotonic() - started < 10
    assert str(caught.value) == f"the slow step: sh did not finish in 0.5s (output so far: {log_file})"
    assert log_file.read_text() == "started\n"


def test_input_bytes_are_the_commands_standard_input() -> None:
    data = bytes(range(256)) * 4
    result = run(["sh", "-c", "wc -c"], "counting", input_bytes=data)
    assert result.stdout.strip() == str(len(data))


def test_a_stream_can_be_the_commands_standard_input() -> None:
    with subprocess.Popen(["printf", "one\\ntwo\\n"], stdout=subprocess.PIPE) as producer:
        assert producer.stdout is not None
        result = run(["sh", "-c", "wc -l"], "counting lines", stdin=producer.stdout)
    assert result.stdout.strip() == "2"


def test_without_input_the_command_reads_nothing_rather_than_the_terminal() -> None:
    result = run(["cat"], "cat", timeout=10)
    assert result.stdout == ""


def test_the_log_file_holds_the_whole_output_and_the_message_points_at_it(tmp_path: Path) -> None:
    log_file = tmp_path / "build.log"
    script = "for i in 1 2 3 4 5; do echo line $i; done; echo broken >&2; exit 1"
    with pytest.raises(BuildBroke) as caught:
        run(["sh", "-c", script], "the build", error=BuildBroke, log_file=log_file)
    assert str(caught.value) == f"the build: sh exited 1: broken (full output: {log_file})"
    assert log_file.read_text() == "line 1\nline 2\nline 3\nline 4\nline 5\nbroken\n"


def test_the_log_file_is_written_on_success_too(tmp_path: Path) -> None:
    log_file = tmp_path / "ok.log"
    assert run(["sh", "-c", "echo fine"], "ok", log_file=log_file).stdout == "fine\n"
    assert log_file.read_text() == "fine\n"


def test_environment_and_working_directory(tmp_path: Path) -> None:
    result = run(
        ["sh", "-c", 'echo "$ANSWER"; pwd'], "env", env={"ANSWER": "42", "PATH": "/usr/bin:/bin"}, cwd=tmp_path
    )
    assert result.stdout.splitlines() == ["42", str(tmp_path.resolve())]


def test_undecodable_output_is_replaced_not_fatal() -> None:
    result = run(["sh", "-c", "printf 'ok \\377\\n'"], "bytes")
    assert result.stdout == "ok \ufffd\n"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["/usr/bin/docker", "image", "inspect", "x"], "docker image"),
        (["kind", "get", "clusters"], "kind get"),
        (["python3", "-m", "pip", "install", "x"], "python3 -m pip install"),
        (["ldd", "/usr/bin/prometheus"], "ldd"),
        (["sh", "-c", "exit 1"], "sh"),
        ([Path("/opt/kube-rbac-proxy"), "--help"], "kube-rbac-proxy"),
    ],
)
def test_how_a_message_names_the_program(argv: list[str | Path], name: str) -> None:
    assert program(argv) == name


def test_last_lines_of_nothing() -> None:
    assert last_lines("\n  \n") == "no output"
