"""A real Prometheus scrapes the controller's metrics through the proxy: its scrape
configuration and the ``metrics-scrape`` check.

KServe's docs have Prometheus scrape the RBAC-protected endpoint with a ServiceAccount
token and TLS without verification (the ServiceMonitor sample under
``docs/samples/metrics-and-monitoring``). Each group's cluster gets one Prometheus with
two jobs on the metrics Service: one with the token of ServiceAccount
``kserve-compat/prometheus`` (bound to the metrics-reader ClusterRole), one with the token
of ``kserve-compat/no-access`` (no RBAC). The check asks Prometheus's HTTP API, after the
cell's swap, whether the first job is up with the controller's metrics and the second is
down with the proxy's 403.

Providers start the Prometheus (``ClusterProvider.start_prometheus``); this module only
builds its configuration and reads its API, so it knows nothing of processes or pods.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
import tenacity
import yaml

from e2e.results import CellResult, CheckResult, CheckStatus
from e2e.secrets import redact
from e2e.targets import ServiceTarget

log = logging.getLogger(__name__)

CHECK_NAME = "metrics-scrape"
#: Four scrapes a second: the check waits up to one interval after a swap (half on average).
SCRAPE_INTERVAL = "250ms"
SCRAPE_TIMEOUT = "250ms"  # Prometheus refuses a timeout longer than the interval
READER_JOB = "kserve-controller-metrics"
NO_ACCESS_JOB = "kserve-controller-metrics-no-access"
RECONCILE_METRIC = "controller_runtime_reconcile_total"
#: Long enough for a few scrapes after a proxy restart; a broken cell waits this once.
WAIT_TIMEOUT_S = 10.0
API_TIMEOUT_S = 3.0
_NEVER = datetime.min.replace(tzinfo=UTC)  # Prometheus's lastScrape before the first scrape


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: a ServiceAccount's token scraping a Service port over HTTPS.

    ``allowed`` is what the proxy must answer: ``True`` the metrics (``up == 1``),
    ``False`` a 403 (``up == 0``). The token is a secret: it only ever goes to a 0600
    file that Prometheus reads (``bearer_token_file``).
    """

    name: str
    target: ServiceTarget
    service_account: str
    token: str = field(repr=False)
    allowed: bool = True


def scrape_config(job_name: str, address: str, token_file: str, metrics_path: str = "/metrics") -> dict[str, Any]:
    """One ``scrape_configs`` entry, as KServe's sample ServiceMonitor configures it:
    HTTPS, the ServiceAccount token from a file, the proxy's certificate not verified."""
    return {
        "job_name": job_name,
        "scheme": "https",
        "metrics_path": metrics_path,
        "bearer_token_file": token_file,
        "tls_config": {"insecure_skip_verify": True},
        "static_configs": [{"targets": [address]}],
    }


def prometheus_config(scrape_configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A whole ``prometheus.yml``: the scrape jobs, every second."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_TIMEOUT},
        "scrape_configs": list(scrape_configs),
    }


def in_cluster_config(
    target: ServiceTarget,
    reader_token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token",
    no_access_token_file: str = "/etc/prometheus/no-access/token",
) -> dict[str, Any]:
    """The same two jobs for a Prometheus running in the cluster (kind tier, README):
    the Service's DNS name, its own ServiceAccount's mounted token for the first job."""
    address = f"{target.name}.{target.namespace}.svc:{target.port}"
    return prometheus_config(
        [
            scrape_config(READER_JOB, address, reader_token_file),
            scrape_config(NO_ACCESS_JOB, address, no_access_token_file),
        ]
    )


IN_CLUSTER_NAMESPACE = "kserve-compat"
IN_CLUSTER_NAME = "prometheus"
IN_CLUSTER_PORT = 9090
IN_CLUSTER_TOKENS_SECRET = "prometheus-scrape-tokens"
IN_CLUSTER_TOKENS_DIR = "/etc/prometheus/tokens"


