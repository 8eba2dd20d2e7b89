"""check-token-leak: the scrapers' tokens must not appear in the proxy's logs (current and
previous); versions before v0.18.2 can log them at ``--v=10`` (FACTS: token masking)."""

from __future__ import annotations

from e2e import checks, kserve
from e2e.cell import CellRun
from e2e.matrix import MatrixCell
from e2e.scenario import PlanContext, Step


def act(run: CellRun) -> None:
    cluster = run.group_cluster()
    assert cluster.access is not None
    profile = run.cell.release.profile
    provider = cluster.provider
    selector = kserve.controller_pod_selector_of(provider.api_client(), profile.namespace, profile.deployment)
    logs = provider.container_logs(profile.namespace, selector, profile.proxy_container)
    previous = provider.container_logs(profile.namespace, selector, profile.proxy_container, previous=True)
    checks.check_token_leak(run.result, "\n".join([previous, logs]), cluster.access.tokens())


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return [
        "the scrapers' tokens (metrics-reader, no-access, prometheus) must not appear in the proxy's logs"
        " (current and previous)"
    ]


check_token_leak = Step("check-token-leak", act, describe)
