"""A release's own sklearnserver (``e2e/local/sklearnserver.py``) and how a predictor pod's
container is played with it (``e2e/local/predictor.py``).

The pieces first (the lock's pins, the declared dependencies, the args), then the real
thing: the venv of KServe v0.20.0 built from its Go module's ``python/`` tree, serving the
iris model trained at build time, asked by the harness's own inference checks.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cells import new_cell

from e2e import binaries, checks
from e2e.availability import in_ci, unavailable
from e2e.checks.inference import IRIS_EXPECTED, IRIS_INPUT, infer_v2, predict_v1
from e2e.local import sklearnserver
from e2e.local.predictor import StorageInitializer, deviation, place_model
from e2e.results import CheckStatus

RELEASE = "v0.20.0"

POETRY_LOCK = textwrap.dedent(
    """
    [[package]]
    name = "urllib3"
    version = "1.26.19"
    python-versions = ">=2.7, !=3.0.*, !=3.1.*, !=3.2.*, !=3.3.*, !=3.4.*, !=3.5.*"

    [[package]]
    name = "urllib3"
    version = "2.2.2"
    python-versions = ">=3.8"

    [[package]]
    name = "backports.zoneinfo"
    version = "0.2.1"
    python-versions = "<3.9"

    [[package]]
    name = "Scikit_Learn"
    version = "1.5.1"
    python-versions = ">=3.9"

    [[package]]
    name = "kserve"
    version = "0.14.0"
    python-versions = ">=3.9,<3.13"

    [package.source]
    type = "directory"
    url = "../kserve"
    """
)

UV_LOCK = textwrap.dedent(
    """
    version = 1
    requires-python = ">=3.10, <3.13"

    [[package]]
    name = "numpy"
    version = "2.2.6"
    source = { registry = "https://pypi.org/simple" }
    resolution-markers = ["python_full_version < '3.11'"]

    [[package]]
    name = "numpy"
    version = "2.3.1"
    source = { registry = "https://pypi.org/simple" }
    resolution-markers = ["python_full_version >= '3.11'"]

    [[package]]
    name = "kserve"
    version = "0.20.0"
    source = { editable = "../kserve" }

    [[package]]
    name = "sklearnserver"
    version = "0.20.0"
    source = { virtual = "." }
    """
)


# -- the pieces ------------------------------------------------------------------------------


def test_a_poetry_lock_pins_the_version_for_this_python_and_leaves_out_path_packages() -> None:
    pins = sklearnserver.locked_versions(POETRY_LOCK, "3.11.7")
    assert pins == {"urllib3": "2.2.2", "scikit-learn": "1.5.1"}


def test_a_uv_lock_pins_by_its_resolution_markers() -> None:
    assert sklearnserver.locked_versions(UV_LOCK, "3.11.7") == {"numpy": "2.3.1"}
    assert sklearnserver.locked_versions(UV_LOCK, "3.10.14") == {"numpy": "2.2.6"}


def test_poetry_path_dependencies_keep_their_extras(tmp_path: Path) -> None:
    server = tmp_path / "python" / "sklearnserver"
    server.mkdir(parents=True)
    (server / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [tool.poetry.dependencies]
            python = ">=3.9,<3.13"
            kserve = { path = "../kserve", extras = ["storage"], develop = true }
            scikit-learn = "~1.5.1"
            joblib = "^1.4.0"
            """
        )
    )
    found = sklearnserver.server_dependencies(server)
    assert found.local == (f"{tmp_path}/python/kserve[storage]",)
    assert found.names == ("scikit-learn", "joblib")


