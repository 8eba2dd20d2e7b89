"""The local tier's model server: the real kserve ModelServer serving a trained iris model.

These tests check the harness's inference requests and response parsing against KServe's
real server code, in a subprocess from the model-server venv. They do not check KServe's
serving stack on Kubernetes (storage initializer, predictor pod, ingress): the kind tier does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from e2e.availability import unavailable
from e2e.errors import EnvironmentMissing
from e2e.local.model_server import (
    IrisModelServer,
    ModelServerFailed,
    default_venv_dir,
    ensure_model_server_env,
)

pytestmark = pytest.mark.slow

# KServe's own e2e request and answer for sklearn-iris (kserve/kserve test/e2e/predictor/test_sklearn.py).
IRIS_ROWS = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]
EXPECTED_CLASSES = [1, 1]
V1_MODEL = "sklearn-iris"
V2_MODEL = "sklearn-iris-v2"


@pytest.fixture(scope="module")
def model_server_python() -> Path:
    try:
        return ensure_model_server_env()
    except EnvironmentMissing as error:
        unavailable(str(error))


@pytest.fixture(scope="module")
def iris_server(model_server_python: Path) -> Iterator[IrisModelServer]:
    with IrisModelServer((V1_MODEL, V2_MODEL), python=model_server_python) as server:
        yield server


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _process_group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_v1_predict_answers_kserve_e2e_classes(iris_server: IrisModelServer) -> None:
    answer = requests.post(
        f"{iris_server.base_url}/v1/models/{V1_MODEL}:predict",
        json={"instances": IRIS_ROWS},  # json= sends Content-Type: application/json
        timeout=30,
    )

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": EXPECTED_CLASSES}


def test_v2_infer_answers_kserve_e2e_classes(iris_server: IrisModelServer) -> None:
    request = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": IRIS_ROWS,
            }
        ]
    }

    answer = requests.post(f"{iris_server.base_url}/v2/models/{V2_MODEL}/infer", json=request, timeout=30)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == V2_MODEL
    assert body["outputs"][0]["data"] == EXPECTED_CLASSES


def test_v1_predict_with_a_non_json_content_type_fails(iris_server: IrisModelServer) -> None:
    """Pins what the harness's client relies on: it must send application/json.

    Seen with kserve 0.21.0: a ``text/plain`` body is not parsed as JSON and the predict
    fails (500); a request with no Content-Type at all is parsed as JSON and succeeds.
    """
    answer = requests.post(
        f"{iris_server.base_url}/v1/models/{V1_MODEL}:predict",
        data=json.dumps({"instances": IRIS_ROWS}),
        headers={"Content-Type": "text/plain"},
        timeout=30,
    )

    assert answer.status_code != 200, answer.text


def test_each_model_name_answers_both_protocols(iris_server: IrisModelServer) -> None:
    for name in (V1_MODEL, V2_MODEL):
        v1 = requests.get(f"{iris_server.base_url}/v1/models/{name}", timeout=30)
        v2 = requests.get(f"{iris_server.base_url}/v2/models/{name}/ready", timeout=30)

        assert v1.status_code == 200 and v1.json()["ready"] is True, v1.text
        assert v2.status_code == 200 and v2.json()["ready"] is True, v2.text


def test_exit_stops_the_server_and_removes_its_files(model_server_python: Path) -> None:
    with IrisModelServer((V1_MODEL,), python=model_server_python) as server:
        pid = server.pid
        workdir = server.stderr_path.parent
        base_url = server.base_url
        assert pid is not None and _process_exists(pid)

    assert not _process_exists(pid)
    assert not _process_group_exists(pid)  # no forked worker left behind either
    assert not workdir.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base_url}/v2/health/live", timeout=5)


def test_interrupt_inside_the_block_still_stops_the_server(model_server_python: Path) -> None:
    pid: int | None = None
    with pytest.raises(KeyboardInterrupt), IrisModelServer((V1_MODEL,), python=model_server_python) as server:
        pid = server.pid
        # What Ctrl-C is to the harness: a KeyboardInterrupt in the main thread. The
        # server runs in its own session, so the terminal's SIGINT never reaches it and
        # stopping it is entirely up to IrisModelServer.
        raise KeyboardInterrupt

    assert pid is not None
    assert not _process_group_exists(pid)


def test_server_that_exits_early_fails_fast_with_its_exit_code_and_output(
    tmp_path: Path,
) -> None:
    # A stand-in "python" that dies at once, as the real one does on a broken venv or a
    # taken port; real enough for what is under test: how start() notices and reports it.
    dying_python = tmp_path / "python"
    dying_python.write_text("#!/bin/sh\necho 'cannot start: port taken' >&2\nexit 3\n")
    dying_python.chmod(0o755)
    server = IrisModelServer((V1_MODEL,), python=dying_python)

    with pytest.raises(ModelServerFailed, match=r"exited with code 3 .*cannot start: port taken"):
        server.start()

    assert server.pid is None  # stop() ran: nothing left to clean up


def test_ensure_model_server_env_is_idempotent(model_server_python: Path) -> None:
    marker = default_venv_dir() / "kserve-compat-ready.json"
    before = marker.stat().st_mtime_ns

    again = ensure_model_server_env()

    assert again == model_server_python
    assert marker.stat().st_mtime_ns == before


def test_a_venv_that_cannot_be_built_raises_environment_missing(tmp_path: Path) -> None:
    # A base python that fails the way a broken interpreter or `python -m venv` would.
    broken_python = tmp_path / "python3"
    broken_python.write_text("#!/bin/sh\necho 'Error: ensurepip is not available' >&2\nexit 1\n")
    broken_python.chmod(0o755)
    venv_dir = tmp_path / "venv"

    with pytest.raises(EnvironmentMissing, match=r"exit 1.*ensurepip is not available"):
        ensure_model_server_env(venv_dir, base_python=str(broken_python))

    assert not (venv_dir / "kserve-compat-ready.json").exists()
