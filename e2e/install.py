"""The install plan of a cluster group: the scrapers, cert-manager, the KServe release.

Once per group, on the group's fresh cluster: the metrics scrapers of
``e2e/data/manifests/metrics-access.yaml`` with their tokens and a real Prometheus scraping the
metrics Service with two of them (see ``e2e/scrape.py``), then cert-manager (the whole
install on kind, its CRDs locally), the KServe release (CRDs first, raw deployment mode,
the controller rolled out with a proxy image this provider can run) and the runtimes. An install error is kept on the
group and reported by each of its cells; a Prometheus that cannot start is kept for the
``metrics-scrape`` check to report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from e2e import checks, diagnostics, kserve, model_store, scrape
from e2e.apply import Applier
from e2e.cluster.provider import ClusterProvider, ServiceTarget
from e2e.errors import HarnessError, NotInOfflineDirectory, WorkloadUnavailable
from e2e.images import RegistryMirrors
from e2e.manifests import (
    ReleaseFile,
    ReleaseFiles,
    ReleaseManifest,
    container_images,
    load_release_manifest,
    load_yaml_documents,
    patched_manifest,
    proxy_patch,
    serving_images,
    shipped_proxy,
)
from e2e.matrix import ClusterGroup, KServeRelease, Matrix, MatrixCell, migration_start_image, version_key
from e2e.rollout import new_pods_selector, wait_for_rollout
from e2e.tokens import mint_token

METRICS_ACCESS_NAMESPACE = "kserve-compat"
METRICS_READER, NO_ACCESS, PROMETHEUS = "metrics-reader", "no-access", "prometheus"
SAMPLE_MODELS: tuple[tuple[str, checks.Protocol], ...] = (("sklearn-iris", "v1"), ("sklearn-iris-v2", "v2"))


class CellSkipped(HarnessError):
    """The cell cannot run here for a stated reason (recorded as ``skipped``)."""


@dataclass
class MetricsAccess:
    """The scrapers of every cell: ``metrics-reader`` and ``prometheus`` may read /metrics,
    ``no-access`` may not."""

    metrics_reader_token: str
    no_access_token: str
    prometheus_token: str = ""

    def tokens(self) -> dict[str, str]:
        """Every token sent to the proxy, by ServiceAccount (the token-leak check's list)."""
        found = {METRICS_READER: self.metrics_reader_token, NO_ACCESS: self.no_access_token}
        if self.prometheus_token:
            found[PROMETHEUS] = self.prometheus_token
        return found

    def scrape_jobs(self, target: ServiceTarget) -> list[scrape.ScrapeJob]:
        """Prometheus's two jobs on the metrics Service: its own token, and no-access's."""
        return [
            scrape.ScrapeJob(scrape.READER_JOB, target, PROMETHEUS, self.prometheus_token, allowed=True),
            scrape.ScrapeJob(scrape.NO_ACCESS_JOB, target, NO_ACCESS, self.no_access_token, allowed=False),
        ]


@dataclass
class GroupCluster:
    """The cluster of one group, with what has been installed on it so far."""

    group: ClusterGroup
    provider: ClusterProvider
    manifest: ReleaseManifest | None = None
    access: MetricsAccess | None = None
    install_error: HarnessError | None = None
    samples_deployed: bool = False
    deviations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. the proxy's port remaps at install
    proxy_image: str = ""  # the image the controller Deployment currently asks for
    scrape_jobs: list[scrape.ScrapeJob] = field(default_factory=list)  # what its Prometheus scrapes
    prometheus_error: HarnessError | None = None  # why no Prometheus runs, if none does
    serving_unavailable: str = ""  # why no sample model can serve here, if none can
    model_store_uri: str = ""  # where the samples fetch their model, when not from their storageUri


class Installer:
    """Installs a group's release once; the group's later cells reuse (or re-raise) it."""

    def __init__(self, matrix: Matrix, files: ReleaseFiles, mirrors: RegistryMirrors, rollout_timeout_s: float) -> None:
        self.matrix = matrix
        self.files = files
        self.mirrors = mirrors
        self.rollout_timeout_s = rollout_timeout_s

    def release_manifest(self, release: KServeRelease) -> ReleaseManifest:
        try:
            return load_release_manifest(release, self.files, remember=True)
        except NotInOfflineDirectory as exc:
            raise CellSkipped(str(exc)) from None

    def install(self, cluster: GroupCluster, cell: MatrixCell) -> None:
        if cluster.install_error is not None:
            raise cluster.install_error
        if cluster.manifest is not None:
            return
        try:
            self._install(cluster, cell)
        except HarnessError as exc:
            cluster.install_error = exc
            raise

    def _install(self, cluster: GroupCluster, cell: MatrixCell) -> None:
        release = cell.release
        provider = cluster.provider
        api = provider.api_client()
        manifest = self.release_manifest(release)
        cluster.notes += shipped_proxy(release, manifest).notes()
        # The scrapers first (they need nothing of KServe), and the group's Prometheus with
        # them: it takes about 6 s to scrape its first target, which the install hides.
        Applier(api).apply(kserve.load_documents(kserve.MANIFESTS_DIR / "metrics-access.yaml"))
        cluster.access = MetricsAccess(
            metrics_reader_token=mint_token(api, METRICS_ACCESS_NAMESPACE, METRICS_READER),
            no_access_token=mint_token(api, METRICS_ACCESS_NAMESPACE, NO_ACCESS),
            prometheus_token=mint_token(api, METRICS_ACCESS_NAMESPACE, PROMETHEUS),
        )
        self._start_prometheus(cluster)
        kserve.install_cert_manager(
            api,
            self._cert_manager_documents(cluster, release),
            evidence_of=lambda namespace, name: failure_probe(provider, namespace, name),
        )
        # Install with a runnable proxy image already in place: a release whose shipped
        # image is retired could otherwise never become Available.
        rewrite = self.mirrors.rewrite if self.mirrors else None
        install_cell = self._install_cell(cluster, cell, rewrite)
        patch = proxy_patch(install_cell, manifest, rewrite)
        first = patched_manifest(install_cell, manifest, rewrite)
        documents = list(first.documents)
        cluster.notes += provider.make_pullable(release, documents)
        if install_cell.proxy.image != cell.proxy.image:
            cluster.notes.append(f"installed with {install_cell.proxy.image}; the cell's image is swapped in after")
        runtimes = self._runtime_documents(release)
        samples = provider.serve_samples(release, serving_images(runtimes, documents))
        cluster.model_store_uri = samples.model_store_uri
        cluster.serving_unavailable = samples.unavailable
        cluster.deviations += samples.deviations
        profile = release.profile

        def controller_rollout() -> Any:
            cluster.notes += provider.sync_workloads()
            return wait_for_rollout(
                api,
                profile.namespace,
                profile.deployment,
                timeout_s=self.rollout_timeout_s,
                failure_evidence=failure_probe(provider, profile.namespace, profile.deployment),
            )

        installation = kserve.install_kserve(
            api,
            release,
            documents,
            runtimes,
            controller_runs=provider.runs_pods,
            wait_for_controller=controller_rollout,
        )
        cluster.deviations += installation.deviations
        cluster.notes += installation.notes
        if cluster.model_store_uri:
            wait_for_rollout(
                api,
                kserve.SAMPLES_NAMESPACE,
                model_store.MODEL_STORE,
                timeout_s=self.rollout_timeout_s,
                failure_evidence=failure_probe(provider, kserve.SAMPLES_NAMESPACE, model_store.MODEL_STORE),
            )
        cluster.serving_unavailable = cluster.serving_unavailable or provider.why_nothing_serves()
        cluster.manifest = manifest
        cluster.proxy_image = proxy_image_of(patch)

    @staticmethod
    def _start_prometheus(cluster: GroupCluster) -> None:
        """The group's Prometheus, stopped with its cluster; a failure is kept for the check."""
        profile = cluster.group.release.profile
        assert cluster.access is not None
        cluster.scrape_jobs = cluster.access.scrape_jobs(
            ServiceTarget(profile.namespace, profile.metrics_service, profile.metrics_port)
        )
        try:
            cluster.provider.start_prometheus(cluster.scrape_jobs)
        except HarnessError as exc:
            cluster.prometheus_error = exc
        except OSError as exc:  # e.g. a binary that cannot be executed
            cluster.prometheus_error = HarnessError(f"prometheus did not start: {exc}")

    def _install_cell(
        self, cluster: GroupCluster, cell: MatrixCell, rewrite: Callable[[str], str] | None
    ) -> MatrixCell:
        """The cell whose proxy image the release is installed with: this cell's, or the
        first of its group that is not retired and that the provider can run, else the
        frozen copy of the shipped image, else any served image of the matrix (so that a
        retired cell selected alone still reaches its swap). Variants are left out: a
        variant that breaks the proxy must fail its own cell, not the shared install."""
        plain = [MatrixCell(c.release, c.proxy, c.kubernetes) for c in [cell, *cluster.group.cells]]
        fallbacks = [self.matrix.proxy_for_image(migration_start_image(cell))]
        fallbacks += [proxy for proxy in self.matrix.proxies if proxy.status == "served"]
        plain += [MatrixCell(cell.release, proxy, cell.kubernetes) for proxy in fallbacks]
        candidates = list({c.id: c for c in plain}.values())
        reasons = []
        for candidate in candidates:
            if candidate.proxy.retired:
                continue
            image = rewrite(candidate.proxy.image) if rewrite else candidate.proxy.image
            try:
                cluster.provider.load_images([image])
            except WorkloadUnavailable as exc:
                reasons.append(str(exc))
                continue
            return candidate
        raise CellSkipped(f"no proxy image can run here to install {cluster.group.id}: {'; '.join(reasons)[:300]}")

    def _cert_manager_documents(self, cluster: GroupCluster, release: KServeRelease) -> list[dict[str, Any]]:
        """cert-manager for the release: the whole install on kind, CRDs only locally.

        Locally only the CRDs matter (KServe's Issuer and Certificate must be accepted);
        when the offline directory lacks the release's version, the newest one it has is
        used and the substitution recorded. On kind with the local image set, the
        cert-manager built here (its images loaded, its manifest rendered from its chart).
        """
        brought = cluster.provider.cert_manager(release)
        if brought is not None:
            cluster.deviations += brought.deviations
            return brought.documents
        local = not cluster.provider.runs_pods
        name = "cert-manager.crds.yaml" if local else "cert-manager.yaml"
        version = release.cert_manager
        try:
            text = self.files.text(ReleaseFile("cert-manager", version, name))
        except NotInOfflineDirectory:
            substitute = self._newest_offline("cert-manager") if local else None
            if substitute is None:
                raise
            text = self.files.text(ReleaseFile("cert-manager", substitute, name))
            cluster.deviations.append(f"cert-manager CRDs {substitute} used instead of {version} (offline directory)")
        documents = load_yaml_documents(text, remember=True)
        if not local:
            cluster.provider.load_images(container_images(documents))  # their hosts' pull-through mirrors
        return documents

    def _newest_offline(self, project: str) -> str | None:
        if self.files.offline_dir is None:
            return None
        versions = [p.name for p in (self.files.offline_dir / project).glob("v*") if p.is_dir()]
        return max(versions, key=version_key) if versions else None

    def _runtime_documents(self, release: KServeRelease) -> list[dict[str, Any]]:
        if release.runtimes_file is None:
            return []
        manifest = load_release_manifest(release, self.files, release.runtimes_file, remember=True)
        return list(manifest.documents)


def failure_probe(provider: ClusterProvider, namespace: str, deployment: str) -> Callable[[], list[str] | None]:
    """Evidence of broken pods of a Deployment's current revision (pull errors, crash loops),
    or None. Pods of an earlier revision are not evidence: after a swap away from a retired
    image, its pod still shows ErrImagePull until the rollout removes it."""
    api = provider.api_client()

    def probe() -> list[str] | None:
        selector = new_pods_selector(api, namespace, deployment)
        if selector is None:
            return None

        def read_log(container: str, previous: bool) -> str:
            return provider.container_logs(namespace, selector, container, previous)

        return diagnostics.pod_failure_evidence(api, namespace, selector, read_log)

    return probe


def proxy_image_of(patch: dict[str, Any]) -> str:
    return str(patch["spec"]["template"]["spec"]["containers"][0]["image"])
