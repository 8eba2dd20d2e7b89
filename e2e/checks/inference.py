"""Inference through the sample InferenceServices: KServe's v1 (``:predict``) and v2 (``/infer``)
protocols, and the check that the iris model answers as KServe's own e2e expects."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import requests

from e2e.checks.session import BODY_EVIDENCE_CHARS, REQUEST_TIMEOUT_S, connection_retrying
from e2e.errors import HarnessError
from e2e.results import CellResult, CheckResult, CheckStatus, timed_check
from e2e.text import one_line

#: KServe's own e2e input for the sklearn-iris sample and the predictions it expects.
IRIS_INPUT: list[list[float]] = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]
IRIS_EXPECTED: list[int] = [1, 1]

Protocol = Literal["v1", "v2"]


class InferenceError(HarnessError):
    """A model server answered an inference request with an error or an unexpected shape."""


def _post_json(url: str, body: Mapping[str, Any], *, connect_wait_s: float) -> Any:
    for attempt in connection_retrying(connect_wait_s):
        with attempt:
            # The KServe model server answers :predict only with Content-Type application/json.
            response = requests.post(
                url,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=REQUEST_TIMEOUT_S,
            )
    if response.status_code != 200:
        snippet = one_line(response.text, BODY_EVIDENCE_CHARS)
        raise InferenceError(f"POST {url} -> {response.status_code}: {snippet}")
    try:
        return response.json()
    except ValueError as exc:
        raise InferenceError(f"POST {url} -> 200 but the body is not JSON: {one_line(exc)}") from exc


def predict_v1(base_url: str, model_name: str, instances: Sequence[Any], *, connect_wait_s: float = 5.0) -> list[Any]:
    """The v1 protocol: ``POST /v1/models/<name>:predict`` → ``predictions``."""
    url = f"{base_url.rstrip('/')}/v1/models/{model_name}:predict"
    answer = _post_json(url, {"instances": list(instances)}, connect_wait_s=connect_wait_s)
    if not isinstance(answer, dict) or not isinstance(answer.get("predictions"), list):
        raise InferenceError(f"POST {url}: no 'predictions' list in {str(answer)[:BODY_EVIDENCE_CHARS]}")
    predictions: list[Any] = answer["predictions"]
    return predictions


def infer_v2(
    base_url: str, model_name: str, rows: Sequence[Sequence[float]], *, connect_wait_s: float = 5.0
) -> list[Any]:
    """The v2 (open inference) protocol: ``POST /v2/models/<name>/infer`` → outputs[0].data.

    ``data`` is sent flattened in row-major order, which the protocol defines and every
    server (KServe's Python server, MLServer) accepts together with ``shape``.
    """
    url = f"{base_url.rstrip('/')}/v2/models/{model_name}/infer"
    width = len(rows[0]) if rows else 0
    tensor = {
        "name": "input-0",
        "shape": [len(rows), width],
        "datatype": "FP32",
        "data": [value for row in rows for value in row],
    }
    answer = _post_json(url, {"inputs": [tensor]}, connect_wait_s=connect_wait_s)
    try:
        data: list[Any] = answer["outputs"][0]["data"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InferenceError(f"POST {url}: no outputs[0].data in {str(answer)[:BODY_EVIDENCE_CHARS]}") from exc
    return data


def check_inference(
    cell: CellResult, base_url: str, model_name: str, protocol: Protocol, *, connect_wait_s: float = 5.0
) -> CheckResult:
    """``inference-v1`` / ``inference-v2``: the iris sample predicts ``IRIS_EXPECTED``."""
    with timed_check(cell, f"inference-{protocol}") as check:
        try:
            if protocol == "v1":
                got = predict_v1(base_url, model_name, IRIS_INPUT, connect_wait_s=connect_wait_s)
            else:
                got = infer_v2(base_url, model_name, IRIS_INPUT, connect_wait_s=connect_wait_s)
        except InferenceError as exc:
            check.status = CheckStatus.FAIL
            check.detail = one_line(exc)
            return check
        except requests.RequestException as exc:
            check.status = CheckStatus.ERROR
            check.detail = f"{base_url} unreachable: {type(exc).__name__}"
            check.evidence = [one_line(exc)]
            return check
        check.evidence = [f"model {model_name} at {base_url}: input {IRIS_INPUT} -> {got}"]
        if got == IRIS_EXPECTED:
            check.status = CheckStatus.PASS
            check.detail = f"{model_name} predicted {got}"
        else:
            check.status = CheckStatus.FAIL
            check.detail = f"expected {IRIS_EXPECTED}, got {got}"
    return check


def record_inference_not_checked(cell: CellResult, protocol: Protocol, reason: str) -> CheckResult:
    """``inference-v1`` / ``inference-v2`` could not run here (no model server image): skipped."""
    return cell.add(CheckResult(f"inference-{protocol}", CheckStatus.SKIPPED, reason))


def record_inference_not_ready(
    cell: CellResult, protocol: Protocol, message: str, evidence: Sequence[str]
) -> CheckResult:
    """``inference-v1`` / ``inference-v2``: KServe never reported the InferenceService
    Ready, so nothing could be asked: a failure, with KServe's condition messages."""
    return cell.add(
        CheckResult(f"inference-{protocol}", CheckStatus.FAIL, one_line(message), evidence=list(evidence))
    )
