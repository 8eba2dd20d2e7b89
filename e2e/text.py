"""How free text (an exception, a server's answer, a check's detail) reads on one line.

Every line built here is redacted: what a person reads in a report, a log or an error may
quote a server's answer, and a token in it must not survive the quote.
"""

from __future__ import annotations

from e2e.secrets import redact

DETAIL_LIMIT = 300
"""How long a detail may be before it is cut (a report cell, a log line, an error message)."""


def one_line(value: object, limit: int = DETAIL_LIMIT) -> str:
    """``value`` as one redacted line of at most ``limit`` characters.

    Runs of white space (newlines included) fold to one space; a cut ends in "…". An
    exception with no message reads as its type's name rather than as nothing.
    """
    flat = " ".join(redact("" if value is None else str(value)).split())
    if not flat and isinstance(value, BaseException):
        flat = type(value).__name__
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_line(exc: BaseException, message: str | None = None, limit: int = DETAIL_LIMIT) -> str:
    """``Type: message`` on one line: how a caught exception reads as evidence.

    ``message`` replaces the exception's own text where that is long or multi-part (a
    Kubernetes ``ApiException`` prints its headers and body).
    """
    return one_line(f"{type(exc).__name__}: {str(exc) if message is None else message}", limit)
