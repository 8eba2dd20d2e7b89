"""The one owner of how free text reads on one line (e2e.text)."""

from __future__ import annotations

from e2e.secrets import register
from e2e.text import error_line, one_line


def test_one_line_folds_white_space_and_marks_a_cut() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("x" * 10, limit=5) == "xxxx…"
    assert one_line(None) == ""


def test_an_exception_without_a_message_reads_as_its_type() -> None:
    assert one_line(TimeoutError()) == "TimeoutError"


def test_error_line_names_the_type_and_may_replace_the_message() -> None:
    assert error_line(ValueError("bad\nvalue")) == "ValueError: bad value"
    assert error_line(ValueError("long dump"), "404 Not Found") == "ValueError: 404 Not Found"


def test_a_registered_secret_never_survives() -> None:
    secret = "s3cr3t-value-for-text-test"
    register(secret)
    assert secret not in one_line(f"token {secret}")
    assert secret not in error_line(RuntimeError(secret))
