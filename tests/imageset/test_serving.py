"""KServe's serving images built here (sklearnserver, storage initializer) and the model store.

The real path, in Docker without kind: the model store (the sklearnserver image running
``http.server``) serves the iris model, the storage initializer image downloads it into a
volume as user 1000, and the sklearnserver image serves it: v1 predictions ``[1, 1]``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from e2e import binaries, model_store
from e2e.availability import unavailable
from e2e.checks.inference import IRIS_EXPECTED, IRIS_INPUT
from e2e.imageset import serving
from e2e.imageset.docker_image import is_current
from e2e.local import sklearnserver
from e2e.manifests import serving_images

# A poetry.lock release and a uv.lock one (v0.17 on: `kserve_storage`, another entrypoint).
RELEASES = ("v0.14.0", "v0.20.0")


def pair_of(release: str) -> serving.ServingImages:
    return serving.ServingImages(release, f"kserve/sklearnserver:{release}", f"kserve/storage-initializer:{release}")


def test_the_pair_is_found_among_the_images_a_release_names() -> None:
    images = ["kserve/sklearnserver:v0.14.0", "docker.io/kserve/storage-initializer:v0.14.0", "other:1"]
    pair = serving.serving_images_of("v0.14.0", images)
    assert pair == serving.ServingImages(
        "v0.14.0", "kserve/sklearnserver:v0.14.0", "docker.io/kserve/storage-initializer:v0.14.0"
    )
    assert serving.serving_images_of("v0.14.0", ["kserve/sklearnserver:v0.14.0"]) is None


def test_the_storage_initializer_of_the_config_map_counts_for_releases_without_a_storage_container() -> None:
    config = {
        "kind": "ConfigMap",
        "metadata": {"name": "inferenceservice-config"},
        "data": {"storageInitializer": json.dumps({"image": "kserve/storage-initializer:v0.11.2"})},
    }
    runtime = {
        "kind": "ClusterServingRuntime",
        "metadata": {"name": "kserve-sklearnserver"},
        "spec": {"containers": [{"image": "kserve/sklearnserver:v0.11.2"}]},
    }
    broken = {"kind": "ConfigMap", "metadata": {"name": "inferenceservice-config"}, "data": {"storageInitializer": "{"}}
    assert serving_images([runtime], [config]) == [
        "kserve/storage-initializer:v0.11.2",
        "kserve/sklearnserver:v0.11.2",
    ]
    assert serving_images([runtime], [broken]) == ["kserve/sklearnserver:v0.11.2"]


def test_the_model_store_serves_the_model_directory_and_the_samples_point_at_it() -> None:
    path = "/root/.cache/kserve-compat/venvs/sklearnserver-v0.14.0/iris-model/model.joblib"
    documents = model_store.model_store_documents("kserve/sklearnserver:v0.14.0", path)
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["--directory", str(Path(path).parent)]
    assert container["readinessProbe"]["httpGet"]["path"] == "/model.joblib"
    uri = model_store.model_store_uri(path)
    assert uri == "http://kserve-compat-model-store.kserve-compat-samples.svc.cluster.local:8000/model.joblib"
    sample: dict[str, Any] = {
        "kind": "InferenceService",
        "spec": {"predictor": {"model": {"storageUri": "gs://kfserving-examples/models/sklearn/1.0/model"}}},
    }
    rewritten, replaced = model_store.rewrite_storage_uris([sample, {"kind": "Namespace"}], uri)
    assert rewritten[0]["spec"]["predictor"]["model"]["storageUri"] == uri
    assert replaced == ["gs://kfserving-examples/models/sklearn/1.0/model"]
    assert sample["spec"]["predictor"]["model"]["storageUri"].startswith("gs://")  # the input is left alone


@pytest.fixture(scope="module", params=RELEASES)
def built_pair(request: pytest.FixtureRequest) -> serving.ServingImages:
    pair = pair_of(request.param)
    if reason := binaries.docker_engine_unreachable_reason():
        unavailable(reason)
    if shutil.which("debootstrap") is None and serving.status(pair)[0] != "built":
        unavailable("debootstrap: not found on PATH (apt-get install debootstrap); the Python base is made with it")
    try:
        return serving.build(pair)
    except binaries.BuildUnavailable as exc:
        unavailable(str(exc))
        raise


class _Containers:
    """Containers started by a test, removed at its end whatever happens."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def run(self, *args: str, detach: bool = True) -> subprocess.CompletedProcess[str]:
        name = f"kserve-compat-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        mode = ["-d"] if detach else []
        return subprocess.run(
            ["docker", "run", *mode, "--name", name, *args], capture_output=True, text=True, check=False, timeout=300
        )

    def address(self, index: int) -> str:
        found = subprocess.run(
            ["docker", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", self.names[index]],
            capture_output=True,
            text=True,
            check=True,
        )
        return found.stdout.strip()

    def logs(self, index: int) -> str:
        return subprocess.run(["docker", "logs", self.names[index]], capture_output=True, text=True).stderr[-2000:]

    def remove(self) -> None:
        for name in self.names:
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False, timeout=120)


