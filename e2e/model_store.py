"""The in-cluster model store of the kind tier: the iris model over HTTP, for the storage initializer.

The samples' ``storageUri`` (``gs://kfserving-examples/...``) cannot be fetched here (no
internet). On a cluster whose serving images are built here, a Deployment of the release's
own sklearnserver image serves the iris model that image holds (trained with its own
scikit-learn) with Python's ``http.server``; the samples' ``storageUri`` is rewritten to it
(a deviation of the report), and KServe's real storage initializer downloads it into the
predictor pod, as it would from any HTTP model URI.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Sequence
from typing import Any

from e2e.kserve import SAMPLES_NAMESPACE

MODEL_STORE = "kserve-compat-model-store"
PORT = 8000
APP_LABEL = {"app.kubernetes.io/name": MODEL_STORE}


def model_store_uri(model_path: str, namespace: str = SAMPLES_NAMESPACE) -> str:
    """The URL the storage initializer fetches the model from (the Service's cluster DNS name)."""
    return f"http://{MODEL_STORE}.{namespace}.svc.cluster.local:{PORT}/{posixpath.basename(model_path)}"


def model_store_documents(image: str, model_path: str, namespace: str = SAMPLES_NAMESPACE) -> list[dict[str, Any]]:
    """Namespace, Deployment and Service of the store serving ``model_path``'s directory of ``image``."""
    directory, name = posixpath.split(model_path)
    container = {
        "name": "http",
        "image": image,
        "command": ["python", "-m", "http.server", str(PORT), "--directory", directory],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": f"/{name}", "port": PORT}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": MODEL_STORE, "namespace": namespace, "labels": APP_LABEL},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": APP_LABEL},
                "template": {"metadata": {"labels": APP_LABEL}, "spec": {"containers": [container]}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": MODEL_STORE, "namespace": namespace, "labels": APP_LABEL},
            "spec": {"selector": APP_LABEL, "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]},
        },
    ]


def rewrite_storage_uris(documents: Sequence[dict[str, Any]], uri: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The documents with every InferenceService predictor's ``storageUri`` set to ``uri``;
    and the URIs replaced (for the deviation)."""
    rewritten: list[dict[str, Any]] = []
    replaced: dict[str, None] = {}
    for doc in documents:
        doc = copy.deepcopy(doc)
        if doc.get("kind") == "InferenceService":
            model = ((doc.get("spec") or {}).get("predictor") or {}).get("model") or {}
            if model.get("storageUri"):
                replaced[str(model["storageUri"])] = None
                model["storageUri"] = uri
        rewritten.append(doc)
    return rewritten, list(replaced)
