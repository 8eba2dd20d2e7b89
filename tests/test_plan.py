"""``--plan``: the ordered plan of a run, rendered from the Scenarios and the real release
manifests of the offline directory (``tests/helpers/release_files.py``), and proven to touch nothing
(no process, no file, no connection).

Also the pytest entry point (``pytest scenarios --plan``) and the kind tier's refusal to
run without a Docker engine, both as real subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import REPO
from helpers.release_files import session_release_files

import e2e.manifests
import e2e.manifests.files
from e2e.matrix import MatrixCell, Selection, load_matrix
from e2e.plan import planned_steps, render_plan
from e2e.run import HarnessOptions, RunPlan
from e2e.scenario import Scenario, load_scenarios, ordered_runs

GCR_PROXY = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
QUAY_PROXY = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
K8S_PROXY = "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1"
SHIPPED_ARGS = [
    "--secure-listen-address=0.0.0.0:8443",
    "--upstream=http://127.0.0.1:8080/",
    "--logtostderr=true",
    "--v=10",
]
QUIET_ARGS = [*SHIPPED_ARGS[:3], "--v=0"]
SHIPPED_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}
# v0.10.1 and v0.14.0 are mirrored in the fixtures; v0.11.2 is not.
CELLS = (
    "kserve-v0.14.0--quay-v0.18.0--k8s-1.33",
    "kserve-v0.14.0--quay-v0.18.0--k8s-1.33--quiet",
    "kserve-v0.14.0--k8s-v0.13.1--k8s-1.33",
    "kserve-v0.14.0--k8s-v0.13.1--k8s-1.33--quiet",
    "kserve-v0.11.2--quay-v0.18.0--k8s-1.33",
    "kserve-v0.11.2--k8s-v0.13.1--k8s-1.33--quiet",
    "kserve-v0.10.1--quay-v0.18.0--k8s-1.33",
    "kserve-v0.10.1--k8s-v0.13.1--k8s-1.33--quiet",
)
SELECTION = Selection(cells=CELLS)


def expected_patch(image: str, args: list[str], security_context: dict[str, Any] | None) -> dict[str, Any]:
    container = {
        "name": "kube-rbac-proxy",
        "image": image,
        "args": args,
        "securityContext": {"$patch": "replace", **security_context} if security_context else None,
    }
    return {"spec": {"template": {"spec": {"containers": [container]}}}}


def cell_blocks(plan: str, scenario: str = "fresh-install") -> dict[str, list[str]]:
    """Each cell's lines for ``scenario`` (its ``run`` line first), by cell id."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in plan.splitlines():
        if line.startswith("   run "):
            _, name, _, cell_id = line.split()
            current = blocks.setdefault(cell_id, []) if name == scenario else None
        elif not line.startswith("     "):
            current = None
        if current is not None:
            current.append(line)
    return blocks


def patch_of(block: list[str], occurrence: int = 0) -> dict[str, Any]:
    starts = [i for i, line in enumerate(block) if line == "       patch deployment kserve/kserve-controller-manager:"]
    return json.loads(block[starts[occurrence] + 1].strip())


def runs_of(provider: str, selection: Selection) -> list[tuple[Scenario, MatrixCell]]:
    """What pytest would collect: every scenario on the selected cells it applies to."""
    cells = load_matrix().select(selection)
    return ordered_runs(load_scenarios(), cells, provider)[0]


