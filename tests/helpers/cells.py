"""A cell result as a run starts one: release, proxy alias (resolved through the matrix file)
and Kubernetes minor; any other field as a keyword."""

from __future__ import annotations

from typing import Any

from e2e.matrix import load_matrix
from e2e.results import CellResult


def new_cell(kserve: str = "v0.14.0", proxy: str = "quay-v0.18.0", k8s: str = "1.34", **fields: Any) -> CellResult:
    values: dict[str, Any] = {
        "cell_id": f"kserve-{kserve}--{proxy}--k8s-{k8s}",
        "provider": "local",
        "kserve_version": kserve,
        "proxy_alias": proxy,
        "proxy_image": load_matrix().proxy(proxy).image,
        "kubernetes_version": k8s,
    }
    values.update(fields)
    return CellResult(**values)