@pytest.fixture
def containers() -> Iterator[_Containers]:
    started = _Containers()
    try:
        yield started
    finally:
        started.remove()


def _wait_for(url: str, what: str) -> None:
    for attempt in Retrying(
        stop=stop_after_delay(180),
        wait=wait_exponential(multiplier=0.2, max=3),
        retry=retry_if_exception_type(requests.RequestException),
        reraise=True,
    ):
        with attempt:
            requests.get(url, timeout=5).raise_for_status()


def test_the_storage_initializer_fetches_from_the_model_store_and_sklearnserver_serves_it(
    built_pair: serving.ServingImages, containers: _Containers, tmp_path: Path
) -> None:
    assert serving.status(built_pair) == ("built", "")
    model = serving.iris_model_path(built_pair.sklearnserver)
    assert model is not None
    for image in built_pair.references:
        user = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Config.User}}", image], capture_output=True
        )
        assert user.stdout.decode().strip() == serving.SERVING_USER  # KServe's runtime asks runAsNonRoot

    store = model_store.model_store_documents(built_pair.sklearnserver, model)[1]
    command = store["spec"]["template"]["spec"]["containers"][0]["command"]
    started = containers.run("--entrypoint", command[0], built_pair.sklearnserver, *command[1:])
    assert started.returncode == 0, started.stderr
    store_url = f"http://{containers.address(0)}:{model_store.PORT}/{Path(model).name}"
    _wait_for(store_url, "the model store")

    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o777)  # written by the image's user 1000, as the pod's emptyDir would be
    fetched = containers.run("-v", f"{models}:/mnt/models", built_pair.storage_initializer, store_url, "/mnt/models",
                             detach=False)  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert (models / "model.joblib").read_bytes() == Path(model).read_bytes()

    server = containers.run("-v", f"{models}:/mnt/models:ro", built_pair.sklearnserver,
                            "--model_name=sklearn-iris", "--model_dir=/mnt/models", "--http_port=8080")  # fmt: skip
    assert server.returncode == 0, server.stderr
    base = f"http://{containers.address(2)}:8080"
    try:
        _wait_for(f"{base}/v1/models/sklearn-iris", "sklearnserver")
    except requests.RequestException:
        pytest.fail(f"sklearnserver never answered; its last log lines: {containers.logs(2)}")
    answer = requests.post(f"{base}/v1/models/sklearn-iris:predict", json={"instances": IRIS_INPUT}, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["predictions"] == IRIS_EXPECTED


def test_each_image_is_current_only_under_its_own_recipe(built_pair: serving.ServingImages) -> None:
    env = sklearnserver.built_env(built_pair.release)
    assert env is not None
    entrypoint = Path(serving.__file__)  # any other file: another recipe
    server, _ = serving.recipes(built_pair, env, entrypoint)
    other_server, other_storage = serving.recipes(
        serving.ServingImages(built_pair.release, built_pair.sklearnserver, "kserve/storage-initializer:v0.0.0-test"),
        env,
        entrypoint,
    )
    assert server.digest() == other_server.digest()  # the server's recipe does not hang on the script
    assert other_storage.name == "kserve/storage-initializer:v0.0.0-test"
    assert not is_current(other_storage)
