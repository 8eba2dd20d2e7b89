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
from helpers.paths import TEST_DATA

from e2e import binaries, binaries_cli
from e2e.availability import unavailable
from e2e.errors import EnvironmentMissing, UsageError

# The docker client honours DOCKER_HOST: tests about "no engine" hold where one runs too.
ABSENT_DOCKER_ENGINE = "unix:///nonexistent/kserve-compat-tests/docker.sock"


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
    assert set(binaries.DEFAULT_VERSIONS) == set(binaries.ALL_COMPONENTS)
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
    binaries_cli.add_arguments(parser)
    return binaries_cli.run(parser.parse_args(argv))


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


# ---------------------------------------------------------------------------- out of the published image

FAKE_DOCKER_DIR = TEST_DATA / "fake-docker"


def refused(version: str) -> str:
    """What the Go module proxy answers for the v0.13 line (through ``download_module``)."""
    return (
        f"github.com/brancz/kube-rbac-proxy@{version}: the Go module proxy does not serve it (reading "
        f"https://proxy.golang.org/github.com/brancz/kube-rbac-proxy/@v/{version}.info: 403 Forbidden)"
    )


@pytest.fixture()
def fake_docker(empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/data/fake-docker/docker first on PATH, and the user's consent to take refused
    versions out of their images; returns the fake's state directory (calls.log)."""
    state = tmp_path / "docker-state"
    monkeypatch.setenv("PATH", f"{FAKE_DOCKER_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    monkeypatch.setenv(binaries.ENV_FROM_IMAGE, "1")
    return state


@pytest.fixture()
def module_proxy_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Go module proxy's 403 for the v0.13 line, scripted: no go runs (a stand-in
    ``go`` on PATH only satisfies the "is go installed" checks)."""

    def refuse(recipes: list[binaries.Recipe]) -> dict[str, Path]:
        raise binaries.BuildUnavailable(refused(recipes[0].version))

    monkeypatch.setattr(binaries, "_build", refuse)
    monkeypatch.setattr(binaries, "module_unavailable_reason", lambda module, version: "403 Forbidden")
    fake_binary(tmp_path / "fake-go" / "go")
    monkeypatch.setenv("PATH", f"{tmp_path / 'fake-go'}{os.pathsep}{os.environ.get('PATH', '')}")


def docker_calls(state: Path) -> list[str]:
    log = state / "calls.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_a_proxy_is_taken_out_of_its_published_image(fake_docker: Path, empty_cache: Path) -> None:
    path = binaries.extract_proxy("v0.13.1")
    assert path == binaries.binary_path("kube-rbac-proxy", "v0.13.1")
    ran = subprocess.run([str(path)], capture_output=True, text=True, timeout=30, check=True)
    assert ran.stdout.strip() == "kube-rbac-proxy from quay.io/brancz/kube-rbac-proxy:v0.13.1"
    assert docker_calls(fake_docker) == ["version", "create", "cp", "image", "rm"]
    assert "cp fake" in (fake_docker / "calls.log").read_text()
    assert ":/usr/local/bin/kube-rbac-proxy " in (fake_docker / "calls.log").read_text()
    assert [p.name for p in fake_docker.iterdir()] == ["calls.log"]  # the container was removed

    info = binaries.read_build_info("kube-rbac-proxy", "v0.13.1")
    assert info is not None
    assert info["source"] == "image" and info["image"] == "quay.io/brancz/kube-rbac-proxy:v0.13.1"
    assert info["path_in_image"] == "/usr/local/bin/kube-rbac-proxy"
    assert info["image_repo_digests"] == ["quay.io/brancz/kube-rbac-proxy@sha256:" + "c" * 64]
    assert info["recipe"]["style"] == "image" and info["size"] == path.stat().st_size
    # the cache accepts it: no second extraction
    assert binaries.locate("kube-rbac-proxy", "v0.13.1") == path


def test_a_refused_version_falls_back_to_the_image(
    fake_docker: Path, empty_cache: Path, module_proxy_refuses: None
) -> None:
    path = binaries.ensure_proxy("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1")
    assert path == binaries.binary_path("kube-rbac-proxy", "v0.13.1")
    assert "create" in docker_calls(fake_docker)
    assert binaries.buildable("kube-rbac-proxy", "v0.13.1") == (True, "")
    summary = binaries.ensure_all(["kube-rbac-proxy"], ["v0.13.0"])
    assert [(r.status, r.path) for r in summary.results] == [
        ("built", binaries.binary_path("kube-rbac-proxy", "v0.13.0"))
    ]


@pytest.mark.parametrize(
    ("setting", "answer"),
    [
        (
            "FAKE_DOCKER_NO_ENGINE",
            "no Docker engine answers (docker version: Cannot connect to the Docker daemon at "
            "unix:///var/run/docker.sock. Is the docker daemon running?)",
        ),
        (
            "FAKE_DOCKER_NO_REGISTRY",
            "a container of the image: docker create exited 125: "
            'Get "https://quay.io/v2/": dial tcp: lookup quay.io: no such host',
        ),
    ],
)
def test_without_engine_or_registry_the_version_stays_unavailable_with_both_answers(
    fake_docker: Path,
    empty_cache: Path,
    module_proxy_refuses: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    answer: str,
) -> None:
    monkeypatch.setenv(setting, "1")
    with pytest.raises(binaries.BuildUnavailable) as caught:
        binaries.ensure_proxy("v0.13.1")
    message = str(caught.value)
    assert message == f"{refused('v0.13.1')}; quay.io/brancz/kube-rbac-proxy:v0.13.1: {answer}"
    assert "rm" not in docker_calls(fake_docker)  # no container was created
    assert not binaries.binary_path("kube-rbac-proxy", "v0.13.1").exists()

    assert cli("--component", "kube-rbac-proxy", "--proxy-versions", "v0.13.1") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line == f"warning: kube-rbac-proxy v0.13.1 unavailable: {message}"


def test_status_names_both_sources_when_no_engine_answers(
    fake_docker: Path, empty_cache: Path, module_proxy_refuses: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_NO_ENGINE", "1")
    result = binaries.status("kube-rbac-proxy", "v0.13.1")
    assert result.status == "unavailable"
    assert "403 Forbidden" in result.detail and "no Docker engine answers" in result.detail
    assert "\n" not in result.detail


def test_without_docker_on_path_extraction_fails_in_one_line(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(empty_cache / "no-tools-here"))
    with pytest.raises(binaries.ExtractFailed, match=r"^docker: not found on PATH$"):
        binaries.extract_proxy("v0.13.1")


def test_the_real_docker_fails_cleanly_when_no_engine_answers(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real docker CLI pointed at an engine that certainly does not exist (whether or not
    this machine runs one: no pull may reach a registry from a test)."""
    if shutil.which("docker") is None:
        unavailable("docker: not found on PATH (the docker CLI is what this test runs)")
    monkeypatch.setenv("DOCKER_HOST", ABSENT_DOCKER_ENGINE)
    with pytest.raises(binaries.ExtractFailed) as caught:
        binaries.extract_proxy("v0.13.1")
    assert "\n" not in str(caught.value) and str(caught.value).startswith(("docker:", "no Docker engine"))


def test_a_refused_version_is_never_taken_out_of_its_image_unless_asked(
    fake_docker: Path, empty_cache: Path, module_proxy_refuses: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine answering is not consent: a pull would reach a registry on the internet."""
    monkeypatch.delenv(binaries.ENV_FROM_IMAGE)
    with pytest.raises(binaries.BuildUnavailable) as caught:
        binaries.ensure_proxy("v0.13.1")
    assert docker_calls(fake_docker) == []
    assert "`kserve-compat binaries --from-image`" in str(caught.value)
    ok, reason = binaries.buildable("kube-rbac-proxy", "v0.13.1")
    assert not ok and f"{binaries.ENV_FROM_IMAGE}=1" in reason
    assert docker_calls(fake_docker) == []

    assert cli("--component", "kube-rbac-proxy", "--proxy-versions", "v0.13.1", "--from-image") == 0
    assert "create" in docker_calls(fake_docker)


def test_the_llmisvc_recipe_builds_cmd_llmisvc_of_the_release_module() -> None:
    rec = binaries.recipe(binaries.KSERVE_LLMISVC, "v0.16.0")
    assert (rec.module, rec.package, rec.style, rec.ldflags) == (
        "github.com/kserve/kserve",
        "github.com/kserve/kserve/cmd/llmisvc",
        "source",
        (),
    )
    assert binaries.recipe(binaries.KSERVE_MANAGER, "v0.16.0").style == rec.style  # one go build can hold both
    assert binaries.env_var(binaries.KSERVE_LLMISVC, "v0.16.0") == "KSERVE_COMPAT_KSERVE_LLMISVC_V0_16_0"
    assert binaries.bin_dir_name(binaries.KSERVE_LLMISVC, "v0.16.0") == "kserve-llmisvc-v0.16.0"
    assert binaries.KSERVE_LLMISVC not in binaries.COMPONENTS  # built on first use, not by default
    with pytest.raises(UsageError, match=r"^kserve-llmisvc v0\.15\.2: KServe has cmd/llmisvc from v0\.16\.0 on$"):
        binaries.recipe(binaries.KSERVE_LLMISVC, "v0.15.2")


def test_a_module_the_proxy_refuses_during_tidy_is_named_with_its_answer() -> None:
    # What `go mod tidy` printed for kube-controller-manager v1.32.13 here.
    tail = [
        "\tk8s.io/kubernetes/pkg/controller/endpointslice imports",
        "\tk8s.io/endpointslice/topologycache: k8s.io/endpointslice@v0.32.13: reading "
        "https://proxy.golang.org/k8s.io/endpointslice/@v/v0.32.13.zip: 403 Forbidden",
    ]
    assert binaries.proxy_refusal(tail) == "k8s.io/endpointslice@v0.32.13: 403 Forbidden"
    assert binaries.proxy_refusal(["go: updates to go.mod needed", "exit status 1"]) is None
