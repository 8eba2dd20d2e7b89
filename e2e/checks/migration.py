"""Availability during an image migration: a prober keeps asking the metrics endpoint and the
models while the proxy image is swapped in place, and the checks read its tallies."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import requests

from e2e.checks.inference import IRIS_EXPECTED, IRIS_INPUT, Protocol, infer_v2, predict_v1
from e2e.checks.session import self_signed_session
from e2e.results import CellResult, CheckResult, CheckStatus, timed_check
from e2e.secrets import redact
from e2e.text import error_line


@dataclass(frozen=True)
class InferenceTarget:
    """A model the prober keeps asking during a migration."""

    base_url: str
    model_name: str
    protocol: Protocol = "v1"
    # Ask only whether the model is ready (GET /v1/models/NAME), for a model whose input is
    # not known (an operator's own InferenceService): the same data path as a prediction.
    readiness_only: bool = False

    @property
    def name(self) -> str:
        return f"{'ready' if self.readiness_only else 'inference'}-{self.protocol}:{self.model_name}"


@dataclass
class TargetTally:
    """What the prober saw of one target. Times are seconds since the probe started."""

    name: str
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    first_failure_s: float | None = None
    last_failure_s: float | None = None
    recovered_s: float | None = None  # first success after the last failure
    last_ok: bool = False
    streak: int = 0  # successes in a row up to now
    last_error: str = ""

    @property
    def outage_s(self) -> float:
        """From the first failure until the first success after the last failure.

        If the target never recovered, until the end of the probe (the caller's
        ``ProbeSummary.duration_s``) — see ``ProbeSummary.outage_s``.
        """
        if self.first_failure_s is None:
            return 0.0
        end = self.recovered_s if self.recovered_s is not None else self.last_failure_s or 0.0
        return max(0.0, end - self.first_failure_s)


#: The timeline's resolution: requests are counted per bucket of this many seconds.
BUCKET_S = 0.5


@dataclass
class ProbeSummary:
    duration_s: float
    metrics: TargetTally
    inference: list[TargetTally] = field(default_factory=list)
    # [bucket start s, metrics ok, metrics failed, inference ok, inference failed], per BUCKET_S
    timeline: list[list[float]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # e.g. "swap": when the patch was sent

    def outage_s(self, tally: TargetTally) -> float:
        if tally.first_failure_s is not None and tally.recovered_s is None:
            return max(0.0, self.duration_s - tally.first_failure_s)
        return tally.outage_s


class MetricsProber:
    """Keeps calling the metrics endpoint and models in a background thread during a
    migration (the proxy image swapped in place), counting what failed and when.

    Bounded by ``max_requests`` rounds and ``max_duration_s``, whichever comes first, so a
    forgotten ``stop()`` cannot run forever.
    """

    def __init__(
        self,
        metrics_url: str,
        metrics_reader_token: str,
        inference: Sequence[InferenceTarget] = (),
        *,
        interval_s: float = 0.2,
        max_requests: int = 3000,
        max_duration_s: float = 600.0,
        request_timeout_s: float = 2.0,
    ) -> None:
        self._metrics_url = metrics_url
        self._token = metrics_reader_token
        self._inference = list(inference)
        self._interval_s = interval_s
        self._max_requests = max_requests
        self._max_duration_s = max_duration_s
        self._timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._finished: float | None = None
        self._metrics = TargetTally("metrics")
        self._models = {target.name: TargetTally(target.name) for target in self._inference}
        self._buckets: dict[int, list[int]] = {}  # bucket index -> [metrics ok, failed, inference ok, failed]
        self._marks: dict[str, float] = {}

    def start(self) -> MetricsProber:
        if self._thread is not None:
            raise RuntimeError("MetricsProber already started")
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="metrics-prober", daemon=True)
        self._thread.start()
        return self

    def mark(self, what: str) -> None:
        """Remember when ``what`` happened (seconds since the probe started), for the timeline."""
        with self._lock:
            self._marks[what] = round(time.monotonic() - self._started, 3)

    def stop(self) -> ProbeSummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s * (1 + len(self._inference)) + 5)
        with self._lock:
            end = self._finished if self._finished is not None else time.monotonic()
            return ProbeSummary(
                duration_s=round(end - self._started, 3),
                metrics=_copy(self._metrics),
                inference=[_copy(t) for t in self._models.values()],
                timeline=[[round(i * BUCKET_S, 3), *counts] for i, counts in sorted(self._buckets.items())],
                marks=dict(self._marks),
            )

    def __enter__(self) -> MetricsProber:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        rounds = 0
        session = self_signed_session()
        try:
            while not self._stop.is_set() and rounds < self._max_requests:
                if time.monotonic() - self._started >= self._max_duration_s:
                    break
                rounds += 1
                self._probe(self._metrics, lambda: self._probe_metrics(session))
                for target in self._inference:
                    self._probe(self._models[target.name], functools.partial(self._probe_model, target))
                self._stop.wait(self._interval_s)
        finally:
            session.close()
            with self._lock:
                self._finished = time.monotonic()

    def _probe(self, tally: TargetTally, call: Callable[[], str | None]) -> None:
        try:
            error = call()
        except Exception as exc:  # any failure of one request is data, not a crash
            error = error_line(exc)
        now = round(time.monotonic() - self._started, 3)
        with self._lock:
            column = (0 if tally is self._metrics else 2) + (0 if error is None else 1)
            self._buckets.setdefault(int(now // BUCKET_S), [0, 0, 0, 0])[column] += 1
            tally.attempts += 1
            if error is None:
                tally.successes += 1
                tally.streak += 1
                if not tally.last_ok and tally.failures and tally.last_failure_s is not None:
                    tally.recovered_s = now
                tally.last_ok = True
            else:
                tally.failures += 1
                tally.streak = 0
                if tally.first_failure_s is None:
                    tally.first_failure_s = now
                tally.last_failure_s = now
                tally.recovered_s = None
                tally.last_ok = False
                tally.last_error = redact(error)

    def _probe_metrics(self, session: requests.Session) -> str | None:
        with self._lock:
            url = self._metrics_url
        response = session.get(
            url,
            headers={"Authorization": f"Bearer {self._token}"},
            verify=False,  # the proxy's self-signed certificate, as in check_metrics_auth
            timeout=self._timeout_s,
        )
        return None if response.status_code == 200 else f"HTTP {response.status_code}"

    def metrics_now(self) -> tuple[int, str]:
        """(metrics' successes in a row up to now, its last error): what a wait watches."""
        with self._lock:
            return self._metrics.streak, self._metrics.last_error

    def retarget_metrics(self, metrics_url: str) -> None:
        """Ask ``metrics_url`` from now on (one that could not be reached when the probe began)."""
        with self._lock:
            self._metrics_url = metrics_url

    def _probe_model(self, target: InferenceTarget) -> str | None:
        if target.readiness_only:
            url = f"{target.base_url.rstrip('/')}/v1/models/{target.model_name}"
            answer = requests.get(url, timeout=self._timeout_s)
            return None if answer.status_code == 200 else f"HTTP {answer.status_code}"
        if target.protocol == "v1":
            got = predict_v1(target.base_url, target.model_name, IRIS_INPUT, connect_wait_s=0)
        else:
            got = infer_v2(target.base_url, target.model_name, IRIS_INPUT, connect_wait_s=0)
        return None if got == IRIS_EXPECTED else f"expected {IRIS_EXPECTED}, got {got}"


def _copy(tally: TargetTally) -> TargetTally:
    return TargetTally(**vars(tally))


def check_probe(cell: CellResult, summary: ProbeSummary) -> list[CheckResult]:
    """What the migration cost.

    ``migration-inference-lost-requests``: no inference request failed (the proxy swap
    must not touch the data path). ``migration-metrics-outage``: reports how long metrics
    were unavailable and passes if they answered 200 again by the end of the probe.
    """
    results: list[CheckResult] = []
    with timed_check(cell, "migration-inference-lost-requests") as lost:
        if not summary.inference:
            lost.status = CheckStatus.SKIPPED
            lost.detail = "no inference target was probed"
        else:
            failed = sum(t.failures for t in summary.inference)
            attempts = sum(t.attempts for t in summary.inference)
            lost.status = CheckStatus.PASS if failed == 0 and attempts > 0 else CheckStatus.FAIL
            lost.detail = f"{failed} of {attempts} inference requests failed in {summary.duration_s:.1f}s"
            lost.evidence = [_tally_line(t, summary) for t in summary.inference]
    results.append(lost)

    with timed_check(cell, "migration-metrics-outage") as outage:
        metrics = summary.metrics
        window = summary.outage_s(metrics)
        outage.evidence = [_tally_line(metrics, summary)]
        if metrics.attempts == 0:
            outage.status = CheckStatus.ERROR
            outage.detail = "the prober made no metrics request"
        elif metrics.last_ok:
            outage.status = CheckStatus.PASS
            outage.detail = (
                f"metrics unavailable for {window:.1f}s ({metrics.failures} of {metrics.attempts} "
                "requests failed); recovered"
                if metrics.failures
                else f"no metrics outage ({metrics.attempts} requests)"
            )
        else:
            outage.status = CheckStatus.FAIL
            outage.detail = f"metrics still failing at the end of the probe after {window:.1f}s: {metrics.last_error}"
    results.append(outage)
    cell.traffic = [list(row) for row in summary.timeline]
    cell.traffic_marks = dict(summary.marks)
    return results


def _tally_line(tally: TargetTally, summary: ProbeSummary) -> str:
    line = f"{tally.name}: {tally.successes}/{tally.attempts} ok, {tally.failures} failed"
    if tally.first_failure_s is not None:
        line += (
            f", failing from {tally.first_failure_s:.1f}s to {tally.last_failure_s:.1f}s, "
            f"outage {summary.outage_s(tally):.1f}s, last error: {tally.last_error}"
        )
    return line
