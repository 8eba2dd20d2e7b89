"""Which binary plays a proxy image in the local tier: --proxy-binary, the per-version
variable, the cache, or a clear reason why none can run. No control plane is started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e import binaries
from e2e.cluster.local import LocalProviderFactory, is_proxy_image, proxy_binary_for, proxy_version_of
from e2e.errors import WorkloadUnavailable
from e2e.matrix import Selection

PATCHED = "quay.io/me/kube-rbac-proxy:v0.18.0-fix1"


@pytest.fixture(autouse=True)
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No overrides from the developer's shell, and a cache with nothing in it."""
    for name in list(os.environ):
        if name.startswith("KSERVE_COMPAT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KSERVE_COMPAT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho patched\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("quay.io/brancz/kube-rbac-proxy:v0.18.0", "v0.18.0"),
        ("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1", "v0.13.1"),
        ("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1-amd64", "v0.13.1"),
        (PATCHED, "v0.18.0-fix1"),
        ("quay.io/me/kube-rbac-proxy:latest", None),
        ("quay.io/me/krp-patched:v0.18.0", None),
    ],
)
def test_the_version_an_image_runs(image: str, version: str | None) -> None:
    assert proxy_version_of(image) == version


def test_proxy_binary_plays_the_adhoc_image(tmp_path: Path) -> None:
    binary = executable(tmp_path / "built" / "kube-rbac-proxy")
    selection = Selection.from_options(proxy_images=[PATCHED], proxy_binary=str(binary))
    what, path = proxy_binary_for(PATCHED, selection.proxy_binaries())
    assert path == binary and what == f"kube-rbac-proxy from --proxy-binary {binary}"
    # an image whose repository is not called kube-rbac-proxy is played too, when given
    other = "ghcr.io/me/krp-patched:v1"
    assert proxy_binary_for(other, {other: binary})[1] == binary
    assert not is_proxy_image(other)
    factory = LocalProviderFactory(proxy_binaries=selection.proxy_binaries())
    assert factory.proxy_binaries == {PATCHED: binary}


def test_the_per_version_variable_plays_a_patched_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = executable(tmp_path / "kube-rbac-proxy-fix1")
    monkeypatch.setenv("KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_18_0_FIX1", str(binary))
    assert proxy_binary_for(PATCHED) == ("kube-rbac-proxy v0.18.0-fix1", binary)


def test_a_patched_build_without_a_binary_says_how_to_give_one() -> None:
    with pytest.raises(WorkloadUnavailable) as caught:
        proxy_binary_for(PATCHED)
    message = str(caught.value)
    assert message == (
        f"{PATCHED}: no local binary of this patched build; give it with --proxy-binary PATH or "
        "KSERVE_COMPAT_KUBE_RBAC_PROXY_V0_18_0_FIX1"
    )


def test_an_image_without_a_version_tag_asks_for_its_binary() -> None:
    with pytest.raises(WorkloadUnavailable, match=r"latest: its tag names no kube-rbac-proxy version; .*binary"):
        proxy_binary_for("quay.io/me/kube-rbac-proxy:latest")


def test_a_refused_release_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "github.com/brancz/kube-rbac-proxy@v0.13.1: 403 Forbidden; quay.io/...:v0.13.1: no Docker engine"
    monkeypatch.setattr(binaries, "buildable", lambda component, version: (False, reason))
    with pytest.raises(WorkloadUnavailable) as caught:
        proxy_binary_for("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1")
    assert str(caught.value) == (
        f"registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1: no local kube-rbac-proxy v0.13.1 binary ({reason})"
    )


def test_a_build_that_turns_out_unavailable_is_unavailable_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """buildable() can say yes (an engine answers) while the pull then fails."""
    monkeypatch.setattr(binaries, "buildable", lambda component, version: (True, ""))

    def refuse(version: str) -> Path:
        raise binaries.BuildUnavailable(f"kube-rbac-proxy {version}: 403; image: pull failed")

    monkeypatch.setattr(binaries, "ensure_proxy", refuse)
    with pytest.raises(WorkloadUnavailable, match=r"no local kube-rbac-proxy v0\.13\.1 binary \(.*pull failed\)"):
        proxy_binary_for("quay.io/brancz/kube-rbac-proxy:v0.13.1")
