"""The checks a cell runs, shared by both tiers, one module per concern:

- ``metrics``: the metrics auth paths (which tokens the proxy lets through) and content;
- ``metrics_services``: every other Service that publishes a controller's metrics;
- ``image``: the image in use (template and pods);
- ``inference``: KServe's v1/v2 inference protocols against the sample models;
- ``token_leak``: tokens in the proxy's logs, in any form;
- ``migration``: availability while the proxy image is swapped in place;
- ``session``: the shared HTTP session (self-signed TLS) and connection retries.

Every check talks to the API server through the ``kubernetes`` client or to an endpoint by
URL, never to a provider's internals, and records a ``CheckResult`` (name, status, one-line
detail, evidence, duration) on the ``CellResult`` it is given. Checks fail fast with
evidence: the only retries are short, bounded ones on connection errors while an endpoint
comes up. This package re-exports what the harness and its tests use.
"""

from e2e.checks.image import check_image_in_use
from e2e.checks.inference import (
    IRIS_EXPECTED,
    IRIS_INPUT,
    InferenceError,
    Protocol,
    check_inference,
    infer_v2,
    predict_v1,
    record_inference_not_checked,
    record_inference_not_ready,
)
from e2e.checks.metrics import check_metrics_auth, check_metrics_content
from e2e.checks.migration import InferenceTarget, MetricsProber, check_probe
from e2e.checks.token_leak import check_token_leak, find_token_leaks, token_forms

__all__ = [
    "IRIS_EXPECTED",
    "IRIS_INPUT",
    "InferenceError",
    "InferenceTarget",
    "MetricsProber",
    "Protocol",
    "check_image_in_use",
    "check_inference",
    "check_metrics_auth",
    "check_metrics_content",
    "check_probe",
    "check_token_leak",
    "find_token_leaks",
    "infer_v2",
    "predict_v1",
    "record_inference_not_checked",
    "record_inference_not_ready",
    "token_forms",
]