def in_cluster_documents(
    template: Sequence[dict[str, Any]], jobs: Sequence[ScrapeJob], image: str
) -> list[dict[str, Any]]:
    """``e2e/data/manifests/prometheus.yaml`` made concrete for ``jobs``: the image's exact tag, the
    jobs' Service DNS names, and a Secret with each job's token (the tokens the harness
    minted, so that the leak check knows what Prometheus sends)."""
    documents = copy.deepcopy(list(template))
    configs = [
        scrape_config(
            job.name,
            f"{job.target.name}.{job.target.namespace}.svc:{job.target.port}",
            f"{IN_CLUSTER_TOKENS_DIR}/{job.name}",
        )
        for job in jobs
    ]
    for doc in documents:
        if doc.get("kind") == "ConfigMap":
            doc["data"]["prometheus.yml"] = yaml.safe_dump(prometheus_config(configs), sort_keys=False)
        elif doc.get("kind") == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["image"] = image
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": IN_CLUSTER_TOKENS_SECRET, "namespace": IN_CLUSTER_NAMESPACE},
        "type": "Opaque",
        "stringData": {job.name: job.token for job in jobs},
    }
    return [secret, *documents]


# --------------------------------------------------------------------------- the HTTP API


class PrometheusUnreachable(Exception):
    """Prometheus's HTTP API did not answer (or answered something that is not its API)."""


@dataclass(frozen=True)
class TargetState:
    """What ``/api/v1/targets`` says about one job's target."""

    job: str
    scrape_url: str
    health: str
    last_error: str
    last_scrape: datetime

    def line(self) -> str:
        when = "never" if self.last_scrape == _NEVER else self.last_scrape.strftime("%H:%M:%S.%f")[:-3]
        error = f", lastError: {self.last_error}" if self.last_error else ""
        return f"job {self.job} {self.scrape_url}: health={self.health}, last scrape {when}{error}"


class PrometheusAPI:
    """The few calls of Prometheus's HTTP API the check needs."""

    def __init__(self, base_url: str, timeout_s: float = API_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.trust_env = False  # no HTTP proxy between us and a loopback port

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = self._session.get(f"{self.base_url}{path}", params=params, timeout=self.timeout_s)
            body = response.json()
        except (requests.RequestException, ValueError) as error:
            raise PrometheusUnreachable(f"{self.base_url}{path}: {type(error).__name__}: {error}") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusUnreachable(
                f"{self.base_url}{path}: HTTP {response.status_code} {body.get('error', '')}".strip()
            )
        return body["data"]

    def targets(self) -> dict[str, TargetState]:
        """The active targets by job name."""
        found = {}
        for target in self._get("/api/v1/targets", {"state": "active"}).get("activeTargets", []):
            job = target.get("labels", {}).get("job") or target.get("scrapePool", "")
            found[job] = TargetState(
                job=job,
                scrape_url=target.get("scrapeUrl", ""),
                health=target.get("health", ""),
                last_error=target.get("lastError", ""),
                last_scrape=_parse_time(target.get("lastScrape", "")),
            )
        return found

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's samples: (labels, value)."""
        data = self._get("/api/v1/query", {"query": promql})
        return [(sample["metric"], float(sample["value"][1])) for sample in data.get("result", [])]


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return _NEVER


# --------------------------------------------------------------------------- the check


@dataclass
class Observation:
    """What Prometheus reported at one moment, and whether it is what the check expects."""

    targets: dict[str, TargetState] = field(default_factory=dict)
    up: dict[str, float] = field(default_factory=dict)
    reconcile_series: int = 0
    unreachable: str = ""  # why the API did not answer, if it did not
    problems: list[str] = field(default_factory=list)  # one line per unmet expectation

    @property
    def passed(self) -> bool:
        return not self.unreachable and not self.problems

    def lines(self) -> list[str]:
        if self.unreachable:
            return [f"Prometheus API: {self.unreachable}"]
        return [state.line() for state in self.targets.values()]

    def summary(self) -> str:
        return "; ".join(self.problems or self.lines()) or "nothing yet"


def observe(api: PrometheusAPI, jobs: Sequence[ScrapeJob], since: datetime) -> Observation:
    """Ask Prometheus once and judge each job against what it expects after ``since``."""
    seen = Observation()
    try:
        seen.targets = api.targets()
        for job in jobs:
            samples = api.query(f'up{{job="{job.name}"}}')
            if samples:
                seen.up[job.name] = samples[0][1]
        readers = [job.name for job in jobs if job.allowed]
        if readers:
            seen.reconcile_series = len(api.query(f'{RECONCILE_METRIC}{{job=~"{"|".join(readers)}"}}'))
    except PrometheusUnreachable as error:
        seen.unreachable = str(error)
        return seen
    for job in jobs:
        seen.problems += _unmet(job, seen, since)
    return seen


def _unmet(job: ScrapeJob, seen: Observation, since: datetime) -> list[str]:
    state = seen.targets.get(job.name)
    if state is None:
        return [f"job {job.name}: no active target"]
    if state.last_scrape <= since:
        return [f"job {job.name}: no scrape since the swap yet ({state.line()})"]
    up = seen.up.get(job.name)
    if job.allowed:
        if state.health != "up" or up != 1:
            return [f"job {job.name}: expected up == 1, got up == {_value(up)} ({state.line()})"]
        if seen.reconcile_series == 0:
            return [f"job {job.name}: up, but {RECONCILE_METRIC} is not queryable"]
        return []
    if up != 0 or "403" not in state.last_error:
        return [f"job {job.name}: expected up == 0 with HTTP 403, got up == {_value(up)} ({state.line()})"]
    return []


def _value(up: float | None) -> str:
    return "(no sample)" if up is None else f"{up:g}"


def wait_for_scrapes(
    api: PrometheusAPI,
    jobs: Sequence[ScrapeJob],
    since: float,
    *,
    timeout_s: float = WAIT_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> Observation:
    """Poll Prometheus with bounded backoff until every job shows what it should in a scrape
    newer than ``since`` (epoch seconds), or ``timeout_s`` passed; the last observation."""
    after = datetime.fromtimestamp(since, UTC)
    names = ", ".join(job.name for job in jobs)
    log.info(
        "metrics-scrape: waiting up to %.0fs for Prometheus at %s to scrape %s after %s",
        timeout_s,
        api.base_url,
        names,
        after.strftime("%H:%M:%S.%f")[:-3],
    )
    last_report = clock()

    def report(state: tenacity.RetryCallState) -> None:
        nonlocal last_report
        if state.outcome is not None and clock() - last_report >= 2.0:
            log.info("metrics-scrape: still waiting; last saw: %s", redact(state.outcome.result().summary()))
            last_report = clock()

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda seen: not seen.passed),
        stop=tenacity.stop_after_delay(timeout_s),
        # Each attempt is three requests to a local Prometheus: a ceiling well under the
        # scrape interval keeps the check from sleeping past a scrape that came in.
        wait=tenacity.wait_exponential(multiplier=0.02, max=0.1),
        before_sleep=report,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else Observation(),
    )
    seen: Observation = retrying(observe, api, jobs, after)
    return seen


