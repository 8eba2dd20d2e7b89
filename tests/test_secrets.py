"""Secrets never leave the process: registered tokens, their encodings, JWT-shaped strings,
bearer headers and kubeconfig credentials are redacted, also on the way through logging."""

from __future__ import annotations

import base64
import io
import logging
import secrets as random_secrets
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

from e2e.secrets import (
    REDACTED,
    REGISTRY,
    RedactingFilter,
    SecretRegistry,
    encodings,
    install_log_redaction,
    redact,
    register,
)

# A shape of real ServiceAccount token, but never issued by anything (unregistered).
UNKNOWN_JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vdC1yZWFsIn0"
    ".eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3NlcnZlOm1ldHJpY3MtcmVhZGVyIn0"
    ".c2lnbmF0dXJlLXRoYXQtaXMtbm90LXJlYWwtYXQtYWxs"
)


def fresh_token() -> str:
    """An opaque token (not JWT-shaped, so only registration can catch it)."""
    return "tok-" + random_secrets.token_hex(16)


@pytest.fixture
def registry() -> SecretRegistry:
    return SecretRegistry()


def test_raw_secret_is_redacted_and_the_rest_kept(registry: SecretRegistry) -> None:
    token = fresh_token()
    assert registry.add(token) == token
    assert registry.redact(f"GET /metrics token={token} -> 200") == f"GET /metrics token={REDACTED} -> 200"
    assert registry.redact(f"{token}{token}") == REDACTED * 2


def test_base64_forms_std_and_url_with_and_without_padding(registry: SecretRegistry) -> None:
    secret = "tok?>~>?~token-xyz1"  # encodes with '+' / '-' and one '='
    raw = secret.encode()
    std, url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert std != url and std.endswith("=")  # the forms really differ
    registry.add(secret)
    for form in (std, url, std.rstrip("="), url.rstrip("=")):
        text = f'data: "{form}" end'
        assert registry.redact(text) == f'data: "{REDACTED}" end', form


def test_url_quoted_form(registry: SecretRegistry) -> None:
    secret = "p@ss/word+key=value&x"
    quoted = urllib.parse.quote(secret, safe="")
    assert quoted != secret
    registry.add(secret)
    assert registry.redact(f"https://h/cb?token={quoted}&next=1") == f"https://h/cb?token={REDACTED}&next=1"
    assert encodings(secret) >= {secret, quoted}


def test_short_strings_are_not_registered(registry: SecretRegistry) -> None:
    for short in ("", "abc", "1234567"):
        assert registry.add(short) == short
    assert registry.secrets() == []
    assert registry.redact("abc 1234567 abc") == "abc 1234567 abc"
    assert registry.add("12345678") == "12345678"  # eight characters: a credential
    assert registry.secrets() == ["12345678"]


def test_registering_twice_keeps_one(registry: SecretRegistry) -> None:
    token = fresh_token()
    registry.add(token)
    registry.add(token)
    assert registry.secrets() == [token]


def test_plain_text_is_untouched(registry: SecretRegistry) -> None:
    registry.add(fresh_token())
    text = "deployment kserve/kserve-controller-manager: 1/1 updated, image quay.io/brancz/kube-rbac-proxy:v0.18.0"
    assert registry.redact(text) == text


def test_unknown_jwt_shaped_strings_are_redacted(registry: SecretRegistry) -> None:
    text = f"I1127 proxy.go:42] token {UNKNOWN_JWT} accepted"
    assert registry.redact(text) == f"I1127 proxy.go:42] token {REDACTED} accepted"
    assert UNKNOWN_JWT not in redact(f"x{UNKNOWN_JWT}x")


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer {token}",
        "authorization: bearer {token}",
        "AUTHORIZATION:   Bearer {token}",
    ],
)
def test_bearer_headers_are_redacted(registry: SecretRegistry, header: str) -> None:
    token = "opaque" + random_secrets.token_hex(8)
    line = header.format(token=token)
    cleaned = registry.redact(f"request headers: {line}\n")
    assert token not in cleaned
    assert cleaned == f"request headers: {line.replace(token, REDACTED)}\n"