def test_pep621_file_urls_resolve_against_the_tree(tmp_path: Path) -> None:
    server = tmp_path / "python" / "sklearnserver"
    server.mkdir(parents=True)
    (server / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [project]
            dependencies = [
                "kserve @ file:///${PROJECT_ROOT}/../kserve",
                "kserve-storage @ file:///${PROJECT_ROOT}/../storage",
                "scikit-learn~=1.5.1",
            ]
            """
        )
    )
    found = sklearnserver.server_dependencies(server)
    assert found.local == (f"{tmp_path}/python/kserve", f"{tmp_path}/python/storage")
    assert found.names == ("scikit-learn",)


def test_the_args_kserve_generated_get_free_ports_and_the_placed_model() -> None:
    args, notes = sklearnserver.remap_server_args(
        ["--model_name=sklearn-iris", "--model_dir=/mnt/models", "--http_port=8080"],
        http_port=41001,
        grpc_port=41002,
        model_dir=Path("/tmp/pod/mnt-models"),
    )
    assert args == [
        "--model_name=sklearn-iris",
        "--model_dir=/tmp/pod/mnt-models",
        "--http_port=41001",
        "--grpc_port=41002",
    ]
    assert notes == [
        "--model_dir: /mnt/models -> the placed model",
        "--http_port: 8080 -> a free port",
        "--grpc_port: (its default) -> a free port",
    ]


def test_args_without_a_model_dir_are_refused() -> None:
    with pytest.raises(sklearnserver.SklearnServerUnavailable, match="no --model_dir"):
        sklearnserver.remap_server_args(["--model_name=x"], http_port=1, grpc_port=2, model_dir=Path("/m"))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("kserve/sklearnserver:v0.14.0", True),
        ("docker.io/kserve/sklearnserver:v0.20.0", True),
        ("kserve/storage-initializer:v0.20.0", False),
        ("kserve/kserve-controller:v0.20.0", False),
        ("not a reference", False),
    ],
)
def test_sklearnserver_images_are_recognised_by_repository(image: str, expected: bool) -> None:
    assert sklearnserver.is_sklearnserver_image(image) is expected


def test_an_image_without_a_release_tag_names_what_it_lacks() -> None:
    assert sklearnserver.release_of("kserve/sklearnserver:v0.14.1") == "v0.14.1"
    with pytest.raises(sklearnserver.SklearnServerUnavailable, match="no release tag"):
        sklearnserver.release_of("kserve/sklearnserver:latest")


def test_the_model_is_placed_only_where_a_storage_initializer_would_fetch_it(tmp_path: Path) -> None:
    model = tmp_path / "venv" / "model.joblib"
    model.parent.mkdir()
    model.write_bytes(b"model")
    env = sklearnserver.SklearnServerEnv("v0.20.0", tmp_path / "python", model)
    initializer = StorageInitializer("gs://kfserving-examples/models/sklearn/1.0/model", "/mnt/models")
    placed = place_model(env, initializer, tmp_path / "a")
    assert (placed / "model.joblib").read_bytes() == b"model"
    assert not any(place_model(env, None, tmp_path / "b").iterdir())
    line = deviation("ns/p container kserve-container", env, initializer)
    assert "in place of gs://kfserving-examples/models/sklearn/1.0/model (not fetched)" in line
    assert line.startswith("ns/p container kserve-container played by sklearnserver v0.20.0 (python/ of ")


# -- the real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_env() -> sklearnserver.SklearnServerEnv:
    """KServe v0.20.0's sklearnserver venv: built in CI (minutes, from PyPI), else skipped
    when it cannot be built here."""
    try:
        return sklearnserver.ensure_env(RELEASE)
    except sklearnserver.SklearnServerUnavailable as exc:
        if in_ci():
            raise
        unavailable(str(exc))


@pytest.fixture(scope="module")
def served(release_env: sklearnserver.SklearnServerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("sklearnserver")
    initializer = StorageInitializer("gs://kfserving-examples/models/sklearn/1.0/model", "/mnt/models")
    http = sklearnserver.free_port()
    args, notes = sklearnserver.remap_server_args(
        ["--model_name=sklearn-iris", "--model_dir=/mnt/models", f"--http_port={8080}"],
        http_port=http,
        grpc_port=sklearnserver.free_port(),
        model_dir=place_model(release_env, initializer, workdir),
    )
    server = sklearnserver.SklearnServerProcess(
        release_env, args, environ={}, http_port=http, workdir=workdir, name="sklearnserver-test", remap_notes=notes
    )
    with server:
        server.wait_ready()
        yield f"http://{server.address}"
    assert not server.alive


@pytest.mark.slow
def test_the_venv_records_what_it_was_built_from(release_env: sklearnserver.SklearnServerEnv) -> None:
    recipe = json.loads((release_env.python.parents[1] / "kserve-compat-ready.json").read_text())
    assert recipe["release"] == RELEASE and recipe["lock"] == "uv.lock" and len(recipe["lock_sha256"]) == 64
    assert release_env.model.is_file()


@pytest.mark.slow
def test_the_releases_server_answers_kserves_e2e_request_over_v1_and_v2(served: str) -> None:
    assert predict_v1(served, "sklearn-iris", IRIS_INPUT) == IRIS_EXPECTED
    assert infer_v2(served, "sklearn-iris", IRIS_INPUT) == IRIS_EXPECTED
    cell = new_cell(RELEASE, "quay-v0.22.1")
    result = checks.check_inference(cell, served, "sklearn-iris", "v2")
    assert result.status is CheckStatus.PASS, result.detail


@pytest.mark.slow
def test_without_a_placed_model_the_server_starts_empty_and_inference_fails(
    release_env: sklearnserver.SklearnServerEnv, tmp_path: Path
) -> None:
    """KServe's own behaviour: no model file -> it logs so and serves no model (multi-model
    serving), so the inference check fails with the server's answer."""
    http = sklearnserver.free_port()
    args, _ = sklearnserver.remap_server_args(
        ["--model_name=sklearn-iris", "--model_dir=/mnt/models", "--http_port=8080"],
        http_port=http,
        grpc_port=sklearnserver.free_port(),
        model_dir=place_model(release_env, None, tmp_path),  # no storage initializer: nothing placed
    )
    server = sklearnserver.SklearnServerProcess(
        release_env, args, environ={}, http_port=http, workdir=tmp_path, name="empty"
    )
    with server:
        server.wait_ready()
        cell = new_cell(RELEASE, "quay-v0.22.1")
        result = checks.check_inference(cell, f"http://{server.address}", "sklearn-iris", "v1")
        assert "failed to locate model file for model sklearn-iris" in server.logs()
    assert result.status is CheckStatus.FAIL
    assert "404" in result.detail, result.detail


def test_a_release_whose_module_is_refused_is_unavailable_with_the_proxys_answer(tmp_path: Path) -> None:
    """KServe v0.18.0's module answers 403 here: its predictors cannot be played, and the
    reason (asked once per run) is what the report's skipped inference checks say."""
    if binaries.module_unavailable_reason(sklearnserver.KSERVE_MODULE, "v0.18.0") is None:
        pytest.skip("github.com/kserve/kserve@v0.18.0 is served here: no refusal to show")
    venv = tmp_path / "sklearnserver-v0.18.0"
    with pytest.raises(sklearnserver.SklearnServerUnavailable) as refused:
        sklearnserver.ensure_env("v0.18.0", venv_dir=venv)
    assert "sklearnserver v0.18.0: github.com/kserve/kserve@v0.18.0: the Go module proxy does not serve it" in str(
        refused.value
    )
    with pytest.raises(sklearnserver.SklearnServerUnavailable) as again:
        sklearnserver.ensure_env("v0.18.0", venv_dir=venv)
    assert str(again.value) == str(refused.value)
    assert not venv.exists()
