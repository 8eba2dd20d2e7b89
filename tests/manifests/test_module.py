"""Release manifests from the release's own Go module (``--manifests-from-module``).

The unit tests give ``ModuleFiles`` a stand-in for ``go mod download`` (a module directory
written here) and for the proxy's ``.info`` answer, and use a lock file of their own. The
integration tests read real files out of ``github.com/kserve/kserve`` through the Go module
proxy (skipped without ``go``, failing with ``CI=true``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from e2e import binaries, plugin
from e2e.availability import unavailable
from e2e.errors import EnvironmentMissing, LockMismatch, NotInOfflineDirectory, UsageError
from e2e.images import RegistryMirrors
from e2e.install import CellSkipped, Installer
from e2e.manifests import (
    DEFAULT_LOCK_FILE,
    ENV_MANIFESTS_FROM_MODULE,
    ManifestLock,
    ModuleFiles,
    NotInModule,
    ReleaseFiles,
    cert_manager_crds_file,
    kserve_file,
    load_release_manifest,
    manifests_from_module_requested,
    shipped_proxy,
)
from e2e.matrix import load_matrix

MODULE = "github.com/kserve/kserve"
REFUSAL = (
    f"{MODULE}@v0.18.1: the Go module proxy does not serve it (reading "
    "https://proxy.golang.org/github.com/kserve/kserve/@v/v0.18.1.info: 403 Forbidden "
    "server response: This module version is not available.)"
)


def controller_manifest(version: str) -> str:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "kserve-controller-manager", "namespace": "kserve"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "manager", "image": f"kserve/kserve-controller:{version}"},
                        {"name": "kube-rbac-proxy", "image": "quay.io/brancz/kube-rbac-proxy:v0.18.0"},
                    ]
                }
            }
        },
    }
    return yaml.safe_dump(deployment)


class FakeProxy:
    """``go mod download`` and ``go list -m`` as the Go module proxy would answer them."""

    def __init__(self, root: Path, served: dict[str, dict[str, str]], refused: dict[str, str]) -> None:
        self.root = root
        self.served = served  # version -> {file name: text} under install/<version>/
        self.refused = refused  # version -> the proxy's answer
        self.downloads: list[str] = []
        self.probes: list[str] = []

    def download(self, module: str, version: str, workdir: Path) -> binaries.ModuleDownload:
        assert workdir.is_dir()
        self.downloads.append(version)
        if version in self.refused:
            raise binaries.BuildUnavailable(self.refused[version])
        directory = self.root / f"kserve@{version}"
        for name, text in self.served[version].items():
            path = directory / "install" / version / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return binaries.ModuleDownload(module, version, directory, directory / "go.mod", "abc123", "verified")

    def probe(self, module: str, version: str) -> str | None:
        self.probes.append(version)
        return self.refused.get(version) or (None if version in self.served else "unknown revision")


@pytest.fixture
def proxy(tmp_path: Path) -> FakeProxy:
    return FakeProxy(
        tmp_path / "gomodcache",
        served={
            "v0.13.1": {"kserve.yaml": controller_manifest("v0.13.1"), "kserve-cluster-resources.yaml": "{}\n"},
            "v0.17.0": {"kserve.yaml": controller_manifest("v0.17.0")},
        },
        refused={"v0.18.1": REFUSAL},
    )


@pytest.fixture
def offline(tmp_path: Path) -> Path:
    """An offline directory holding v0.14.0 only."""
    path = tmp_path / "offline" / "kserve" / "v0.14.0" / "kserve.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(controller_manifest("v0.14.0"))
    return tmp_path / "offline"


@pytest.fixture
def lock(tmp_path: Path) -> ManifestLock:
    return ManifestLock(tmp_path / "lock.json")


FilesFactory = Callable[..., ReleaseFiles]


@pytest.fixture
def files(proxy: FakeProxy, offline: Path, lock: ManifestLock, tmp_path: Path) -> FilesFactory:
    def make(*, offline_dir: Path | None = offline, from_module: bool = True, **kwargs: object) -> ReleaseFiles:
        module = ModuleFiles(download=proxy.download, probe=proxy.probe) if from_module else None
        return ReleaseFiles(
            offline_dir=offline_dir,
            cache_dir=tmp_path / "cache",
            lock=lock,
            module=module,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------- switching it on


def test_the_module_source_is_off_unless_asked_for() -> None:
    assert ReleaseFiles.from_environment("/m", environ={}).module is None
    assert ReleaseFiles.from_environment("/m", environ={ENV_MANIFESTS_FROM_MODULE: "0"}).module is None
    assert ReleaseFiles.from_environment("/m", environ={ENV_MANIFESTS_FROM_MODULE: "1"}).module is not None
    assert ReleaseFiles.from_environment("/m", environ={}, from_module=True).module is not None


def test_a_bad_switch_value_is_one_line_naming_the_variable() -> None:
    with pytest.raises(UsageError) as caught:
        manifests_from_module_requested({ENV_MANIFESTS_FROM_MODULE: "yes"})
    assert str(caught.value) == f"{ENV_MANIFESTS_FROM_MODULE}='yes': expected 1 (on) or 0 (off)"


# ---------------------------------------------------------------------------- reading


def test_without_the_switch_a_file_the_offline_directory_lacks_is_not_in_it(
    files: FilesFactory, proxy: FakeProxy
) -> None:
    with pytest.raises(NotInOfflineDirectory, match="not in the offline manifest directory"):
        files(from_module=False).kserve("v0.13.1")
    assert proxy.downloads == []


def test_a_file_the_offline_directory_lacks_comes_from_the_module_and_says_so(files: FilesFactory) -> None:
    release_files = files()
    text = release_files.kserve("v0.13.1")
    assert "kserve/kserve-controller:v0.13.1" in text
    ref = kserve_file("v0.13.1")
    assert release_files.origin(ref) == f"Go module {MODULE}@v0.13.1: install/v0.13.1/kserve.yaml"
    assert release_files.origins() == {ref.key: f"Go module {MODULE}@v0.13.1: install/v0.13.1/kserve.yaml"}


def test_a_cells_notes_say_when_its_manifest_came_from_the_module(files: FilesFactory) -> None:
    matrix = load_matrix()
    release_files = files()
    from_module = load_release_manifest(matrix.release("v0.13.1"), release_files)
    origin = f"Go module {MODULE}@v0.13.1: install/v0.13.1/kserve.yaml"
    assert from_module.origin == origin
    notes = shipped_proxy(matrix.release("v0.13.1"), from_module).notes()
    assert notes[1] == f"kserve v0.13.1 kserve.yaml read from the {origin} (--manifests-from-module)"
    offline = load_release_manifest(matrix.release("v0.14.0"), release_files)
    assert offline.origin.startswith("offline directory: ")
    assert not any("read from" in note for note in shipped_proxy(matrix.release("v0.14.0"), offline).notes())


def test_the_offline_directory_wins_and_the_module_is_not_asked(files: FilesFactory, proxy: FakeProxy) -> None:
    release_files = files()
    assert "kserve-controller:v0.14.0" in release_files.kserve("v0.14.0")
    assert proxy.downloads == []
    assert release_files.origin(kserve_file("v0.14.0")) == (
        f"offline directory: {release_files.offline_dir}/kserve/v0.14.0/kserve.yaml"
    )


def test_the_module_is_downloaded_once_per_version(files: FilesFactory, proxy: FakeProxy) -> None:
    release_files = files()
    release_files.kserve("v0.13.1")
    release_files.kserve("v0.13.1", "kserve-cluster-resources.yaml")
    assert proxy.downloads == ["v0.13.1"]


def test_a_refused_version_is_skipped_with_the_go_proxys_answer_on_one_line(
    files: FilesFactory, proxy: FakeProxy, offline: Path
) -> None:
    release_files = files()
    with pytest.raises(NotInModule) as caught:
        release_files.kserve("v0.18.1")
    assert str(caught.value) == (
        f"kserve v0.18.1 kserve.yaml: not in the offline manifest directory {offline}, and {REFUSAL}"
    )
    assert "\n" not in str(caught.value)
    # A NotInOfflineDirectory: the installer skips the cell with that reason.
    assert isinstance(caught.value, NotInOfflineDirectory)
    with pytest.raises(NotInModule):
        release_files.kserve("v0.18.1", "kserve-cluster-resources.yaml")
    assert proxy.downloads == ["v0.18.1"]  # the refusal is remembered


def test_the_installer_skips_a_cell_whose_release_the_proxy_refuses(files: FilesFactory) -> None:
    matrix = load_matrix()
    installer = Installer(matrix, files(), RegistryMirrors(()), rollout_timeout_s=1)
    release = matrix.release("v0.18.1")
    with pytest.raises(CellSkipped, match="403 Forbidden"):
        installer.release_manifest(release)
    manifest = installer.release_manifest(matrix.release("v0.13.1"))
    assert manifest.manager_container()["image"] == "kserve/kserve-controller:v0.13.1"


def test_a_file_the_module_lacks_is_named_with_its_path_in_the_module(files: FilesFactory) -> None:
    with pytest.raises(NotInModule) as caught:
        files().kserve("v0.17.0", "kserve-cluster-resources.yaml")
    assert str(caught.value).endswith(f"and {MODULE}@v0.17.0 has no install/v0.17.0/kserve-cluster-resources.yaml")


def test_cert_manager_files_never_come_from_the_module(files: FilesFactory, proxy: FakeProxy) -> None:
    with pytest.raises(NotInOfflineDirectory) as caught:
        files().text(cert_manager_crds_file("v1.16.1"))
    assert not isinstance(caught.value, NotInModule)
    assert proxy.downloads == []


def test_a_module_copy_is_checked_against_the_lock_and_named_on_a_mismatch(
    files: FilesFactory, lock: ManifestLock
) -> None:
    ref = kserve_file("v0.13.1")
    lock.save({ref.key: "0" * 64})
    with pytest.raises(LockMismatch) as caught:
        files().read(ref)
    assert str(caught.value).startswith(
        f"kserve/v0.13.1/kserve.yaml from Go module {MODULE}@v0.13.1: install/v0.13.1/kserve.yaml: sha256 "
    )


def test_a_module_copy_matching_its_pin_is_read_and_an_unpinned_one_adds_no_pin(
    files: FilesFactory, lock: ManifestLock
) -> None:
    pinned = kserve_file("v0.13.1")
    lock.save({pinned.key: sha256(controller_manifest("v0.13.1"))})
    release_files = files()
    release_files.read(pinned)
    release_files.read(kserve_file("v0.13.1", "kserve-cluster-resources.yaml"))
    assert lock.digests() == {pinned.key: sha256(controller_manifest("v0.13.1"))}


def test_without_an_offline_directory_the_module_comes_before_a_download(files: FilesFactory) -> None:
    release_files = files(offline_dir=None, release_urls={"kserve": "http://127.0.0.1:9/unused"})
    assert "kserve-controller:v0.13.1" in release_files.kserve("v0.13.1")
    assert release_files.source_of(kserve_file("v0.13.1")).startswith(f"Go module {MODULE}@v0.13.1")


def test_without_an_offline_directory_a_refused_version_is_downloaded_instead(
    files: FilesFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    release_files = files(offline_dir=None)
    asked: list[str] = []

    def download(ref: object, target: Path) -> bytes:
        asked.append(str(target))
        return b"downloaded"

    monkeypatch.setattr(release_files, "_download", download)
    assert release_files.kserve("v0.18.1") == "downloaded"
    assert release_files.origin(kserve_file("v0.18.1")) == f"download: {release_files.url(kserve_file('v0.18.1'))}"
    assert len(asked) == 1


def test_the_plan_names_the_module_for_a_file_the_offline_directory_lacks(files: FilesFactory) -> None:
    release_files = files()
    assert release_files.source_of(kserve_file("v0.13.1")) == (
        f"Go module {MODULE}@v0.13.1: install/v0.13.1/kserve.yaml"
    )
    assert release_files.source_of(kserve_file("v0.14.0")).startswith("offline directory: ")


def test_without_go_the_read_says_which_switch_needs_it(files: FilesFactory, proxy: FakeProxy) -> None:
    def no_go(module: str, version: str, workdir: Path) -> binaries.ModuleDownload:
        raise EnvironmentMissing("go: not found on PATH; the local tier builds its binaries with Go")

    release_files = files()
    assert release_files.module is not None
    release_files.module._download = no_go
    with pytest.raises(EnvironmentMissing) as caught:
        release_files.kserve("v0.13.1")
    assert str(caught.value).startswith(
        f"kserve v0.13.1 kserve.yaml: {ENV_MANIFESTS_FROM_MODULE}=1 reads it from the release's Go module, but go:"
    )


# ---------------------------------------------------------------------------- selecting releases


def test_available_counts_the_offline_directory_and_what_the_proxy_serves(
    files: FilesFactory, proxy: FakeProxy
) -> None:
    with_module = files()
    assert with_module.available(kserve_file("v0.14.0"))  # offline
    assert with_module.available(kserve_file("v0.17.0"))  # served
    assert not with_module.available(kserve_file("v0.18.1"))  # refused
    assert proxy.downloads == []  # .info only
    without = files(from_module=False)
    assert without.available(kserve_file("v0.14.0"))
    assert not without.available(kserve_file("v0.17.0"))
    assert files(offline_dir=None, from_module=False).available(kserve_file("v0.17.0"))  # a download may work


def test_available_without_go_counts_only_the_offline_directory(files: FilesFactory) -> None:
    def no_go(module: str, version: str) -> str | None:
        raise EnvironmentMissing("go: not found on PATH")

    release_files = files()
    assert release_files.module is not None
    release_files.module._probe = no_go
    assert not release_files.available(kserve_file("v0.17.0"))


class FakeConfig:
    """What ``e2e.plugin.pytest_configure`` asks of a pytest config."""

    def __init__(self, **options: object) -> None:
        self.options = {
            "matrix": None,
            "kserve": None,
            "proxy": None,
            "k8s": None,
            "cell": [],
            "variant": None,
            "all_releases": False,
            "proxy_image": [],
            "proxy_binary": None,
            "provider": "local",
            "manifest_dir": None,
            "manifests_from_module": False,
            "reports_dir": "reports",
            "registry_mirror": [],
            **options,
        }
        self.stash = pytest.Stash()

    def getoption(self, name: str, default: object = None) -> object:
        return self.options.get(name, default)


def test_all_releases_offline_keeps_the_releases_the_module_serves(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin's --all-releases filter, with the module source off and on."""
    probed: list[str] = []

    def probe(module: str, version: str) -> str | None:
        probed.append(version)
        return None if version == "v0.17.0" else "403 Forbidden"

    monkeypatch.setattr(binaries, "module_unavailable_reason", probe)
    # Off to start with; the plugin's --manifests-from-module turns it on, and monkeypatch
    # restores it after the test.
    monkeypatch.setenv(ENV_MANIFESTS_FROM_MODULE, "0")

    plans = []

    def releases(**options: object) -> set[str]:
        config = FakeConfig(all_releases=True, manifest_dir=str(offline), **options)
        plugin.pytest_configure(config)  # type: ignore[arg-type]
        plans.append(config.stash[plugin._PLAN])
        return {cell.release.version for cell in plans[-1].cells}

    assert releases() == {"v0.14.0"}
    assert probed == []
    assert releases(manifests_from_module=True) == {"v0.14.0", "v0.17.0"}
    # The run's release files read the module: the plan says so, not the environment.
    assert plans[-1].files.module is not None
    assert os.environ[ENV_MANIFESTS_FROM_MODULE] == "0"
    assert "v0.17.0" in probed and "v0.14.0" not in probed
    # Asked for by name, a release stays selected (its cell is skipped with the reason).
    assert releases(kserve="v0.18.1") == {"v0.18.1"}


