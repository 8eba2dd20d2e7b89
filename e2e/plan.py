"""``--plan``: the ordered plan of a run (clusters, installs, swaps, checks), touching nothing.

Nothing here creates a cluster, starts a process or downloads a file: release manifests
are read only if they are already in the offline directory or the cache, to show the
exact patch; otherwise the plan says what would be fetched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from e2e.cluster.provider import ProviderFactory
from e2e.errors import HarnessError
from e2e.images import RegistryMirrors
from e2e.manifests import ReleaseFiles, ReleaseManifest, kserve_file, proxy_patch
from e2e.matrix import MatrixCell, group_cells, load_matrix
from e2e.runbook import HarnessOptions, make_factory

CHECKS = (
    "image-in-use",
    "metrics: no token 401, garbage token 401, no-access 403, metrics-reader 200 + controller_runtime metrics",
    "inference v1 + v2 (sklearn-iris, predictions [1, 1])",
    "token-leak: the scrapers' tokens must not appear in the proxy's logs",
)


def _scenarios_by_cell(nodeids: Sequence[str]) -> dict[str, list[str]]:
    """Which scenarios each cell id appears in, from pytest node ids like ``...::test_x[ID]``."""
    found: dict[str, list[str]] = {}
    for nodeid in nodeids:
        match = re.search(r"::(test_\w+)\[(.+)\]$", nodeid)
        if match:
            found.setdefault(match.group(2), []).append(match.group(1).removeprefix("test_"))
    return found


def _cached_manifest(files: ReleaseFiles, cell: MatrixCell) -> ReleaseManifest | None:
    """The release manifest if it is on disk already (offline directory or cache).

    Read directly and only verified against the lock: the plan must not pin anything.
    """
    ref = kserve_file(cell.release.version)
    root = files.offline_dir if files.offline_dir is not None else files.cache_dir
    path = root / ref.key
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        files.lock.verify(ref, data, str(path))
        return ReleaseManifest.parse(data.decode(), source=ref.label, profile=cell.release.profile)
    except (HarnessError, OSError, UnicodeDecodeError):
        return None


def render_plan(options: HarnessOptions, nodeids: Sequence[str], factory: ProviderFactory | None = None) -> str:
    matrix = load_matrix(options.matrix_file)
    cells = matrix.select(options.selection)
    scenarios = _scenarios_by_cell(nodeids)
    factory = factory or make_factory(options)
    files = ReleaseFiles.from_environment(options.manifest_dir)
    mirrors = RegistryMirrors.from_options(options.registry_mirrors)
    rewrite = mirrors.rewrite if mirrors else None
    groups = group_cells(cells)
    manifests: dict[str, ReleaseManifest | None] = {}
    lines = [
        f"kserve-compat plan: provider {options.provider}, {len(cells)} cells in {len(groups)} cluster groups "
        "(nothing is created, started or downloaded)",
    ]
    for number, group in enumerate(groups, 1):
        release = group.release
        lines.append("")
        lines.append(f"{number}. cluster group {group.id}")
        lines += [f"   cluster: {step}" for step in factory.plan(group.id, group.kubernetes.version)]
        if options.provider == "local":
            lines.append(f"   install: cert-manager {release.cert_manager} CRDs")
        else:
            lines.append(f"   install: cert-manager {release.cert_manager}; wait until its webhook answers")
        lines.append(
            f"   install: KServe {release.version} {', '.join(release.files)} by server-side apply "
            "(CRDs first, until Established)"
        )
        lines.append("   install: inferenceservice-config -> raw deployment mode, no Ingress from v0.12")
        lines.append("   install: manifests/metrics-access.yaml; tokens for kserve-compat/metrics-reader and no-access")
        for cell in group.cells:
            ran = scenarios.get(cell.id, [])
            if nodeids and not ran:
                continue
            lines.append(f"   cell {cell.id}" + (f"  [{', '.join(ran)}]" if ran else ""))
            if cell.release.version not in manifests:
                manifests[cell.release.version] = _cached_manifest(files, cell)
            manifest = manifests[cell.release.version]
            if manifest is not None:
                patch = proxy_patch(cell, manifest, rewrite)
                lines.append(f"     swap: patch deployment {release.profile.namespace}/{release.profile.deployment}:")
                lines.append(f"       {json.dumps(patch, separators=(',', ':'))}")
            else:
                image = rewrite(cell.proxy.image) if rewrite else cell.proxy.image
                lines.append(
                    f"     swap: container {release.profile.proxy_container} image -> {image}"
                    " (manifest not on disk: the exact patch is computed at run time)"
                )
            lines.append(
                "     wait: rollout (observedGeneration, updated and available replicas); fail fast on pull errors"
            )
            if ran == ["retired_image_is_reported_unavailable"]:
                lines.append("     expect: the image pull fails: verdict image-unavailable, pull error as evidence")
            else:
                lines += [f"     check: {check}" for check in CHECKS]
        lines.append(f"   teardown: delete the cluster of {group.id} (unless --keep-cluster)")
    lines.append("")
    lines.append(f"reports: {options.reports_dir}/report.json, report.md, report.html, junit.xml")
    return "\n".join(lines)
