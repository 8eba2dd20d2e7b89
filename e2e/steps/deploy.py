"""deploy: apply the sample InferenceServices (sklearn-iris, v1 and v2 protocol), once per cluster."""

from __future__ import annotations

from e2e import kserve, model_store
from e2e.cell import CellRun
from e2e.matrix import MatrixCell
from e2e.results import CheckStatus, timed_check
from e2e.scenario import PlanContext, Step


def act(run: CellRun) -> None:
    cluster = run.group_cluster()
    if cluster.samples_deployed:
        run.result.notes.append("sample InferenceServices already deployed by an earlier cell of the group")
        return
    with timed_check(run.result, "deploy-samples") as check:
        api = cluster.provider.api_client()
        samples = kserve.sample_inference_services()
        if cluster.model_store_uri:
            samples, replaced = model_store.rewrite_storage_uris(samples, cluster.model_store_uri)
            cluster.deviations.append(
                f"samples' storageUri {', '.join(replaced)} rewritten to {cluster.model_store_uri}: "
                "an in-cluster model store (python -m http.server in the sklearnserver image built here) "
                "serves the iris model trained here with the release's scikit-learn; no internet to fetch "
                "the original, KServe's storage initializer downloads this one"
            )
        names = kserve.deploy_inference_services(api, run.cell.release, samples)
        cluster.samples_deployed = True
        check.status, check.detail = CheckStatus.PASS, f"applied {', '.join(names)}"


def describe(cell: MatrixCell, context: PlanContext) -> list[str]:
    return ["the sklearn-iris InferenceServices, v1 and v2 protocol (once per cluster)"]


deploy_sample_models = Step("deploy", act, describe)
