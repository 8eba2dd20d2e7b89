"""The metrics checks: which tokens the proxy lets through to the manager's metrics (auth
paths) and whether what comes back is the controller's Prometheus text (content)."""

from __future__ import annotations

from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families

from e2e.checks.session import BODY_EVIDENCE_CHARS, get, response_evidence
from e2e.results import CellResult, CheckResult, CheckStatus, timed_check
from e2e.text import one_line

#: The controller-runtime counter that proves the manager's metrics flow through the proxy.
RECONCILE_METRIC = "controller_runtime_reconcile_total"
RECONCILE_CONTROLLER = "inferenceservice"

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
) -> list[CheckResult]:
    """The four authentication/authorization paths of the proxy, and the metrics behind it.

    ``metrics_url`` is the full URL of the proxy's metrics path, e.g.
    ``https://127.0.0.1:18443/metrics``. Records ``metrics-no-token`` (401),
    ``metrics-garbage-token`` (401), ``metrics-forbidden`` (403 for a valid token without
    RBAC), ``metrics-authorized`` (200 for the metrics-reader token) and ``metrics-content``
    (the body parses as Prometheus text and has ``controller_runtime_reconcile_total`` with
    ``controller="inferenceservice"``). If the endpoint stays unreachable for
    ``connect_wait_s`` the first check is an error and the rest are skipped.
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
        results.append(check_metrics_content(cell, authorized_body))
    return results


def check_metrics_content(cell: CellResult, metrics_text: str) -> CheckResult:
    """``metrics-content``: the manager's controller-runtime metrics reach the client."""
    with timed_check(cell, "metrics-content") as check:
        try:
            families = list(text_string_to_metric_families(metrics_text))
        except (ValueError, TypeError, IndexError) as exc:
            check.status = CheckStatus.FAIL
            check.detail = f"body is not Prometheus text: {one_line(exc)}"
            check.evidence = [one_line(metrics_text, BODY_EVIDENCE_CHARS)]
            return check
        reconciles = [
            sample
            for family in families
            for sample in family.samples
            if sample.name == RECONCILE_METRIC and sample.labels.get("controller") == RECONCILE_CONTROLLER
        ]
        controllers = sorted(
            {
                sample.labels.get("controller", "")
                for family in families
                for sample in family.samples
                if sample.name == RECONCILE_METRIC
            }
        )
        if reconciles:
            total = sum(sample.value for sample in reconciles)
            check.status = CheckStatus.PASS
            check.detail = (
                f'{RECONCILE_METRIC}{{controller="{RECONCILE_CONTROLLER}"}} present '
                f"({len(reconciles)} series, total {total:g})"
            )
        else:
            check.status = CheckStatus.FAIL
            check.detail = (
                f'no {RECONCILE_METRIC}{{controller="{RECONCILE_CONTROLLER}"}} in {len(families)} metric families'
            )
        check.evidence = [
            f"{RECONCILE_METRIC} controllers seen: {', '.join(controllers) or 'none'}",
            f"families: {', '.join(sorted(f.name for f in families)[:15])}",
        ]
    return check


def _skipped(cell: CellResult, name: str, reason: str) -> CheckResult:
    return cell.add(CheckResult(name=name, status=CheckStatus.SKIPPED, detail=reason))
