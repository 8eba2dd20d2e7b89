"""Token leaks: whether a ServiceAccount token a scraper sent shows up in the proxy's logs, in
any form it could take there (plain, base64, hex dumps, embedded in a JWT's payload...)."""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from e2e.results import CellResult, CheckResult, CheckStatus, SecurityFinding, timed_check
from e2e.secrets import REDACTED, encodings, redact

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_HEXDUMP_LINE = re.compile(r"^\s*[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2}){1,16})")
_CONTEXT_CHARS = 24


@dataclass(frozen=True)
class LeakEvidence:
    """Where a token was found. Never holds the token: only its name and redacted context."""

    token_name: str
    line_number: int  # 1-based
    encoding: str  # e.g. "raw", "base64", "jwt-header-payload"
    context: str  # surrounding characters, every token form replaced by <redacted>

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.token_name} token ({self.encoding}): ...{self.context}..."


def _embedded_base64_forms(raw: bytes) -> dict[str, str]:
    """Base64 text that appears wherever ``raw`` sits inside a larger base64-encoded blob.

    A log that base64-encodes a whole request body places the token at an arbitrary byte
    offset; its encoding is then not ``b64(token)`` but one of three alignments. For each
    offset mod 3, keep only the characters that depend on the token's bytes alone.
    """
    forms: dict[str, str] = {}
    for shift in (1, 2):
        dropped = {1: 2, 2: 3}[shift]  # leading characters that mix in the unknown byte(s)
        whole_groups = (len(raw) + shift) // 3
        for label, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * shift + raw).decode()[dropped : 4 * whole_groups]
            if len(text) >= 16:
                forms[text] = f"{label} (embedded, offset {shift} mod 3)"
    return forms


def token_forms(token: str) -> dict[str, str]:
    """Every form of ``token`` the scanner looks for, mapped to a name for the encoding.

    Full forms: raw, base64 std/url with and without padding (also embedded in a larger
    base64 blob), URL-quoted, JSON-escaped, Go ``%q``-escaped, hex. Partial form, for
    JWTs only: ``header.payload.`` — the token minus its signature. A log line truncated
    inside the signature (client-go truncates long bodies at lower verbosity) still shows
    it, and it proves the proxy writes the caller's token to its log; the header alone is
    not used because every token from one issuer shares it.
    """
    raw = token.encode()
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    named = [  # first name wins where two encodings coincide (a JWT's base64 == base64url)
        (standard, "base64"),
        (standard.rstrip("="), "base64 (unpadded)"),
        (urlsafe, "base64url"),
        (urlsafe.rstrip("="), "base64url (unpadded)"),
        (urllib.parse.quote(token, safe=""), "url-quoted"),
        (json.dumps(token)[1:-1], "json-escaped"),
        (token.encode("unicode_escape").decode().replace('"', '\\"'), "go-quoted"),
        (raw.hex(), "hex"),
        *((form, "encoded") for form in sorted(encodings(token))),  # what redaction knows
    ]
    forms: dict[str, str] = {}
    for form, name in named:
        forms.setdefault(form, name)
    for form, name in _embedded_base64_forms(raw).items():
        forms.setdefault(form, name)
    if _JWT_SHAPE.match(token):
        header, payload, _signature = token.split(".")
        forms.setdefault(f"{header}.{payload}.", "jwt-header-payload (signature cut off)")
    forms[token] = "raw"  # wins over an escaped form that happens to equal it
    return forms


