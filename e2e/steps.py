"""The steps scenarios are made of: each a name, what ``--plan`` says, and the action.

A scenario lists these in order (``scenarios/*.py``); the plan prints the same list the
run executes. The actions are ``CellRun`` methods (``e2e/cell.py``).
"""

from __future__ import annotations

from e2e import scrape
from e2e.cell import CellRun
from e2e.local import binaries
from e2e.matrix import MatrixCell, migration_start_image
from e2e.scenario import PlanContext, Step

ROLLOUT_WAIT = "wait: rollout (observedGeneration, updated and available replicas); fail fast on pull errors"


def _install(cell: MatrixCell, context: PlanContext) -> list[str]:
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


def _swap_lines(cell: MatrixCell, context: PlanContext, image: str | None) -> list[str]:
    proxy = cell.proxy if image is None else None
    if proxy is not None and proxy.retired and context.provider == "local":
        return [
            f"container {cell.release.profile.proxy_container} image -> {proxy.image}",
            "retired per the matrix: image-unavailable without a pull (this tier pulls no images)",
        ]
    patch = context.patch_of(cell, image)
    profile = cell.release.profile
    if patch is None:
        target = context.mirrored(image or cell.proxy.image)
        lines = [
            f"container {profile.proxy_container} image -> {target}"
            " (manifest not on disk: the exact patch is computed at run time)"
        ]
    else:
        lines = [f"patch deployment {profile.namespace}/{profile.deployment}:", f"  {patch}"]
    return [*lines, ROLLOUT_WAIT]


install_release = Step("install", CellRun.install_release, _install)


def _swap(cell: MatrixCell, context: PlanContext) -> list[str]:
    lines = _swap_lines(cell, context, None)
    return ["the proxy container's image (and variant args) by a strategic-merge patch:", *lines]


def _swap_to_start(cell: MatrixCell, context: PlanContext) -> list[str]:
    start = migration_start_image(cell)
    return [f"start from the image the release ships (or its frozen copy): {start}", *_swap_lines(cell, context, start)]


swap_proxy_image = Step("swap", CellRun.swap_proxy_image, _swap)

swap_to_start_image = Step("swap-to-start-image", CellRun.swap_to_start_image, _swap_to_start)

deploy_sample_models = Step(
    "deploy",
    CellRun.deploy_sample_models,
    lambda cell, context: ["the sklearn-iris InferenceServices, v1 and v2 protocol (once per cluster)"],
)

check_image_in_use = Step(
    "check-image",
    CellRun.check_image_in_use,
    lambda cell, context: ["the Deployment and its pods run the expected proxy image"],
)

check_metrics_access = Step(
    "check-metrics",
    CellRun.check_metrics_access,
    lambda cell, context: [
        "no token 401, garbage token 401, no-access 403, metrics-reader 200 + controller_runtime metrics"
    ],
)

check_metrics_scrape = Step(
    "metrics-scrape",
    CellRun.check_metrics_scrape,
    lambda cell, context: [
        f"the group's Prometheus scrapes https://<metrics Service>/metrics every {scrape.SCRAPE_INTERVAL}"
        " (bearer_token_file, insecure_skip_verify); poll its API until a scrape newer than the swap:",
        f"job {scrape.READER_JOB} (ServiceAccount prometheus): up == 1, {scrape.RECONCILE_METRIC} queryable",
        f"job {scrape.NO_ACCESS_JOB} (ServiceAccount no-access): up == 0, 403 in lastError",
    ],
)

check_inference = Step(
    "check-inference",
    CellRun.check_inference,
    lambda cell, context: [
        "wait for KServe's Ready condition of each sample (fail fast, with its messages, when RBAC denies it)",
        "v1 + v2 predictions of sklearn-iris ([1, 1]) through its predictor Service",
    ],
)

check_token_leak = Step(
    "check-token-leak",
    CellRun.check_token_leak,
    lambda cell, context: [
        "the scrapers' tokens (metrics-reader, no-access, prometheus) must not appear in the proxy's logs"
        " (current and previous)"
    ],
)

migrate_under_load = Step(
    "migrate",
    CellRun.migrate_under_load,
    lambda cell, context: [
        "swap to the cell's image while a prober calls metrics (reader's token) and both models:",
        *_swap_lines(cell, context, None),
        "check: no inference request lost; the metrics outage window",
    ],
)
