"""Wait until the manager behind the proxy reconciles: its reconcile counter is exported.

A controller pod that replaced another (every proxy-image swap replaces the pod) runs its
controllers only once it holds the leader lease, which the old pod may keep until the lease
expires (KServe's manager: about 15-20 s on kind). Until then ``/metrics`` answers without
``controller_runtime_reconcile_total``. The metrics checks run after this wait; how long it
took is a note of the cell (the manager's reconcile gap, not a proxy failure).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import requests
import tenacity
from prometheus_client.parser import text_string_to_metric_families

from e2e.checks.session import get

log = logging.getLogger(__name__)

RECONCILE_METRIC = "controller_runtime_reconcile_total"
RECONCILE_CONTROLLER = "inferenceservice"
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ReconcileWait:
    seconds: float
    reconciling: bool
    last_seen: str


def reconcile_series(metrics_text: str) -> int:
    """How many ``controller_runtime_reconcile_total{controller="inferenceservice"}`` series
    the text has (0 when it has none or is not Prometheus text)."""
    try:
        families = list(text_string_to_metric_families(metrics_text))
    except (ValueError, TypeError, IndexError):
        return 0
    return sum(
        1
        for family in families
        for sample in family.samples
        if sample.name == RECONCILE_METRIC and sample.labels.get("controller") == RECONCILE_CONTROLLER
    )


class _NotYet(Exception):
    pass


def wait_until_reconciling(metrics_url: str, token: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> ReconcileWait:
    """Poll ``metrics_url`` with ``token`` (bounded backoff) until the reconcile counter shows."""
    started = time.monotonic()
    last = ["nothing yet"]

    def probe() -> bool:
        """True once reconciling; False when the proxy itself does not serve the metrics
        (the checks then say why, at once); raises _NotYet while the manager is not ready."""
        try:
            response = get(metrics_url, token, connect_wait_s=2.0)
        except requests.RequestException as exc:
            last[0] = f"unreachable ({type(exc).__name__})"
            return False
        if response.status_code != 200:
            last[0] = f"HTTP {response.status_code}"
            return False
        if reconcile_series(response.text) == 0:
            last[0] = f'HTTP 200 without {RECONCILE_METRIC}{{controller="{RECONCILE_CONTROLLER}"}}'
            raise _NotYet
        return True

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout_s),
        wait=tenacity.wait_exponential(multiplier=0.5, min=0.5, max=4),
        retry=tenacity.retry_if_exception_type(_NotYet),
        before_sleep=lambda state: log.info(
            "waiting for the manager to reconcile (leader election after a pod replacement); last saw: %s", last[0]
        ),
        reraise=True,
    )
    try:
        reconciling = bool(retrying(probe))
    except _NotYet:
        reconciling = False
    return ReconcileWait(round(time.monotonic() - started, 1), reconciling, "reconciling" if reconciling else last[0])