# ---------------------------------------------------------------------------- the real module


def _require_go() -> None:
    if shutil.which("go") is None:
        unavailable("go: not on PATH; reading release files from the Go module needs it")


@pytest.fixture
def real_files(tmp_path: Path) -> ReleaseFiles:
    """Module source on, an empty offline directory, the repository's pins (read, never written)."""
    _require_go()
    (tmp_path / "empty").mkdir()
    return ReleaseFiles(
        offline_dir=tmp_path / "empty",
        cache_dir=tmp_path / "cache",
        lock=ManifestLock(DEFAULT_LOCK_FILE),
        module=ModuleFiles(),
    )


def test_the_real_kserve_v0_13_1_manifest_comes_from_its_module(real_files: ReleaseFiles) -> None:
    release = load_matrix().release("v0.13.1")
    try:
        manifest = load_release_manifest(release, real_files)
    except NotInModule as exc:
        unavailable(f"the Go module proxy does not answer here: {exc}")
    assert manifest.manager_container()["image"] == "kserve/kserve-controller:v0.13.1"
    assert manifest.proxy_image == "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
    assert real_files.origin(kserve_file("v0.13.1")) == f"Go module {MODULE}@v0.13.1: install/v0.13.1/kserve.yaml"


def test_real_module_copies_match_the_repositorys_pins(real_files: ReleaseFiles) -> None:
    """The lock pins v0.15.2's files; the module's copies verify against them (no mismatch)."""
    pins = json.loads(DEFAULT_LOCK_FILE.read_text())
    for name in ("kserve.yaml", "kserve-cluster-resources.yaml"):
        ref = kserve_file("v0.15.2", name)
        assert ref.key in pins
        try:
            data = real_files.read(ref)
        except NotInModule as exc:
            unavailable(f"the Go module proxy does not answer here: {exc}")
        assert hashlib.sha256(data).hexdigest() == pins[ref.key]


def test_a_real_refused_version_gives_the_go_proxys_answer(real_files: ReleaseFiles) -> None:
    with pytest.raises(NotInModule) as caught:
        real_files.kserve("v0.18.1")
    message = str(caught.value)
    assert message.startswith("kserve v0.18.1 kserve.yaml: not in the offline manifest directory ")
    assert f"{MODULE}@v0.18.1: the Go module proxy does not serve it (" in message
    assert "\n" not in message
