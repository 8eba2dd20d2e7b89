"""install: create (or reuse) the group's cluster and install the KServe release on it."""

from __future__ import annotations

from e2e import binaries
from e2e.cell import CellRun
from e2e.matrix import MatrixCell
from e2e.results import CheckStatus, timed_check
from e2e.scenario import PlanContext, Step


def act(run: CellRun) -> None:
    run.cluster = run.harness.cluster_for(run.cell)
    with timed_check(run.result, "install") as check:
        run.harness.installer.install(run.cluster, run.cell)
        check.status, check.detail = CheckStatus.PASS, f"KServe {run.cell.release.version} installed"
    run.result.deviations = list(dict.fromkeys(run.cluster.provider.info.deviations + run.cluster.deviations))
    run.result.kubernetes_server = run.cluster.provider.server_version()
    run.result.notes += run.cluster.notes


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    release = cell.release
    if context.provider == "local":
        cert_manager = f"cert-manager {release.cert_manager} CRDs"
    elif context.local_images:
        built = binaries.DEFAULT_VERSIONS["cert-manager-controller"]
        cert_manager = (
            f"cert-manager {built} built here (images loaded, manifest rendered from its chart; "
            f"the quick-install names {release.cert_manager}: a deviation), until its webhook answers"
        )
    else:
        cert_manager = f"cert-manager {release.cert_manager}, until its webhook answers"
    lines = [
        f"KServe {release.version} on the cluster of its group (the group's first cell installs, the others reuse)",
        "e2e/data/manifests/metrics-access.yaml; tokens for kserve-compat/metrics-reader, no-access and prometheus",
        _prometheus(context),
        f"install {cert_manager}",
    ]
    if context.provider == "local":
        lines.append(
            f"the controller's manager container played by KServe {release.version}'s own manager binary "
            "(the labelled stand-in where the Go proxy refuses the release); its webhooks pointed at it"
        )
    if context.local_images:
        lines.append(
            f"the controller image of KServe {release.version} built from its cmd/manager, pushed into the "
            "nodes' docker.io mirror; the kubelet pulls it with the release's own pull policy"
        )
    return [
        *lines,
        f"install {', '.join(release.files)} by server-side apply (CRDs first, until Established)",
        "inferenceservice-config -> raw deployment mode, no Ingress from v0.12",
    ]


def _prometheus(context: PlanContext) -> str:
    if context.provider == "local":
        where = "a local prometheus process (Debian's package) scraping the metrics Service through a loopback relay"
    else:
        where = (
            "a Deployment (e2e/data/manifests/prometheus.yaml) of the same Prometheus binary, packed into "
            "kserve-compat.local/prometheus and pulled from the run's mirror; tokens from a Secret the harness writes"
        )
    return f"start the group's Prometheus, stopped with its cluster: {where}"


install_release = Step("install", act, describe)
