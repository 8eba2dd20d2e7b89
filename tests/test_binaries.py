"""The local tier's binaries: lookup order, the module proxy's refusals, real builds with go.

Builds go into the real cache (``KSERVE_COMPAT_CACHE`` or ``~/.cache/kserve-compat``) so a
second run, and the rest of the suite, reuse them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.availability import unavailable
from e2e.errors import EnvironmentMissing, UsageError
from e2e.local import binaries


@pytest.fixture()
def clean_overrides(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No per-binary or bin-dir overrides leak in from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("KSERVE_COMPAT_") and name != "KSERVE_COMPAT_CACHE":
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture()
def empty_cache(clean_overrides: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    clean_overrides.setenv("KSERVE_COMPAT_CACHE", str(cache))
    return cache


def fake_binary(path: Path) -> Path:
    """A tiny executable script standing in for a binary (lookup never runs it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(0o755)
    return path


def require_go() -> None:
    if not shutil.which("go"):
        unavailable("go is not on PATH; the local tier builds its binaries with Go")


# ---------------------------------------------------------------------------- naming


def test_defaults_cover_every_component() -> None:
    assert set(binaries.DEFAULT_VERSIONS) == set(binaries.COMPONENTS)
    assert binaries.DEFAULT_VERSIONS["kube-apiserver"] == binaries.KUBERNETES_VERSION
    assert "v0.13.1" in binaries.PROXY_VERSIONS and "v0.18.0" in binaries.PROXY_VERSIONS


def test_cache_root_follows_env(empty_cache: Path) -> None:
    assert binaries.cache_root() == empty_cache
    assert binaries.binary_path("etcd", "v3.6.5") == empty_cache / "bin/etcd/v3.6.5/etcd"


def test_env_var_names() -> None:
    assert binaries.env_var("etcd", "v3.6.5") == "KSERVE_COMPAT_ETCD"
    assert binaries.env_var("kube-apiserver", "v1.34.4") == "KSERVE_COMPAT_KUBE_APISERVER"
    assert binaries.env_var("kube-rbac-proxy", "v0.18.0") == "KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_18_0"


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("v0.18.0", "v0.18.0"),
        ("quay.io/brancz/kube-rbac-proxy:v0.18.0", "v0.18.0"),
        ("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1", "v0.13.1"),
        ("quay.io/brancz/kube-rbac-proxy:v0.18.2@sha256:" + "a" * 64, "v0.18.2"),
        ("v0.13.1-amd64", "v0.13.1"),
        ("localhost:5000/kube-rbac-proxy:v0.15.0", "v0.15.0"),
    ],
)
def test_proxy_version_for_tag(tag: str, version: str) -> None:
    assert binaries.proxy_version_for_tag(tag) == version


@pytest.mark.parametrize("tag", ["latest", "quay.io/brancz/kube-rbac-proxy", "v0.18"])
def test_proxy_version_for_tag_rejects_non_versions(tag: str) -> None:
    with pytest.raises(UsageError, match=r"expected vMAJOR\.MINOR\.PATCH"):
        binaries.proxy_version_for_tag(tag)


def test_unknown_component_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'etcdctl'"):
        binaries.locate("etcdctl")


def test_proxy_main_package_moved_in_v0_14() -> None:
    assert binaries.recipe("kube-rbac-proxy", "v0.13.1").package == binaries.PROXY_MODULE
    assert binaries.recipe("kube-rbac-proxy", "v0.14.0").package.endswith("/cmd/kube-rbac-proxy")


def test_kubernetes_recipe_stamps_the_version() -> None:
    flags = binaries.recipe("kube-apiserver", "v1.34.4").ldflags
    assert "-X k8s.io/component-base/version.gitVersion=v1.34.4" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=34" in flags


# ---------------------------------------------------------------------------- lookup order