def test_token_fields_in_json_bodies_are_redacted(registry: SecretRegistry) -> None:
    token = "opaque" + random_secrets.token_hex(8)
    body = f'{{"kind":"TokenRequest","status":{{"token":"{token}","expirationTimestamp":"x"}}}}'
    cleaned = registry.redact(body)
    assert token not in cleaned and '"expirationTimestamp":"x"' in cleaned


def test_kubeconfig_credentials_are_redacted(registry: SecretRegistry) -> None:
    kubeconfig = (
        "apiVersion: v1\n"
        "clusters:\n"
        "- cluster:\n"
        "    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n"
        "    server: https://127.0.0.1:6443\n"
        "users:\n"
        "- name: admin\n"
        "  user:\n"
        "    client-certificate-data: LS0tLS1DRVJULURBVEEtLS0tLQ==\n"
        "    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ==\n"
        "    token: abcdef0123456789\n"
        "    password: hunter2hunter2\n"
    )
    cleaned = registry.redact(kubeconfig)
    for secret in ("LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ==", "abcdef0123456789", "hunter2hunter2"):
        assert secret not in cleaned
    assert f"    client-key-data: {REDACTED}\n" in cleaned
    assert f"    token: {REDACTED}\n" in cleaned
    # what is not a credential stays readable
    assert "    server: https://127.0.0.1:6443\n" in cleaned
    assert "    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n" in cleaned


def test_the_process_registry(registry: SecretRegistry) -> None:
    token = fresh_token()
    assert register(token) == token
    assert token in REGISTRY.secrets()
    assert redact(f"a {token} b") == f"a {REDACTED} b"
    assert registry.redact(f"a {token} b") == f"a {token} b"  # registries are separate


def test_registering_from_threads(registry: SecretRegistry) -> None:
    tokens = [[fresh_token() for _ in range(40)] for _ in range(12)]
    barrier = threading.Barrier(len(tokens) + 1)
    errors: list[BaseException] = []
    stop = threading.Event()

    def add(batch: list[str]) -> None:
        try:
            barrier.wait()
            for token in batch:
                registry.add(token)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        try:
            barrier.wait()
            while not stop.is_set():
                registry.redact(" ".join(tokens[0]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(batch,)) for batch in tokens]
    reader = threading.Thread(target=read)
    for thread in [*threads, reader]:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    reader.join()
    assert errors == []
    everything = [token for batch in tokens for token in batch]
    assert sorted(registry.secrets()) == sorted(everything)
    assert registry.redact(" ".join(everything)) == " ".join([REDACTED] * len(everything))


# -- logging -----------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose only handler writes to a StringIO, with the redacting filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test-secrets-{random_secrets.token_hex(4)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    install_log_redaction(logger)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_log_messages_and_args_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    token = register(fresh_token())
    logger.info(f"minted {token}")
    logger.info("scraping with %s as %s", token, "metrics-reader")
    logger.debug("headers %r", {"Authorization": f"Bearer {token}"})
    logger.warning("proxy said %s", UNKNOWN_JWT)
    output = stream.getvalue()
    assert token not in output and UNKNOWN_JWT not in output
    lines = output.splitlines()
    assert lines[0] == f"INFO minted {REDACTED}"
    assert lines[1] == f"INFO scraping with {REDACTED} as metrics-reader"
    assert lines[3] == f"WARNING proxy said {REDACTED}"


def test_a_clean_record_is_left_as_it_was(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("%d cells in %d groups", 4, 2)
    assert stream.getvalue() == "INFO 4 cells in 2 groups\n"


def test_install_log_redaction_attaches_one_filter_per_handler(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, _ = captured
    install_log_redaction(logger)
    install_log_redaction(logger)
    assert logger.handlers
    for handler in logger.handlers:
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1


def test_a_token_in_a_logged_exception_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    token = register(fresh_token())
    try:
        raise ValueError(f"TokenRequest answered {token}")
    except ValueError:
        logger.exception("minting failed")
    output = stream.getvalue()
    assert "minting failed" in output and "ValueError" in output
    assert token not in output