def check_metrics_scrape(
    cell: CellResult,
    api: PrometheusAPI,
    jobs: Sequence[ScrapeJob],
    since: float,
    *,
    timeout_s: float = WAIT_TIMEOUT_S,
) -> CheckResult:
    """``metrics-scrape``: a real Prometheus got the metrics through the proxy with the
    reader's token (``up == 1``, ``controller_runtime_reconcile_total`` queryable) and
    was refused with the no-access token (``up == 0``, 403 in ``lastError``), in scrapes
    newer than ``since`` (the cell's swap). Evidence: each target's health and lastError.
    """
    started = time.monotonic()
    seen = wait_for_scrapes(api, jobs, since, timeout_s=timeout_s)
    waited = time.monotonic() - started
    status = CheckStatus.PASS
    if seen.unreachable:
        status = CheckStatus.ERROR
        detail = f"Prometheus did not answer for {waited:.1f}s: {seen.unreachable}"
    elif seen.problems:
        status = CheckStatus.FAIL
        detail = f"after {waited:.1f}s: {seen.problems[0]}"
    else:
        parts = [
            f"job {job.name} up == 1, {seen.reconcile_series} {RECONCILE_METRIC} series"
            if job.allowed
            else f"job {job.name} up == 0 (HTTP 403)"
            for job in jobs
        ]
        detail = f"Prometheus: {'; '.join(parts)}; after {waited:.1f}s"
    # CheckResult redacts detail and evidence as it is built.
    check = CheckResult(CHECK_NAME, status, detail, round(waited, 3), seen.lines())
    log.info("metrics-scrape: %s %s", check.status.value, check.detail)
    return cell.add(check)


def record_unavailable(cell: CellResult, reason: str, *, as_error: bool, evidence: Sequence[str] = ()) -> CheckResult:
    """The check could not run here (no Prometheus): skipped, or an error where it must run."""
    status = CheckStatus.ERROR if as_error else CheckStatus.SKIPPED
    return cell.add(CheckResult(CHECK_NAME, status, f"no Prometheus: {reason}", evidence=list(evidence)))
