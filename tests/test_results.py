"""The result model: verdict rules, JSON round trip, timed checks, redaction on the way in."""

from __future__ import annotations

import json
import secrets as random_secrets
import time

import pytest
from helpers.cells import new_cell

from e2e.results import CellResult, CheckResult, CheckStatus, SecurityFinding, Verdict, timed_check
from e2e.secrets import REDACTED, register


def check(name: str, status: CheckStatus, detail: str = "") -> CheckResult:
    return CheckResult(name=name, status=status, detail=detail)


def token() -> str:
    return register("tok-" + random_secrets.token_hex(16))


# -- conclude() --------------------------------------------------------------------------


def test_all_checks_pass_is_a_pass() -> None:
    cell = new_cell()
    cell.add(check("install", CheckStatus.PASS))
    cell.add(check("metrics-no-token", CheckStatus.PASS, "401"))
    assert cell.conclude() is Verdict.PASS
    assert cell.verdict is Verdict.PASS and cell.reason == ""


def test_skipped_checks_do_not_fail_a_cell() -> None:
    cell = new_cell()
    cell.add(check("install", CheckStatus.PASS))
    cell.add(check("inference-v2", CheckStatus.SKIPPED, "no v2 runtime"))
    assert cell.conclude() is Verdict.PASS


def test_no_checks_stays_skipped() -> None:
    cell = new_cell()
    assert cell.conclude() is Verdict.SKIPPED
    assert cell.reason == ""


def test_an_explicit_skip_with_a_reason_is_kept() -> None:
    cell = new_cell(verdict=Verdict.SKIPPED, reason="kserve v0.11.2 kserve.yaml: not in the offline directory")
    cell.add(check("install", CheckStatus.PASS))
    assert cell.conclude() is Verdict.SKIPPED
    assert cell.reason.startswith("kserve v0.11.2")


def test_a_failing_check_fails_the_cell_with_its_reason() -> None:
    cell = new_cell()
    cell.add(check("install", CheckStatus.PASS))
    cell.add(check("metrics-forbidden", CheckStatus.FAIL, "expected 403, got 200"))
    cell.add(check("metrics-authorized", CheckStatus.ERROR, "connection refused"))
    assert cell.conclude() is Verdict.FAIL
    assert cell.reason == "metrics-forbidden: expected 403, got 200"  # the first failing check
    assert cell.failing_check is not None and cell.failing_check.name == "metrics-forbidden"


def test_an_error_check_makes_an_error_verdict() -> None:
    cell = new_cell()
    cell.add(check("install", CheckStatus.ERROR, "ApplyError: CRD not Established"))
    cell.add(check("metrics-forbidden", CheckStatus.FAIL, "expected 403, got 200"))
    assert cell.conclude() is Verdict.ERROR
    assert cell.reason == "install: ApplyError: CRD not Established"


@pytest.mark.parametrize("verdict", [Verdict.IMAGE_UNAVAILABLE, Verdict.ERROR])
def test_explicit_image_unavailable_and_error_are_kept(verdict: Verdict) -> None:
    cell = new_cell(verdict=verdict, reason="ErrImagePull gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1")
    cell.add(check("install", CheckStatus.PASS))
    cell.add(check("proxy-rollout", CheckStatus.FAIL, "pull error"))
    assert cell.conclude() is verdict
    assert cell.reason.startswith("ErrImagePull")


def test_conclude_is_idempotent() -> None:
    cell = new_cell()
    cell.add(check("metrics-no-token", CheckStatus.FAIL, "expected 401, got 200"))
    first = cell.conclude()
    reason = cell.reason
    assert cell.conclude() is first and cell.reason == reason


def test_an_explicit_fail_from_a_failed_rollout_is_kept() -> None:
    # What Scenario.run does when wait_for_rollout raises RolloutFailed inside timed_check("proxy-rollout"):
    cell = new_cell()
    cell.add(check("install", CheckStatus.PASS))
    with pytest.raises(RuntimeError), timed_check(cell, "proxy-rollout"):
        raise RuntimeError("deployment kserve/kserve-controller-manager: pods are failing: CrashLoopBackOff")
    cell.verdict = Verdict.FAIL  # e2e.cell.CellRun.fail_with for RolloutFailed
    cell.reason = "deployment kserve/kserve-controller-manager: pods are failing: CrashLoopBackOff"
    assert cell.conclude() is Verdict.FAIL


