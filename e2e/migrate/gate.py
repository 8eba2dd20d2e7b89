"""Whether to apply the change, and what: the preflight's blockers, a tool that owns the
Deployment, the target named by ``--to``, the Deployment as recorded before the change."""

from __future__ import annotations

import copy
from typing import Any

from e2e.errors import UsageError
from e2e.matrix import load_matrix
from e2e.preflight import Options as PreflightOptions
from e2e.preflight import PreflightReport
from e2e.preflight.model import EXIT_RANK
from e2e.preflight.swap import PROXY_FLAGS

# Preflight checks whose failure means this change would break the proxy; a retired image
# *in use* is not one of them: moving off it is the point of the migration.
BLOCKING_CHECKS = frozenset({"swap-dry-run", "proxy-rbac", PROXY_FLAGS})
# Marks of a tool that owns the Deployment and would undo (or fight) a patch made by hand.
MANAGERS: tuple[tuple[str, str, str | None, str], ...] = (
    ("label", "app.kubernetes.io/managed-by", "Helm", "Helm"),
    ("annotation", "meta.helm.sh/release-name", None, "Helm"),
    ("label", "app.kubernetes.io/managed-by", "kustomize", "kustomize"),
    ("annotation", "config.kubernetes.io/origin", None, "kustomize"),
    ("label", "kustomize.toolkit.fluxcd.io/name", None, "Flux (kustomize-controller)"),
    ("label", "helm.toolkit.fluxcd.io/name", None, "Flux (helm-controller)"),
    ("label", "argocd.argoproj.io/instance", None, "Argo CD"),
    ("annotation", "argocd.argoproj.io/tracking-id", None, "Argo CD"),
)


def blockers(pre: PreflightReport) -> list[str]:
    """Why the preflight says this change would fail: a blocking check, or a target image
    that is retired, cannot be pulled or could not be checked."""
    found = [f"{c.name}: {c.detail}" for c in pre.failed if c.name in BLOCKING_CHECKS]
    for image in pre.images.images:
        if image.image != pre.target:
            continue
        if image.retirement is not None:
            found.append(f"target {image.image}: on a retired registry ({image.retirement.describe()})")
        if image.invalid is not None:
            found.append(f"target {image.image}: {image.invalid}")
        elif image.availability is not None and (image.unavailable or image.unchecked):
            found.append(f"target {image.image}: {image.availability.describe()}")
    return found


def refusal_exit_code(pre: PreflightReport) -> int:
    codes = {c.exit_code for c in pre.failed if c.name in BLOCKING_CHECKS or c.name.startswith("image-availability")}
    codes |= {c.exit_code for c in pre.failed if c.name == "retired-registry" and pre.target and pre.target in c.detail}
    return next((code for code in EXIT_RANK if code in codes), 5)


def managed_by(deployment: dict[str, Any]) -> str:
    """Which tool owns the Deployment, with the mark that says so ("" when none does)."""
    meta = deployment.get("metadata") or {}
    found = []
    for where, key, value, tool in MANAGERS:
        marks = meta.get("labels" if where == "label" else "annotations") or {}
        if key in marks and (value is None or str(marks[key]).lower() == value.lower()):
            found.append(f"{tool} ({where} {key}={marks[key]})")
    return "; ".join(dict.fromkeys(found))


def recorded(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment as it is before the change, without what the server owns (status,
    managedFields): what a rollback restores and what ``before.json`` holds."""
    kept = copy.deepcopy(deployment)
    kept.pop("status", None)
    (kept.get("metadata") or {}).pop("managedFields", None)
    return kept


def resolve_target(to: str, matrix_file: str | None) -> tuple[str, str, PreflightOptions]:
    """(image, how it was given, the preflight option naming it) for ``--to``."""
    matrix = load_matrix(matrix_file)
    if any(proxy.alias == to for proxy in matrix.proxies):
        proxy = matrix.proxy(to, option="--to")
        return proxy.image, f"--to {to} (matrix alias)", PreflightOptions(target_proxy=to)
    if "/" not in to and ":" not in to:
        aliases = ", ".join(p.alias for p in matrix.proxies)
        raise UsageError(f"--to {to}: not a proxy alias of the matrix ({aliases}) nor an image reference")
    return to, "--to (image reference)", PreflightOptions(target_image=to)