def test_env_var_wins_over_bin_dir_and_cache(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    from_dir = fake_binary(bin_dir / "etcd")
    from_env = fake_binary(tmp_path / "elsewhere" / "my-etcd")
    monkeypatch.setenv("KSERVE_COMPAT_BIN_DIR", str(bin_dir))
    assert binaries.locate("etcd") == from_dir
    monkeypatch.setenv("KSERVE_COMPAT_ETCD", str(from_env))
    assert binaries.locate("etcd") == from_env


def test_bin_dir_names_proxies_by_version(empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    proxy = fake_binary(bin_dir / "kube-rbac-proxy-v0.18.0")
    monkeypatch.setenv("KSERVE_COMPAT_BIN_DIR", str(bin_dir))
    assert binaries.locate("kube-rbac-proxy", "v0.18.0") == proxy
    assert binaries.locate("kube-rbac-proxy", "v0.16.0") is None
    monkeypatch.setenv("KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_16_0", str(proxy))
    assert binaries.locate("kube-rbac-proxy", "v0.16.0") == proxy


def test_env_var_pointing_at_nothing_is_a_usage_error(
    empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSERVE_COMPAT_KUBECTL", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=r"KSERVE_COMPAT_KUBECTL=.*expected an executable file"):
        binaries.locate("kubectl")


def test_cache_needs_matching_build_info(empty_cache: Path) -> None:
    path = fake_binary(binaries.binary_path("kwok", "v0.7.0"))
    assert binaries.locate("kwok") is None  # no build-info: not trusted

    info = {"recipe": binaries.recipe("kwok", "v0.7.0").key(), "size": path.stat().st_size}
    (path.parent / binaries.BUILD_INFO).write_text(json.dumps(info))
    assert binaries.locate("kwok") == path

    info["recipe"] = {**info["recipe"], "ldflags": ["-X something.else=1"]}  # type: ignore[dict-item]
    (path.parent / binaries.BUILD_INFO).write_text(json.dumps(info))
    assert binaries.locate("kwok") is None  # built another way: rebuild


def test_ensure_without_build_names_what_is_missing(empty_cache: Path) -> None:
    with pytest.raises(EnvironmentMissing, match=r"kwok v0\.7\.0: not built .*KSERVE_COMPAT_KWOK"):
        binaries.ensure("kwok", build=False)


# ---------------------------------------------------------------------------- the real module proxy


def test_unavailable_proxy_version_raises_build_unavailable(clean_overrides: pytest.MonkeyPatch) -> None:
    require_go()
    with pytest.raises(binaries.BuildUnavailable) as caught:
        binaries.ensure_proxy("v0.13.1")
    message = str(caught.value)
    assert "github.com/brancz/kube-rbac-proxy@v0.13.1" in message
    assert "\n" not in message


def test_status_reports_unavailable_without_raising(clean_overrides: pytest.MonkeyPatch) -> None:
    require_go()
    ok, reason = binaries.buildable("kube-rbac-proxy", "v0.13.1")
    assert not ok and "v0.13.1" in reason
    assert binaries.status("kube-rbac-proxy", "v0.13.1").status == "unavailable"


def test_ensure_all_continues_past_an_unavailable_version(clean_overrides: pytest.MonkeyPatch) -> None:
    require_go()
    summary = binaries.ensure_all(["kube-rbac-proxy"], ["v0.13.1"])
    [result] = summary.results
    assert result.status == "unavailable" and "v0.13.1" in result.detail
    assert summary.ok  # nothing here can fix an unavailable version


# ---------------------------------------------------------------------------- real builds


@pytest.mark.slow
def test_builds_a_real_proxy_that_runs(clean_overrides: pytest.MonkeyPatch) -> None:
    require_go()
    path = binaries.ensure_proxy("v0.18.0")  # minutes when cold, instant when cached
    info = binaries.read_build_info("kube-rbac-proxy", "v0.18.0")
    assert info is not None
    assert info["version"] == "v0.18.0" and info["module"] == binaries.PROXY_MODULE
    assert info["go_version"].startswith("go")

    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode in (0, 2), result.stderr[-2000:]
    assert "--upstream" in result.stdout + result.stderr

    version = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert "v0.18.0" in version.stdout + version.stderr


@pytest.mark.slow
def test_second_ensure_does_not_rebuild(clean_overrides: pytest.MonkeyPatch) -> None:
    require_go()
    path = binaries.ensure_proxy("v0.18.0")
    info_file = path.parent / binaries.BUILD_INFO
    before = (info_file.read_text(), path.stat().st_mtime_ns)

    assert binaries.ensure_proxy("quay.io/brancz/kube-rbac-proxy:v0.18.0") == path
    summary = binaries.ensure_all(["kube-rbac-proxy"], ["v0.18.0"])
    assert [r.status for r in summary.results] == ["present"]
    assert (info_file.read_text(), path.stat().st_mtime_ns) == before


# ---------------------------------------------------------------------------- the CLI subcommand


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    binaries.add_arguments(parser)
    return binaries.run(parser.parse_args(argv))


def test_cli_list_shows_status_without_building(empty_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_go()
    assert cli("--list", "--component", "kube-rbac-proxy", "--proxy-versions", "v0.13.1,v0.18.0") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "v0.13.1" in lines[0] and "unavailable" in lines[0] and "403" in lines[0]
    assert "v0.18.0" in lines[1] and "missing" in lines[1]
    assert not (empty_cache / "bin" / "kube-rbac-proxy" / "v0.18.0" / "kube-rbac-proxy").exists()


def test_cli_warns_about_an_unavailable_version_and_succeeds(
    clean_overrides: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_go()
    assert cli("--component", "kube-rbac-proxy", "--proxy-versions", "v0.13.1") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("warning: kube-rbac-proxy v0.13.1 unavailable:")


def test_missing_go_is_an_environment_error(empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    with pytest.raises(EnvironmentMissing, match="go: not found on PATH"):
        binaries.ensure("kwok")
    assert binaries.status("kwok").status == "missing"