# -- timed_check ---------------------------------------------------------------------------


def test_timed_check_records_the_check_and_its_duration() -> None:
    cell = new_cell()
    with timed_check(cell, "metrics-no-token") as result:
        time.sleep(0.02)
        result.status, result.detail = CheckStatus.PASS, "401 as expected"
    assert cell.checks == [result]
    assert result.status is CheckStatus.PASS and result.detail == "401 as expected"
    assert result.duration_s >= 0.02


def test_a_body_that_sets_nothing_is_an_error() -> None:
    cell = new_cell()
    with timed_check(cell, "image-in-use"):
        pass
    (result,) = cell.checks
    assert result.status is CheckStatus.ERROR and result.detail == "did not complete"


def test_an_exception_becomes_an_error_check_and_is_re_raised() -> None:
    cell = new_cell()
    secret = token()
    with pytest.raises(ConnectionError, match="refused"), timed_check(cell, "metrics-authorized") as result:
        result.status = CheckStatus.PASS  # set too early: the exception wins
        raise ConnectionError(f"refused with {secret}\nsecond line of a long traceback-ish message")
    assert cell.checks == [result]
    assert result.status is CheckStatus.ERROR
    assert result.detail == f"ConnectionError: refused with {REDACTED}"
    assert result.duration_s >= 0
    assert cell.conclude() is Verdict.ERROR


def test_detail_and_evidence_set_in_the_body_are_redacted() -> None:
    cell = new_cell()
    secret = token()
    with timed_check(cell, "token-leak") as result:
        result.status = CheckStatus.FAIL
        result.detail = f"token {secret} found in the proxy's logs"
        result.evidence.append(f"I1127 round_trippers.go:553] Authorization: Bearer {secret}")
    assert secret not in result.detail and secret not in "".join(result.evidence)
    assert result.detail == f"token {REDACTED} found in the proxy's logs"


# -- redaction on construction, JSON round trip ----------------------------------------------


def test_redaction_on_construction() -> None:
    secret = token()
    result = CheckResult("metrics-authorized", CheckStatus.FAIL, f"sent {secret}", evidence=[f"body {secret}"])
    finding = SecurityFinding("token-leak", f"{secret} in logs", evidence=[f"line with {secret}"])
    cell = new_cell(reason=f"failed with {secret}")
    for text in (result.detail, *result.evidence, finding.detail, *finding.evidence, cell.reason):
        assert secret not in text and REDACTED in text


def test_to_dict_from_dict_round_trip_through_json() -> None:
    cell = new_cell(variant="quiet", deviations=["no Knative"], notes=["port 8443 -> 38443"], duration_s=12.5)
    cell.add(CheckResult("install", CheckStatus.PASS, "installed", duration_s=1.25))
    cell.add(CheckResult("metrics-forbidden", CheckStatus.FAIL, "expected 403, got 200", evidence=["HTTP 200"]))
    cell.findings.append(SecurityFinding("token-leak", "a token in the logs", evidence=["<redacted> seen"]))
    cell.conclude()
    data = json.loads(json.dumps(cell.to_dict()))
    assert data["verdict"] == "fail"
    assert [c["status"] for c in data["checks"]] == ["pass", "fail"]
    again = CellResult.from_dict(data)
    assert again == cell
    assert again.verdict is Verdict.FAIL and again.checks[1].status is CheckStatus.FAIL
    assert again.to_dict() == cell.to_dict()


def test_from_dict_of_a_minimal_record() -> None:
    data = new_cell().to_dict()
    for key in ("checks", "findings", "verdict"):
        del data[key]
    cell = CellResult.from_dict(data)
    assert cell.verdict is Verdict.SKIPPED and cell.checks == [] and cell.findings == []


@pytest.mark.parametrize("verdict", list(Verdict))
def test_every_verdict_survives_the_round_trip(verdict: Verdict) -> None:
    cell = new_cell(verdict=verdict, reason="why")
    assert CellResult.from_dict(json.loads(json.dumps(cell.to_dict()))).verdict is verdict
