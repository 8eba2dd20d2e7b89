"""The image of ``kserve-compat watch-images``, built offline from this checkout: what its recipe
sees of the wheel, and the real image (Docker; a minute when the checkout changed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers.paths import REPO

from e2e import __version__, binaries
from e2e.imageset import watch_images
from e2e.imageset.components import BUILT


def wheel(path: Path, files: dict[str, bytes], date: tuple[int, int, int, int, int, int]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=date), data)
    return path


def test_the_recipe_sees_the_wheels_files_not_its_timestamps(tmp_path: Path) -> None:
    files = {"e2e/__init__.py": b"__version__ = '0.1.0'\n", "kserve_compat-0.1.0.dist-info/METADATA": b"Name: x\n"}
    first = wheel(tmp_path / "a.whl", files, (2026, 1, 1, 0, 0, 0))
    again = wheel(tmp_path / "b.whl", dict(reversed(files.items())), (2026, 12, 7, 12, 0, 0))
    changed = wheel(tmp_path / "c.whl", {**files, "e2e/__init__.py": b"__version__ = '0.1.1'\n"}, (2026, 1, 1, 0, 0, 0))
    assert watch_images.wheel_files_sha256(first) == watch_images.wheel_files_sha256(again)
    assert watch_images.wheel_files_sha256(first) != watch_images.wheel_files_sha256(changed)
    assert watch_images.recipe(first).digest() == watch_images.recipe(again).digest()
    assert watch_images.recipe(first).name == f"kserve-compat/watch-images:{__version__}"


def test_the_images_command_takes_it_alone() -> None:
    done = subprocess.run([sys.executable, "-m", "e2e.cli", "images", "list", "--watch-images", "--kserve", "v0.14.0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.strip() == (
        "kserve-compat images: images list --watch-images --kserve: the watch-images image has no selection"
    )


@pytest.mark.slow
@pytest.mark.needs_docker
def test_the_image_runs_kserve_compat_as_nonroot_and_is_not_built_again() -> None:
    from e2e.availability import unavailable

    if reason := binaries.docker_engine_unreachable_reason():
        unavailable(reason)
    try:
        reference = watch_images.build_watch_images_image()
    except binaries.BuildUnavailable as exc:  # pip could not get a wheel here
        unavailable(str(exc))
    assert reference == watch_images.image_reference()
    config = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}} {{.Config.User}} {{json .Config.Entrypoint}}", reference],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert config[1:] == ["65532:65532", '["kserve-compat"]']
    # As the manifest runs it: its own user, a read-only root filesystem, no network.
    run = ["docker", "run", "--rm", "--read-only", "--network", "none", reference]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=False, timeout=120)
    assert (version.returncode, version.stdout.strip()) == (0, f"kserve-compat {__version__}"), version.stderr
    manifest = subprocess.run([*run, "watch-images", "--print-manifest"], capture_output=True, text=True,
                              check=False, timeout=120)  # fmt: skip
    assert manifest.returncode == 0, manifest.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest.stdout) if d}
    assert {"Deployment", "PrometheusRule"} <= kinds
    # Current: listed as built, and a second build keeps the very image.
    assert watch_images.planned().status == BUILT
    assert watch_images.build_watch_images_image() == reference
    again = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", reference], capture_output=True,
                           text=True, check=True).stdout.strip()  # fmt: skip
    assert again == config[0]


def test_the_wheel_sources_hold_every_folder_pyproject_builds_from() -> None:
    """The watch-images image is built from a wheel of these paths alone: a package pyproject
    maps from elsewhere (scenarios/ is e2e.scenarios) must be among them."""
    import tomllib

    from e2e.imageset.watch_images import WHEEL_SOURCES

    repo = REPO
    config = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {source.split("/")[0] for source in config.get("package-dir", {}).values()}
    assert mapped <= set(WHEEL_SOURCES), mapped - set(WHEEL_SOURCES)
