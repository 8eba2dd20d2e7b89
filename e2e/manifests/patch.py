"""Patching: the strategic merge patch that puts a matrix cell's proxy image (and variant)
into the controller Deployment, its in-memory application, and a reviewable diff."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import yaml

from e2e.errors import (
    ManifestError,
)
from e2e.manifests.release import ReleaseManifest, qualified_name
from e2e.matrix import MatrixCell

# -- patching -------------------------------------------------------------------------


def cell_proxy_args(cell: MatrixCell, manifest: ReleaseManifest) -> list[str]:
    """The shipped proxy args with the cell's variant applied (drop, then append)."""
    args = manifest.proxy_args
    variant = cell.variant
    if variant is None:
        return args
    missing = [arg for arg in variant.args_drop if arg not in args]
    if missing:
        raise ManifestError(
            f"variant {variant.name}: drops {' '.join(missing)} but the proxy args in "
            f"{manifest.source} are {' '.join(args) or '(none)'}"
        )
    kept = [arg for arg in args if arg not in variant.args_drop]
    return kept + [arg for arg in variant.args_add if arg not in kept]


def cell_proxy_security_context(cell: MatrixCell, manifest: ReleaseManifest) -> dict[str, Any] | None:
    """The variant's securityContext if it sets one, else the shipped one (maybe None)."""
    if cell.variant is not None and cell.variant.security_context is not None:
        return copy.deepcopy(cell.variant.security_context)
    return manifest.proxy_security_context


def proxy_patch(
    cell: MatrixCell,
    manifest: ReleaseManifest,
    rewrite: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """A strategic merge patch for the controller Deployment that makes its proxy the cell's.

    The patch is absolute: it states the proxy container's image, args and securityContext
    in full (shipped values where the cell's variant changes nothing), so applying cell B
    after cell A on a shared cluster leaves nothing of A behind. ``rewrite`` maps the
    image reference first (registry mirrors). Apply with
    ``AppsV1Api.patch_namespaced_deployment(name, namespace, body)``: the client sends a
    dict body as ``application/strategic-merge-patch+json``.
    """
    image = rewrite(cell.proxy.image) if rewrite else cell.proxy.image
    security_context = cell_proxy_security_context(cell, manifest)
    container: dict[str, Any] = {
        "name": manifest.profile.proxy_container,
        "image": image,
        "args": cell_proxy_args(cell, manifest),
        # "$patch: replace" makes the map exactly this (no fields left from an earlier
        # variant); null deletes it (a release that ships none).
        "securityContext": ({"$patch": "replace", **security_context} if security_context else None),
    }
    return {"spec": {"template": {"spec": {"containers": [container]}}}}


def patched_manifest(
    cell: MatrixCell,
    manifest: ReleaseManifest,
    rewrite: Callable[[str], str] | None = None,
) -> ReleaseManifest:
    """``manifest`` with ``proxy_patch`` applied to its controller Deployment, in memory."""
    original = manifest.deployment()
    patched = apply_strategic_merge(original, proxy_patch(cell, manifest, rewrite))
    documents = tuple(patched if d is original else d for d in manifest.documents)
    return replace(manifest, documents=documents)


def deployment_diff(
    cell: MatrixCell,
    manifest: ReleaseManifest,
    rewrite: Callable[[str], str] | None = None,
) -> str:
    """A unified diff of the controller Deployment, as shipped vs as the cell runs it.

    Empty when the cell runs the release as shipped.
    """
    before = manifest.deployment()
    after = patched_manifest(cell, manifest, rewrite).deployment()
    name = f"Deployment {qualified_name(before)}"
    return "".join(
        difflib.unified_diff(
            _yaml_lines(before),
            _yaml_lines(after),
            fromfile=f"{manifest.source}: {name} (shipped)",
            tofile=f"{manifest.source}: {name} ({cell.id})",
        )
    )


def _yaml_lines(document: Mapping[str, Any]) -> list[str]:
    # Sorted keys: a map written in another order (a variant's securityContext) is no change.
    text = yaml.safe_dump(dict(document), sort_keys=True, default_flow_style=False)
    return text.splitlines(keepends=True)


# List fields merged element-by-element on a key, as the Kubernetes API declares them
# (patchStrategy "merge"); only those a proxy patch can reach. Other lists are replaced.
_MERGE_KEYS = {"containers": "name", "initContainers": "name"}
_DIRECTIVE = "$patch"


def apply_strategic_merge(original: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the subset of strategic merge patch that ``proxy_patch`` uses, without mutating.

    Maps merge key by key; ``null`` deletes a key; ``$patch: replace`` in a map replaces it
    whole; ``containers`` merge by ``name``; any other list is replaced. Mirrors
    ``k8s.io/apimachinery/pkg/util/strategicpatch`` for those cases.
    """
    if patch.get(_DIRECTIVE) == "replace":
        replaced: dict[str, Any] = _without_directives(patch)
        return replaced
    merged = copy.deepcopy(dict(original))
    for key, value in patch.items():
        if key == _DIRECTIVE:
            continue
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = apply_strategic_merge(merged[key], value)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = _merge_list(merged[key], value, _MERGE_KEYS[key])
        else:
            merged[key] = _without_directives(value)
    return merged


def _merge_list(original: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = list(original)
    for item in patch:
        positions = [
            i for i, old in enumerate(merged) if isinstance(old, Mapping) and old.get(merge_key) == item.get(merge_key)
        ]
        if positions:
            merged[positions[0]] = apply_strategic_merge(merged[positions[0]], item)
        else:
            merged.append(_without_directives(item))
    return merged


def _without_directives(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_directives(v) for k, v in value.items() if k != _DIRECTIVE and v is not None}
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    return value
