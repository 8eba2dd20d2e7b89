"""``--plan``: the ordered plan of a run, printed from the Scenarios themselves.

For each cluster group: how the provider creates the cluster, then, for each collected
(scenario, cell) in run order, the scenario's own step lines (``Scenario.plan``), its
expected verdict, and its catch / finally. Nothing here creates a cluster, starts a
process or downloads a file: release manifests are read only if they are already in the
offline directory or the cache, to show the exact patch; otherwise the plan says the
patch is computed at run time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from e2e import support
from e2e.cluster.provider import ProviderFactory
from e2e.errors import HarnessError
from e2e.images import RegistryMirrors
from e2e.manifests import ReleaseFiles, ReleaseManifest, kserve_file, proxy_patch
from e2e.matrix import Matrix, MatrixCell, group_cells
from e2e.run import RunPlan, make_factory
from e2e.scenario import PlanContext, Scenario


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


class _Patches:
    """The exact patch of a cell (and image), when its manifest is on disk; else None."""

    def __init__(self, matrix: Matrix, files: ReleaseFiles, mirrors: RegistryMirrors) -> None:
        self.matrix = matrix
        self.files = files
        self.rewrite = mirrors.rewrite if mirrors else None
        self.manifests: dict[str, ReleaseManifest | None] = {}

    def __call__(self, cell: MatrixCell, image: str | None) -> str | None:
        version = cell.release.version
        if version not in self.manifests:
            self.manifests[version] = _cached_manifest(self.files, cell)
        manifest = self.manifests[version]
        if manifest is None:
            return None
        if image is not None:
            cell = MatrixCell(cell.release, self.matrix.proxy_for_image(image), cell.kubernetes, cell.variant)
        return json.dumps(proxy_patch(cell, manifest, self.rewrite), separators=(",", ":"))


def render_plan(
    plan: RunPlan,
    runs: Sequence[tuple[Scenario, MatrixCell]],
    factory: ProviderFactory | None = None,
) -> str:
    """The plan of ``runs`` (scenario, cell) in the order the run executes them."""
    options = plan.options
    factory = factory or make_factory(options, plan.matrix)
    mirrors = RegistryMirrors.from_options(options.registry_mirrors)
    context = PlanContext(
        provider=options.provider,
        patch_of=_Patches(plan.matrix, plan.files, mirrors),
        mirrored=mirrors.rewrite if mirrors else str,
        local_images=options.provider == "kind" and options.local_images,
    )
    groups = group_cells(list(dict.fromkeys(cell for _, cell in runs)))
    lines = [
        f"kserve-compat plan: provider {options.provider}, {len(runs)} scenario runs of "
        f"{len({cell.id for _, cell in runs})} cells in {len(groups)} cluster groups "
        "(nothing is created, started or downloaded)",
    ]
    for number, group in enumerate(groups, 1):
        lines.append("")
        lines.append(f"{number}. cluster group {group.id}")
        window = support.verdict(group.cells[0])
        lines.append(f"   Kubernetes {group.kubernetes.version}: {window.support.value} ({window.reason})")
        lines += [f"   cluster: {step}" for step in factory.plan(group.id, group.kubernetes.version)]
        for scenario, cell in runs:
            if cell.group_key != (group.release.version, group.kubernetes.version):
                continue
            diagnostics_dir = f"{options.reports_dir}/diagnostics/{scenario.result_id(cell)}/"
            lines.append(f"   run {scenario.name} on {cell.id}")
            lines += [f"     {line}" for line in scenario.plan(cell, context, diagnostics_dir)]
        lines.append(f"   teardown: delete the cluster of {group.id} (unless --keep-cluster)")
    lines.append("")
    lines.append(f"reports: {options.reports_dir}/report.json, report.md, report.html, junit.xml")
    return "\n".join(lines)


def planned_steps(plan: str) -> dict[tuple[str, str], list[str]]:
    """``{(scenario, cell id): [step names]}`` read back from a rendered plan."""
    steps: dict[tuple[str, str], list[str]] = {}
    current: list[str] = []
    for line in plan.splitlines():
        if run := re.fullmatch(r"   run (\S+) on (\S+)", line):
            current = steps.setdefault((run.group(1), run.group(2)), [])
        elif step := re.match(r"     step \d+ ([\w-]+):", line):
            current.append(step.group(1))
    return steps
