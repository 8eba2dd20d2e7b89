"""One preflight run: the options, the target image, and the checks in order into a ``PreflightReport``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubernetes import client as k8s_client

from e2e.errors import UsageError
from e2e.images import ImageReference, RegistryMirrors
from e2e.local.proxy_runner import is_proxy_image, proxy_version_of
from e2e.manifests import apply_strategic_merge, pod_spec
from e2e.matrix import (
    ControllerProfile,
    KServeRelease,
    Matrix,
    load_matrix,
    version_key,
)
from e2e.preflight.cluster import (
    audit_images,
    connect,
    installed_version,
    live_workloads,
    named_container,
    read_controller,
)
from e2e.preflight.image_checks import image_checks
from e2e.preflight.metrics import (
    check_metrics,
)
from e2e.preflight.model import (
    EXIT_REJECTED,
    Check,
    InstalledVersion,
    PreflightReport,
    ProxySidecar,
    Status,
)
from e2e.preflight.rbac import check_proxy_rbac
from e2e.preflight.swap import PROXY_FLAGS, check_proxy_flags, check_swap_dry_run, planned_patch
from e2e.registry import RegistryProbe


@dataclass(frozen=True)
class Options:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    target_image: str | None = None
    target_proxy: str | None = None
    registry_mirror: Sequence[str] = ()
    insecure_registry: Sequence[str] = ()
    probe: bool = True
    timeout: float = 10.0
    check_metrics: bool = False
    metrics_url: str | None = None
    kubectl: str | None = None
    matrix: str | None = None


def resolve_target(options: Options, matrix: Matrix) -> tuple[str | None, str]:
    if options.target_image and options.target_proxy:
        raise UsageError("--target-image and --target-proxy: expected one of them, not both")
    if options.target_proxy:
        proxy = matrix.proxy(options.target_proxy, option="--target-proxy")
        return proxy.image, f"--target-proxy {options.target_proxy}"
    if options.target_image:
        ImageReference.parse(options.target_image)  # a bad reference is a usage error, not a finding
        return options.target_image, "--target-image"
    return None, "none given: no swap planned"


@dataclass(frozen=True)
class LiveController:
    """The KServe controller Deployment as the API returned it, with the release it runs."""

    deployment: dict[str, Any]
    profile: ControllerProfile  # the release's, in the namespace where it was found
    release: KServeRelease  # the matrix entry of the version found (the newest when unknown)
    version: InstalledVersion


def live_controller(api: k8s_client.ApiClient, context: str, namespace: str | None, matrix: Matrix) -> LiveController:
    """Read the controller: every release the matrix knows names it the same way, so the
    newest one's profile finds the Deployment; the version found there picks the exact one."""
    newest = max(matrix.releases, key=lambda r: version_key(r.version))
    profile = replace(newest.profile, namespace=namespace or newest.profile.namespace)
    deployment = read_controller(api, profile, context)
    version = installed_version(deployment, profile, matrix)
    release = version.release or newest
    return LiveController(deployment, replace(release.profile, namespace=profile.namespace), release, version)


def preflight(options: Options) -> PreflightReport:
    matrix = load_matrix(options.matrix)
    mirrors = RegistryMirrors.from_options(options.registry_mirror)
    if options.timeout <= 0:
        raise UsageError(f"--timeout {options.timeout}: expected a positive number of seconds")
    target, target_source = resolve_target(options, matrix)
    conn = connect(options.kubeconfig, options.context)
    with conn.api:
        live = live_controller(conn.api, conn.context, options.namespace, matrix)
        deployment, profile, release, version = live.deployment, live.profile, live.release, live.version
        proxy_container = named_container(deployment, profile.proxy_container)
        controller_pod = pod_spec(deployment)
        proxy = ProxySidecar(
            deployment=f"{profile.namespace}/{profile.deployment}",
            container=profile.proxy_container,
            image=str(proxy_container.get("image")) if proxy_container else None,
            service_account=f"{profile.namespace}/{controller_pod.get('serviceAccountName') or 'default'}",
        )
        patch = planned = None
        if target is not None and proxy_container is not None:
            patch = planned_patch(deployment, profile, target, matrix, release)
            planned = apply_strategic_merge(deployment, patch)
            planned = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": planned.get("metadata", {}),
                "spec": planned.get("spec", {}),
            }
        probe = (
            RegistryProbe(
                mirrors=mirrors,
                insecure_registries=options.insecure_registry,
                connect_timeout=options.timeout,
                read_timeout=options.timeout,
            )
            if options.probe
            else None
        )
        workloads = live_workloads(conn.api, None if options.all_namespaces else profile.namespace)
        report = PreflightReport(
            context=conn.context,
            server=conn.server,
            namespace=profile.namespace,
            all_namespaces=options.all_namespaces,
            version=version,
            proxy=proxy,
            target=target,
            target_source=target_source,
            images=audit_images(workloads, planned, probe),
        )
        report.checks += image_checks(report, probed=probe is not None)
        report.checks.append(check_proxy_rbac(conn.api, proxy))
        if proxy_container is None:
            report.checks.append(
                Check(
                    "swap-dry-run",
                    Status.FAIL,
                    f"Deployment {proxy.deployment} has no container "
                    f"{profile.proxy_container!r}: there is no proxy to swap",
                    EXIT_REJECTED,
                )
            )
        elif target is None or patch is None:
            report.checks.append(Check("swap-dry-run", Status.SKIPPED, "no --target-image/--target-proxy"))
            report.checks.append(Check(PROXY_FLAGS, Status.SKIPPED, "no --target-image/--target-proxy"))
        else:
            report.checks.append(check_swap_dry_run(conn.api, profile, patch, target))
            target_version = proxy_version_of(target) if is_proxy_image(target) else None
            report.checks.append(check_proxy_flags(patch, profile.proxy_container, target_version))
        if options.check_metrics:
            report.checks.append(check_metrics(conn, profile, report, options.metrics_url, options.kubectl))
    return report
