"""The harness's data files, shipped inside the package so an installed tool finds them.

``matrix.yaml`` (releases, proxy images, Kubernetes versions; README "The matrix file"),
``release-manifests.lock.json`` (the pinned sha256 of each release file) and
``kubernetes-support.json`` (each release's client-go, read from its go.mod: e2e/support.py),
``proxy-flags.json`` (each kube-rbac-proxy version's flag contract, derived from its binary: e2e/proxy_flags.py),
``manifests/`` (the sample InferenceServices, the metrics reader's RBAC, Prometheus).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
MATRIX_FILE = DATA_DIR / "matrix.yaml"
LOCK_FILE = DATA_DIR / "release-manifests.lock.json"
SUPPORT_FILE = DATA_DIR / "kubernetes-support.json"
PROXY_FLAGS_FILE = DATA_DIR / "proxy-flags.json"
MANIFESTS_DIR = DATA_DIR / "manifests"
