"""The metrics checks: which tokens the proxy lets through to the manager's metrics (auth
paths) and whether what comes back is the controller's Prometheus text (content), with a
reconcile count above zero once the sample InferenceServices have been reconciled."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import tenacity
from prometheus_client.parser import text_string_to_metric_families

from e2e.checks.session import BODY_EVIDENCE_CHARS, get, response_evidence
from e2e.results import CellResult, CheckResult, CheckStatus, timed_check
from e2e.text import one_line

#: The controller-runtime counter that proves the manager's metrics flow through the proxy.
RECONCILE_METRIC = "controller_runtime_reconcile_total"
RECONCILE_CONTROLLER = "inferenceservice"
#: What the local tier's stand-in manager adds to its output (``e2e/local/metrics_upstream.py``):
#: a result read from it is a stand-in's, and its detail says so.
STAND_IN_METRIC = "kserve_compat_stand_in_info"
#: How long metrics-content waits for the reconcile count to leave zero (the samples were
#: applied a moment ago; a real manager reconciles them in about a second).
CONTENT_WAIT_S = 30.0

log = logging.getLogger(__name__)

#: A JWT-shaped token no API server issued (alg "none"): the proxy's TokenReview must reject
#: it. Not a secret; a scenario may add it to the token-leak scan.
GARBAGE_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJrc2VydmUtY29tcGF0LWdhcmJhZ2UifQ.bm90LWEtc2lnbmF0dXJl"


@dataclass(frozen=True)
class _AuthCase:
    check_name: str
    description: str
    expected_status: int


def check_metrics_auth(
    cell: CellResult,
    metrics_url: str,
    *,
    metrics_reader_token: str,
    no_access_token: str,
    connect_wait_s: float = 5.0,
    content_wait_s: float = CONTENT_WAIT_S,
) -> list[CheckResult]:
    """The four authentication/authorization paths of the proxy, and the metrics behind it.

    ``metrics_url`` is the full URL of the proxy's metrics path, e.g.
    ``https://127.0.0.1:18443/metrics``. Records ``metrics-no-token`` (401),
    ``metrics-garbage-token`` (401), ``metrics-forbidden`` (403 for a valid token without
    RBAC), ``metrics-authorized`` (200 for the metrics-reader token) and ``metrics-content``
    (the body parses as Prometheus text and its ``controller_runtime_reconcile_total``
    with ``controller="inferenceservice"`` sums above zero; read again with the reader's
    token for up to ``content_wait_s`` while it does not). If the endpoint stays
    unreachable for ``connect_wait_s`` the first check is an error and the rest are skipped.
    """
    cases: list[tuple[_AuthCase, str | None]] = [
        (_AuthCase("metrics-no-token", "no token", 401), None),
        (_AuthCase("metrics-garbage-token", "garbage token", 401), GARBAGE_TOKEN),
        (_AuthCase("metrics-forbidden", "token without RBAC", 403), no_access_token),
        (_AuthCase("metrics-authorized", "metrics-reader token", 200), metrics_reader_token),
    ]
    results: list[CheckResult] = []
    authorized_body: str | None = None
    unreachable: str | None = None
    for case, token in cases:
        if unreachable is not None:
            results.append(_skipped(cell, case.check_name, unreachable))
            continue
        with timed_check(cell, case.check_name) as check:
            try:
                response = get(metrics_url, token, connect_wait_s=connect_wait_s)
            except requests.RequestException as exc:
                check.status = CheckStatus.ERROR
                check.detail = f"{case.description}: {metrics_url} unreachable: {type(exc).__name__}"
                check.evidence = [one_line(exc)]
                unreachable = f"not attempted: {metrics_url} unreachable"
            else:
                got = response.status_code
                check.status = CheckStatus.PASS if got == case.expected_status else CheckStatus.FAIL
                check.detail = f"{case.description}: expected {case.expected_status}, got {got}"
                check.evidence = response_evidence(response)
                if case.expected_status == 200 and got == 200:
                    authorized_body = response.text
        results.append(check)

    if authorized_body is None:
        reason = unreachable or "not attempted: the metrics-reader token did not get 200"
        results.append(_skipped(cell, "metrics-content", reason))
    else:
        results.append(
            check_metrics_content(
                cell,
                authorized_body,
                refetch=lambda: get(metrics_url, metrics_reader_token, connect_wait_s=connect_wait_s).text,
                wait_s=content_wait_s,
            )
        )
    return results


@dataclass
class _Reading:
    """What one scrape says about the reconcile counter."""

    families: list[str] = field(default_factory=list)
    series: int = 0
    total: float = 0.0
    controllers: list[str] = field(default_factory=list)
    stand_in: str = ""  # the stand-in's reason, when a stand-in served it


def _read(metrics_text: str) -> _Reading:
    """Parse Prometheus text (ValueError and friends when it is not)."""
    reading = _Reading()
    controllers: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        reading.families.append(family.name)
        for sample in family.samples:
            if sample.name == STAND_IN_METRIC:
                reading.stand_in = sample.labels.get("reason", "unnamed")
            if sample.name != RECONCILE_METRIC:
                continue
            controllers.add(sample.labels.get("controller", ""))
            if sample.labels.get("controller") == RECONCILE_CONTROLLER:
                reading.series += 1
                reading.total += sample.value
    reading.controllers = sorted(controllers)
    return reading


class _NotYet(Exception):
    pass


def _wait_for_reconciles(refetch: Callable[[], str], wait_s: float) -> _Reading | None:
    """Scrape again until the reconcile count is above zero; None if it never is."""
    log.info("metrics-content: waiting up to %.0fs for %s > 0", wait_s, _SERIES)

    def attempt() -> _Reading:
        reading = _read(refetch())
        if reading.total <= 0:
            raise _NotYet()
        return reading

    try:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((_NotYet, requests.RequestException, ValueError)),
            stop=tenacity.stop_after_delay(wait_s),
            wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )(attempt)
    except (_NotYet, requests.RequestException, ValueError, TypeError, IndexError):
        return None


_SERIES = f'{RECONCILE_METRIC}{{controller="{RECONCILE_CONTROLLER}"}}'


def check_metrics_content(
    cell: CellResult, metrics_text: str, *, refetch: Callable[[], str] | None = None, wait_s: float = 0.0
) -> CheckResult:
    """``metrics-content``: the manager's controller-runtime metrics reach the client, and
    its InferenceService controller has reconciled (count > 0; with ``refetch``, scraped
    again for up to ``wait_s`` until it has). A stand-in's output passes only as a
    labelled stand-in result."""
    with timed_check(cell, "metrics-content") as check:
        try:
            reading = _read(metrics_text)
        except (ValueError, TypeError, IndexError) as exc:
            check.status = CheckStatus.FAIL
            check.detail = f"body is not Prometheus text: {one_line(exc)}"
            check.evidence = [one_line(metrics_text, BODY_EVIDENCE_CHARS)]
            return check
        waited = ""
        if reading.total <= 0 and refetch is not None and wait_s > 0:
            later = _wait_for_reconciles(refetch, wait_s)
            reading = later or reading
            waited = f" (read again for up to {wait_s:.0f}s)"
        if reading.series and reading.total > 0:
            check.status = CheckStatus.PASS
            check.detail = f"{_SERIES} present ({reading.series} series, total {reading.total:g})"
        elif reading.series:
            check.status = CheckStatus.FAIL
            check.detail = f"{_SERIES} is 0{waited}: the controller reconciled no InferenceService"
        else:
            check.status = CheckStatus.FAIL
            check.detail = f"no {_SERIES} in {len(reading.families)} metric families{waited}"
        check.evidence = [
            f"{RECONCILE_METRIC} controllers seen: {', '.join(reading.controllers) or 'none'}",
            f"families: {', '.join(sorted(reading.families)[:15])}",
        ]
        if reading.stand_in:
            check.detail = f"STAND-IN RESULT, not KServe's manager ({reading.stand_in}): {check.detail}"
            check.evidence.insert(0, f"served by kserve-compat's stand-in ({STAND_IN_METRIC}): {reading.stand_in}")
    return check


def _skipped(cell: CellResult, name: str, reason: str) -> CheckResult:
    return cell.add(CheckResult(name=name, status=CheckStatus.SKIPPED, detail=reason))