@dataclass
class Sandbox:
    """Where a plan could write (HOME, caches, cwd, reports, lock) and what it may not do."""

    root: Path
    reports: Path
    lock: Path
    spawned: list[Any]
    connected: list[Any]

    def written(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            found |= {int(pid) for pid in (task / "children").read_text().split()}
        except OSError:  # a thread that ended meanwhile
            continue
    return found


@contextlib.contextmanager
def sandboxed(root: Path) -> Iterator[Sandbox]:
    """HOME, caches, cwd and the lock file inside ``root``; process starts and connections recorded."""
    for name in ("home", "cache", "xdg", "cwd"):
        (root / name).mkdir(parents=True)
    lock = root / "lock" / "release-manifests.lock.json"
    real_lock = e2e.manifests.ManifestLock
    spawned: list[Any] = []
    connected: list[Any] = []
    real_popen, real_connect = subprocess.Popen, socket.socket.connect

    class RecordingPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            spawned.append(args)
            super().__init__(args, *rest, **kwargs)

    def recording_connect(self: socket.socket, address: Any) -> Any:
        connected.append(address)
        return real_connect(self, address)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HOME", str(root / "home"))
        monkeypatch.setenv("KSERVE_COMPAT_CACHE", str(root / "cache"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg"))
        monkeypatch.delenv("KSERVE_COMPAT_MANIFEST_DIR", raising=False)
        # e2e.cluster.kind pins these into os.environ: let monkeypatch restore them afterwards
        monkeypatch.setenv("KIND_VERSION", os.environ.get("KIND_VERSION", "v0.32.0"))
        monkeypatch.setenv("KUBECTL_VERSION", os.environ.get("KUBECTL_VERSION", "v1.34.8"))
        monkeypatch.chdir(root / "cwd")
        # The lock file would be the repository's; point it into the sandbox.
        monkeypatch.setattr(e2e.manifests.files, "ManifestLock", lambda path=lock: real_lock(path))
        monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
        monkeypatch.setattr(socket.socket, "connect", recording_connect)
        before = _children()
        yield Sandbox(root, root / "reports", lock, spawned, connected)
        assert _children() <= before, "the plan left a child process behind"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with sandboxed(tmp_path / "sandbox") as box:
        yield box


def options(provider: str, sandbox: Sandbox, **overrides: Any) -> RunPlan:
    """The run resolved from these options, as the plugin resolves it."""
    values: dict[str, Any] = {
        "provider": provider,
        "selection": SELECTION,
        "reports_dir": sandbox.reports,
    }
    values.update(overrides)
    if "manifest_dir" not in values:
        values["manifest_dir"] = str(session_release_files().offline_directory())
    return RunPlan.resolve(HarnessOptions(**values))


def assert_touched_nothing(sandbox: Sandbox, children_before: set[int]) -> None:
    assert sandbox.spawned == []
    assert sandbox.connected == []
    assert _children() <= children_before
    assert sandbox.written() == ["cache", "cwd", "home", "xdg"]  # the empty directories we made


# -- local provider -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_plan(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Rendered once for the module: the real manifests are big."""
    with sandboxed(tmp_path_factory.mktemp("plan") / "sandbox") as box:
        before = _children()
        plan = render_plan(options("local", box), runs_of("local", SELECTION))
        assert_touched_nothing(box, before)
    return plan


def test_plan_lists_each_group_with_its_install_steps(local_plan: str) -> None:
    lines = local_plan.splitlines()
    assert lines[0] == (
        "kserve-compat plan: provider local, 16 scenario runs of 8 cells in 3 cluster groups "
        "(nothing is created, started or downloaded)"
    )
    headers = [line for line in lines if ". cluster group " in line]
    assert headers == [
        "1. cluster group kserve-v0.10.1--k8s-1.33",
        "2. cluster group kserve-v0.11.2--k8s-1.33",
        "3. cluster group kserve-v0.14.0--k8s-1.33",
    ]
    assert "       install cert-manager v1.3.0 CRDs" in lines
    assert "       install cert-manager v1.15.1 CRDs" in lines
    assert (
        "       install kserve.yaml, kserve-runtimes.yaml by server-side apply (CRDs first, until Established)"
    ) in lines
    assert (
        "       install kserve.yaml, kserve-cluster-resources.yaml by server-side apply (CRDs first, until Established)"
    ) in lines
    installs = [line for line in lines if line.startswith("     step 1 install: KServe ")]
    assert len(installs) == 16  # every run names its install step; the group's first cell does it
    assert sum(line.startswith("   cluster: start etcd + kube-apiserver") for line in lines) == 3
    assert "   teardown: delete the cluster of kserve-v0.14.0--k8s-1.33 (unless --keep-cluster)" in lines
    reports_line = lines[-1]
    assert reports_line.startswith("reports: ")
    assert reports_line.endswith("report.json, report.md, report.html, junit.xml")


def test_plan_shows_the_exact_patch_of_each_cell(local_plan: str) -> None:
    blocks = cell_blocks(local_plan)
    expected = {
        "kserve-v0.14.0--k8s-v0.13.1--k8s-1.33": expected_patch(K8S_PROXY, SHIPPED_ARGS, SHIPPED_SECURITY_CONTEXT),
        "kserve-v0.14.0--k8s-v0.13.1--k8s-1.33--quiet": expected_patch(K8S_PROXY, QUIET_ARGS, SHIPPED_SECURITY_CONTEXT),
        "kserve-v0.14.0--quay-v0.18.0--k8s-1.33": expected_patch(QUAY_PROXY, SHIPPED_ARGS, SHIPPED_SECURITY_CONTEXT),
        "kserve-v0.14.0--quay-v0.18.0--k8s-1.33--quiet": expected_patch(
            QUAY_PROXY, QUIET_ARGS, SHIPPED_SECURITY_CONTEXT
        ),
        # v0.10 ships no securityContext: the patch removes any an earlier cell left
        "kserve-v0.10.1--quay-v0.18.0--k8s-1.33": expected_patch(QUAY_PROXY, SHIPPED_ARGS, None),
        "kserve-v0.10.1--k8s-v0.13.1--k8s-1.33--quiet": expected_patch(K8S_PROXY, QUIET_ARGS, None),
    }
    for cell_id, patch in expected.items():
        assert patch_of(blocks[cell_id]) == patch, cell_id
    for cell_id, block in blocks.items():
        if not cell_id.startswith("kserve-v0.11.2"):
            assert "     step 4 check-image: the Deployment and its pods run the expected proxy image" in block
            assert any(line.startswith("       wait: rollout (observedGeneration") for line in block)


def test_plan_says_when_the_patch_is_computed_at_run_time(local_plan: str) -> None:
    blocks = cell_blocks(local_plan)
    missing = {cell_id: block for cell_id, block in blocks.items() if cell_id.startswith("kserve-v0.11.2")}
    assert len(missing) == 2
    for cell_id, block in missing.items():
        image = QUAY_PROXY if "quay-v0.18.0" in cell_id else K8S_PROXY
        assert (
            f"       container kube-rbac-proxy image -> {image}"
            " (manifest not on disk: the exact patch is computed at run time)"
        ) in block
        assert not any(line.startswith("       patch deployment") for line in block)


def test_plan_prints_each_scenario_with_its_own_steps_and_expectation(sandbox: Sandbox) -> None:
    selection = Selection(kserve=("v0.10.1", "v0.14.0"), proxy=("quay-v0.22.1", "gcr-v0.13.1"), k8s=("1.33",))
    runs = runs_of("local", selection)
    before = _children()
    plan = render_plan(options("local", sandbox, selection=selection), runs)
    assert_touched_nothing(sandbox, before)
    assert planned_steps(plan) == {
        (scenario.name, cell.id): list(scenario.step_names) for scenario, cell in runs
    }
    assert set(planned_steps(plan)) == {
        ("fresh-install", "kserve-v0.10.1--quay-v0.22.1--k8s-1.33"),
        ("migration", "kserve-v0.10.1--quay-v0.22.1--k8s-1.33"),
        ("rollback", "kserve-v0.10.1--quay-v0.22.1--k8s-1.33"),
        ("retired-image", "kserve-v0.10.1--gcr-v0.13.1--k8s-1.33"),
        ("fresh-install", "kserve-v0.14.0--quay-v0.22.1--k8s-1.33"),
        ("migration", "kserve-v0.14.0--quay-v0.22.1--k8s-1.33"),
        ("rollback", "kserve-v0.14.0--quay-v0.22.1--k8s-1.33"),
        ("retired-image", "kserve-v0.14.0--gcr-v0.13.1--k8s-1.33"),
    }
    retired = cell_blocks(plan, "retired-image")["kserve-v0.10.1--gcr-v0.13.1--k8s-1.33"]
    assert "       retired per the matrix: image-unavailable without a pull (this tier pulls no images)" in retired
    assert any(line.startswith("     expect: verdict image-unavailable") for line in retired)
    assert not any("check-" in line for line in retired)
    migration = cell_blocks(plan, "migration")["kserve-v0.10.1--quay-v0.22.1--k8s-1.33"]
    # the frozen copy of the retired image the release ships, then the cell's image
    assert patch_of(migration, 0)["spec"]["template"]["spec"]["containers"][0]["image"] == K8S_PROXY
    assert patch_of(migration, 1)["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "quay.io/brancz/kube-rbac-proxy:v0.22.1"
    )
    assert "     catch: on fail / error / image-unavailable, collect diagnostics" in "\n".join(migration)
    rollback = cell_blocks(plan, "rollback")["kserve-v0.10.1--quay-v0.22.1--k8s-1.33"]
    # the cell's image, then back to the frozen copy of the image the release ships
    assert patch_of(rollback, 0)["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "quay.io/brancz/kube-rbac-proxy:v0.22.1"
    )
    assert patch_of(rollback, 1)["spec"]["template"]["spec"]["containers"][0]["image"] == K8S_PROXY


def test_plan_applies_registry_mirrors_to_the_patch(sandbox: Sandbox) -> None:
    selection = Selection(kserve=("v0.14.0", "v0.11.2"), proxy=("quay-v0.18.0",), k8s=("1.33",))
    plan = render_plan(
        options("local", sandbox, selection=selection, registry_mirrors=("quay.io=mirror.example:5000/quay",)),
        runs_of("local", selection),
    )
    blocks = cell_blocks(plan)
    image = "mirror.example:5000/quay/brancz/kube-rbac-proxy:v0.18.0"
    assert patch_of(blocks["kserve-v0.14.0--quay-v0.18.0--k8s-1.33"])["spec"]["template"]["spec"]["containers"][0][
        "image"
    ] == image
    assert f"image -> {image} (manifest not on disk" in "\n".join(blocks["kserve-v0.11.2--quay-v0.18.0--k8s-1.33"])


# -- kind provider (no Docker needed to plan) -----------------------------------------------------


def test_kind_plan_renders_without_docker(sandbox: Sandbox) -> None:
    selection = Selection(cells=(CELLS[0], CELLS[4], "kserve-v0.10.1--gcr-v0.13.1--k8s-1.33"))
    before = _children()
    plan = render_plan(options("kind", sandbox, selection=selection), runs_of("kind", selection))
    assert_touched_nothing(sandbox, before)
    lines = plan.splitlines()
    assert lines[0].startswith("kserve-compat plan: provider kind, 5 scenario runs of 3 cells in 3 cluster groups")
    creates = [line for line in lines if line.startswith("   cluster: create kind cluster ")]
    assert [line.split()[4].rstrip(":") for line in creates] == [
        "kcompat-v0-10-1-k8s-1-33",
        "kcompat-v0-11-2-k8s-1-33",
        "kcompat-v0-14-0-k8s-1-33",
    ]
    assert all("node image kindest/node:v1.33." in line for line in creates)
    assert "       install cert-manager v1.15.1, until its webhook answers" in lines
    blocks = cell_blocks(plan)
    assert patch_of(blocks["kserve-v0.14.0--quay-v0.18.0--k8s-1.33"]) == expected_patch(
        QUAY_PROXY, SHIPPED_ARGS, SHIPPED_SECURITY_CONTEXT
    )
    # on kind the retired image is swapped in for real: the kubelet's pull must fail
    retired = cell_blocks(plan, "retired-image")["kserve-v0.10.1--gcr-v0.13.1--k8s-1.33"]
    assert patch_of(retired)["spec"]["template"]["spec"]["containers"][0]["image"] == GCR_PROXY


def test_plan_from_the_cache_writes_nothing(sandbox: Sandbox) -> None:
    cached = sandbox.root / "cache" / "manifests" / "kserve" / "v0.14.0" / "kserve.yaml"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(session_release_files().kserve_path("v0.14.0"), cached)
    selection = Selection(kserve=("v0.14.0",), proxy=("quay-v0.18.0",), k8s=("1.33",))
    plan = render_plan(options("local", sandbox, manifest_dir=None, selection=selection), runs_of("local", selection))
    # the cached copy is used for the exact patch ...
    assert patch_of(cell_blocks(plan)["kserve-v0.14.0--quay-v0.18.0--k8s-1.33"]) == expected_patch(
        QUAY_PROXY, SHIPPED_ARGS, SHIPPED_SECURITY_CONTEXT
    )
    # ... and nothing is written: not the lock file either
    assert not sandbox.lock.exists(), sandbox.lock.read_text()


# -- the pytest entry point ------------------------------------------------------------------


def run_scenarios(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "KSERVE_COMPAT_MANIFEST_DIR": str(session_release_files().offline_directory()),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "KSERVE_COMPAT_CACHE": str(home / ".cache" / "kserve-compat"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios", "--provider", "kind", *args, "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_pytest_plan_prints_the_plan_and_exits_0(tmp_path: Path) -> None:
    done = run_scenarios(tmp_path, "--plan", "--kserve", "v0.14.0", "--proxy", "quay-v0.18.0")
    assert done.returncode == 0, done.stdout + done.stderr
    headers = [line for line in done.stdout.splitlines() if "cluster group kserve-v0.14.0--k8s-" in line]
    assert headers
    assert all(line.split(". ", 1)[1].startswith("cluster group kserve-v0.14.0--k8s-1.") for line in headers)
    assert '"image":"quay.io/brancz/kube-rbac-proxy:v0.18.0"' in done.stdout
    assert "   run fresh-install on kserve-v0.14.0--quay-v0.18.0--k8s-1." in done.stdout
    assert "kserve-compat: migration not run for kserve-v0.14.0--quay-v0.18.0--k8s-1." in done.stdout
    assert list((tmp_path / "home").iterdir()) == []
    # It ends like a run that had nothing to do, not with pytest.exit's banner.
    assert "!!!" not in done.stdout + done.stderr and "Exit:" not in done.stdout + done.stderr
    assert re.search(r"=+ \d+ deselected in [\d.]+s =+\s*$", done.stdout), done.stdout[-300:]


def test_kind_without_docker_stops_with_one_line_pointing_to_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An engine that is certainly absent, whether or not this machine runs one (the docker
    # client, kind and so the harness all honour DOCKER_HOST): no cluster can be created.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker-engine.sock")
    done = run_scenarios(tmp_path, "--kserve", "v0.14.0", "--proxy", "quay-v0.18.0")
    assert done.returncode == 3, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    pointing = [line for line in output.splitlines() if "nox -s local" in line]
    assert len(pointing) == 1, output
    assert "docker" in pointing[0].lower()
    assert " passed" not in output