def _hexdump_blocks(lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """Bodies that client-go logged as ``hex.Dump`` (binary/protobuf), as latin-1 text.

    Yields (1-based line number of the block's first line, the dumped bytes), so a token
    split across 16-byte dump lines is still found.
    """
    start = 0
    chunks: list[bytes] = []
    for number, line in enumerate(lines, start=1):
        match = _HEXDUMP_LINE.match(line)
        if match:
            if not chunks:
                start = number
            try:
                chunks.append(binascii.unhexlify(match.group(1).replace(" ", "")))
            except binascii.Error:
                continue
        elif chunks:
            yield start, b"".join(chunks).decode("latin-1")
            chunks = []
    if chunks:
        yield start, b"".join(chunks).decode("latin-1")


def _redacted_context(line: str, spans: Sequence[tuple[int, int]], focus: tuple[int, int]) -> str:
    """The characters around ``focus`` with every span in ``spans`` replaced by <redacted>.

    Spans are replaced on the whole line first and the window is cut afterwards, so the
    window's edge can never leave part of a token behind.
    """
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces: list[str] = []
    cursor = 0
    focus_at = 0
    for start, end in merged:
        pieces.append(line[cursor:start])
        if start <= focus[0] < end:
            focus_at = sum(len(p) for p in pieces)
        pieces.append(REDACTED)
        cursor = end
    pieces.append(line[cursor:])
    clean = "".join(pieces)
    window = clean[max(0, focus_at - _CONTEXT_CHARS) : focus_at + len(REDACTED) + _CONTEXT_CHARS]
    window = "".join(char if char.isprintable() else "." for char in window)  # hexdump bytes
    return redact(window)  # also catches JWTs and bearer headers of tokens we were not given


def find_token_leaks(log_text: str, tokens: Mapping[str, str]) -> list[LeakEvidence]:
    """Every place a known token appears in ``log_text``, in any form ``token_forms`` knows.

    ``tokens`` maps a name to a token, e.g. ``{"metrics-reader": ..., "no-access": ...}``.
    One ``LeakEvidence`` per (token, line): the most complete form found on that line.
    """
    lines = log_text.splitlines()
    dumps = list(_hexdump_blocks(lines))
    haystack = "\n".join([log_text, *(dumped for _, dumped in dumps)])
    # Only forms present somewhere are searched line by line: --v=10 logs are long.
    forms = [
        (form, name, encoding)
        for name, token in tokens.items()
        for form, encoding in token_forms(token).items()
        if form in haystack
    ]
    if not forms:
        return []

    leaks: list[LeakEvidence] = []
    sources: list[tuple[int, str, str]] = [(n, line, "") for n, line in enumerate(lines, start=1)]
    sources.extend((n, dumped, "hexdump ") for n, dumped in dumps)
    for number, text, prefix in sources:
        spans: list[tuple[int, int, str, str]] = []
        for form, name, encoding in forms:
            start = text.find(form)
            while start != -1:
                spans.append((start, start + len(form), name, encoding))
                start = text.find(form, start + 1)
        if not spans:
            continue
        plain_spans = [(start, end) for start, end, _, _ in spans]
        reported: set[str] = set()
        # Longest match first: the raw token beats its header+payload prefix.
        for start, end, name, encoding in sorted(spans, key=lambda s: s[0] - s[1]):
            if name in reported:
                continue
            reported.add(name)
            context = _redacted_context(text, plain_spans, (start, end))
            leaks.append(LeakEvidence(name, number, prefix + encoding, context))
    leaks.sort(key=lambda leak: (leak.line_number, leak.token_name))
    return leaks


def check_token_leak(cell: CellResult, log_text: str, tokens: Mapping[str, str]) -> CheckResult:
    """``token-leak``: scan the proxy's log for the tokens the checks sent it.

    The check's status is about the scan, not about the leak: it passes when the scan ran
    (``"no token in N log lines"`` or ``"token found in proxy logs (security finding)"``)
    and errors only when the scan could not run (e.g. an empty log, which means the log
    was not collected). A leak is recorded as a ``SecurityFinding(kind="token-leak")`` on
    ``cell.findings``: security findings are separate from the compatibility verdict, so a
    cell can be compatible and still leak (kube-rbac-proxy before v0.18.2 at ``--v=10``).
    """
    with timed_check(cell, "token-leak") as check:
        # Blank lines do not count: callers join current and previous logs, either may be empty.
        line_count = sum(1 for line in log_text.splitlines() if line.strip())
        if line_count == 0:
            check.status = CheckStatus.ERROR
            check.detail = "proxy log is empty: nothing to scan (was it collected?)"
            return check
        leaks = find_token_leaks(log_text, tokens)
        check.status = CheckStatus.PASS
        if not leaks:
            check.detail = f"no token in {line_count} log lines"
            return check
        names = sorted({leak.token_name for leak in leaks})
        check.detail = "token found in proxy logs (security finding)"
        check.evidence = [str(leak) for leak in leaks[:5]]
        cell.findings.append(
            SecurityFinding(
                kind="token-leak",
                detail=(f"{', '.join(names)} token(s) in the proxy's log: {len(leaks)} line(s) of {line_count}"),
                evidence=[str(leak) for leak in leaks[:10]],
            )
        )
    return check
