"""Keeping secrets (ServiceAccount tokens, kubeconfig credentials) out of everything we write.

Every token the harness mints is registered here the moment it exists; ``redact`` then
replaces it (and its obvious encodings, and any JWT-shaped string) wherever text leaves
the process: reports, diagnostics, evidence and assertion messages call it directly.
Where a call site may forget, the sink applies it: ``RedactingFilter`` on log handlers
(the CLI's root handlers through ``install_log_redaction``; pytest's capture, ``caplog``,
live-log and log-file handlers through the ``e2e.pytest_redaction`` plugin, which also
redacts every test report, the terminal and the JUnit XML of a pytest run).
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse

REDACTED = "<redacted>"

# JWTs look like three base64url segments; ServiceAccount tokens are JWTs. Catch ones we
# were never told about, too (e.g. a token echoed back by a proxy log line).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(authorization:\s*bearer\s+|\"token\"\s*:\s*\")([^\s\"']{8,})")
_KUBECONFIG_SECRET = re.compile(r"(?m)^(\s*(?:client-key-data|client-certificate-data|token|password):\s*)(\S+)")


def encodings(secret: str) -> set[str]:
    """The forms a secret can take in text: itself, base64 (std and url), URL-quoted."""
    raw = secret.encode()
    forms = {
        secret,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(secret, safe=""),
    }
    return {form for form in forms if form}


class SecretRegistry:
    """Secrets known to this process. Thread-safe: probers register from threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._secrets: list[str] = []

    def add(self, secret: str) -> str:
        if len(secret) < 8:  # too short to be a credential; redacting it would mangle text
            return secret
        with self._lock:
            if secret not in self._secrets:
                self._secrets.append(secret)
                self._forms |= encodings(secret)
        return secret

    def secrets(self) -> list[str]:
        with self._lock:
            return list(self._secrets)

    def redact(self, text: str) -> str:
        with self._lock:
            forms = sorted(self._forms, key=len, reverse=True)
        for form in forms:
            if form in text:
                text = text.replace(form, REDACTED)
        text = _JWT.sub(REDACTED, text)
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        return _KUBECONFIG_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


#: The process-wide registry: tokens minted anywhere in the harness land here.
REGISTRY = SecretRegistry()


def register(secret: str) -> str:
    """Remember a secret so that ``redact`` removes it; returns it unchanged."""
    return REGISTRY.add(secret)


def redact(text: str) -> str:
    """``text`` with every known secret, JWT-shaped string and kubeconfig credential removed."""
    return REGISTRY.redact(text)


class RedactingFilter(logging.Filter):
    """Applies ``redact`` to every record that passes through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # A logged exception (e.g. an API error body echoing a token) is text too.
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach ``RedactingFilter`` to every handler of ``logger`` (default: the root)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
