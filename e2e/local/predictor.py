"""A predictor pod's model server, played by the release's own sklearnserver.

KServe's real controller turns each sample InferenceService into a predictor Deployment
whose ``kserve-container`` runs ``kserve/sklearnserver:vX`` with the args KServe generated
(``--model_name=... --model_dir=/mnt/models --http_port=8080``), and its pod webhook injects
a ``storage-initializer`` init container (``args: [storageUri, /mnt/models]``) into the
pods. kwok marks those pods Running; this module plays their model-server container: the
release's sklearnserver (``e2e/local/sklearnserver.py``) with KServe's args, ports moved
to free ports, and the model placed where the storage initializer would have put it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from e2e.labels import label_selector
from e2e.local import sklearnserver
from e2e.local.manager import container_env

STORAGE_INITIALIZER = "storage-initializer"


@dataclass(frozen=True)
class StorageInitializer:
    """What the pod's injected init container would have done: fetch ``uri`` into ``target``."""

    uri: str
    target: str


def storage_initializer_of(api: k8s_client.ApiClient, deployment: Any) -> StorageInitializer | None:
    """The storage initializer KServe's pod webhook injected into a pod of ``deployment``,
    or None when no pod of it has one (yet)."""
    pods = k8s_client.CoreV1Api(api).list_namespaced_pod(
        deployment.metadata.namespace, label_selector=label_selector(deployment.spec.selector)
    )
    for pod in pods.items:
        for init in pod.spec.init_containers or []:
            if init.name == STORAGE_INITIALIZER and len(init.args or []) >= 2:
                return StorageInitializer(uri=init.args[0], target=init.args[1])
    return None


def place_model(env: sklearnserver.SklearnServerEnv, initializer: StorageInitializer | None, pod_dir: Path) -> Path:
    """The directory that plays the pod's ``/mnt/models``: the iris model copied in when a
    storage initializer would have filled it, else empty (the server then fails as it would)."""
    models = pod_dir / "mnt-models"
    models.mkdir(parents=True, exist_ok=True)
    if initializer is not None:
        shutil.copyfile(env.model, models / sklearnserver.MODEL_FILE)
    return models


def deviation(where: str, env: sklearnserver.SklearnServerEnv, initializer: StorageInitializer | None) -> str:
    """The report line that says how this predictor differs from a real pod."""
    placed = (
        f"storage initializer not run: the iris model trained here with the release's scikit-learn placed at "
        f"{initializer.target} in place of {initializer.uri} (not fetched)"
        if initializer is not None
        else "no storage initializer in its pod: nothing placed at the model directory"
    )
    return f"{where} played by {env.describe()} as a process, ports moved to free ports; {placed}"


def start_model_server(
    api: k8s_client.ApiClient,
    deployment: Any,
    container: Any,
    args: tuple[str, ...],
    *,
    workdir: Path,
    http_port: int,
    grpc_port: int,
    name: str,
) -> tuple[sklearnserver.SklearnServerProcess, str, int]:
    """Start the played server; returns it, its deviation line and the pod port it plays
    (the ``--http_port`` KServe generated, which the predictor Service targets).

    Raises ``SklearnServerUnavailable`` when the release's server cannot be built here.
    """
    env = sklearnserver.ensure_env(sklearnserver.release_of(container.image))
    initializer = storage_initializer_of(api, deployment)
    model_dir = place_model(env, initializer, workdir)
    server_args, notes = sklearnserver.remap_server_args(
        args, http_port=http_port, grpc_port=grpc_port, model_dir=model_dir
    )
    pod_port = next((int(a.partition("=")[2]) for a in args if a.startswith("--http_port=")), 8080)
    environ, env_notes = container_env(
        container,
        namespace=deployment.metadata.namespace,
        pod_name=f"{deployment.metadata.name}-played",
        service_account=deployment.spec.template.spec.service_account_name or "default",
    )
    server = sklearnserver.SklearnServerProcess(
        env,
        server_args,
        environ=environ,
        http_port=http_port,
        workdir=workdir,
        name=name,
        remap_notes=notes + env_notes,
    ).start()
    where = f"{deployment.metadata.namespace}/{deployment.metadata.name} container {container.name}"
    return server, deviation(where, env, initializer), pod_port
