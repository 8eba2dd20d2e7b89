"""``kserve-compat images list|build|push``: the kind tier's image set, without a registry.

``list`` prints every image the selection needs as built / missing / unavailable with the
reason; ``build`` builds what is missing (node images first, then the components) and exits
1 when an image that could be built was not; ``push --to REGISTRY`` copies what is built into
a registry (an air-gapped site's mirror), each image under its upstream path. The selection
defaults to the matrix's default selection (latest patch of each KServe line, every proxy
image, the default Kubernetes minors; `--k8s all` for every one). ``--watch-images`` acts on
the image of ``kserve-compat watch-images`` alone, built from this checkout
(``e2e/imageset/watch_images.py``): no cell runs it, so it is not in the matrix's set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from e2e.errors import UsageError
from e2e.imageset import components
from e2e.manifests import ReleaseFiles
from e2e.matrix import check_release_tag, load_matrix

ACTIONS = ("list", "build", "push")


def _values(values: list[str] | None) -> list[str]:
    """Repeated options, each of which may also be comma-separated."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=ACTIONS,
        help="list: what exists and why not; build: build what is missing; push: copy what is built into --to",
    )  # fmt: skip
    parser.add_argument(
        "--to", metavar="REGISTRY",
        help="push: the registry (host[:port][/path]) to seed, e.g. an air-gapped site's mirror; each image "
        "keeps its upstream path (quay.io/brancz/x -> REGISTRY/brancz/x)",
    )  # fmt: skip
    parser.add_argument(
        "--kserve",
        action="append",
        metavar="VERSION",
        help="KServe release whose controller image (and shipped proxy) to include (repeatable; "
        "default: the matrix's latest patches)",
    )
    parser.add_argument(
        "--proxy",
        action="append",
        metavar="ALIAS",
        help="proxy image alias of the matrix, e.g. quay-v0.18.0 (repeatable; default: every one)",
    )
    parser.add_argument(
        "--k8s",
        action="append",
        metavar="MINOR",
        help="Kubernetes minor of a node image, e.g. 1.35, or all (repeatable; default: the matrix's default minors)",
    )
    parser.add_argument(
        "--watch-images", action="store_true",
        help="the image of `kserve-compat watch-images` (built from this checkout) instead of the matrix's set",
    )  # fmt: skip
    parser.add_argument("--matrix", metavar="FILE", help="matrix file (default e2e/data/matrix.yaml)")
    parser.add_argument(
        "--output", choices=("text", "json"), default="text", help="list and build: text (default) or json"
    )
    parser.add_argument(
        "--manifest-dir",
        metavar="DIR",
        help="offline directory of release manifests (also KSERVE_COMPAT_MANIFEST_DIR); "
        "the controller's image reference is read from the release's kserve.yaml",
    )
    parser.add_argument(
        "--manifests-from-module",
        action="store_true",
        default=None,
        help="also read release manifests from the release's Go module (also KSERVE_COMPAT_MANIFESTS_FROM_MODULE=1)",
    )


def _print(images: list[components.PlannedImage], output: str = "text") -> None:
    if output == "json":
        rows = [
            {"image": image.reference, "component": image.component, "version": image.version,
             "status": image.status, "also_tagged": list(image.also_tagged), "detail": image.detail}
            for image in images
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return
    width = max((len(image.reference) for image in images), default=0)
    component_width = max((len(image.component) for image in images), default=0)
    for image in images:
        also = f" (also {', '.join(image.also_tagged)})" if image.also_tagged else ""
        detail = f"  {image.detail}" if image.detail else ""
        line = (
            f"{image.reference:<{width}}  {image.component:<{component_width}} {image.version:<11} "
            f"{image.status:<11}{also}{detail}"
        )
        print(line.rstrip())


# What the set holds that a registry does not: kind's node image and cert-manager's rendered manifest.
NOT_PUSHED = ("node", "cert-manager-manifest")


def _push(images: list[components.PlannedImage], registry: str) -> int:
    """Copy every built image of the set into ``registry``; exit 1 when one that could be built
    is not (an unavailable one, such as a retired registry's image, is listed, as in ``build``)."""
    from e2e.cluster.mirrors import push_from_engine, registry_name

    pushed = 0
    not_built: list[str] = []
    unavailable: list[str] = []
    for image in images:
        if image.component in NOT_PUSHED:
            continue  # kind's own image (kind runs it, no kubelet pulls it); the manifest is a file
        if image.status != components.BUILT:
            line = f"{image.reference} ({image.status}{': ' + image.detail if image.detail else ''})"
            (unavailable if image.status == components.UNAVAILABLE else not_built).append(line)
            continue
        for reference in (image.reference, *image.also_tagged):
            target = registry_name(reference, registry)
            push_from_engine(reference, target)
            print(f"{reference} -> {target}")
            pushed += 1
    for line in [*not_built, *unavailable]:
        print(f"not pushed: {line}")
    print(f"images: {pushed} pushed to {registry}, {len(not_built)} not built, {len(unavailable)} unavailable")
    return 1 if not_built else 0


def run(args: argparse.Namespace) -> int:
    if args.action == "push" and args.output == "json":
        raise UsageError("images push --output json: push prints what it copied as text only")
    if args.action == "push" and not args.to:
        raise UsageError("images push: expected --to REGISTRY (host[:port][/path]) to push the image set into")
    if args.action != "push" and args.to:
        raise UsageError(f"images {args.action} --to {args.to}: --to goes with push only")
    if args.watch_images:
        return _watch_images(args)
    kserve = _values(args.kserve)
    for version in kserve:
        check_release_tag(version)
    matrix = load_matrix(args.matrix)
    files = ReleaseFiles.from_environment(args.manifest_dir, from_module=args.manifests_from_module)
    selection = {"kserve_versions": kserve, "proxy_aliases": _values(args.proxy), "k8s_minors": _values(args.k8s)}
    if args.action == "list":
        _print(components.required_images(**selection, matrix=matrix, files=files), args.output)
        return 0
    if args.action == "push":
        return _push(components.required_images(**selection, matrix=matrix, files=files), args.to)
    started = time.monotonic()
    results = components.ensure_images(**selection, matrix=matrix, files=files)
    _print(results, args.output)
    failed = [image for image in results if image.status == components.FAILED]
    built = sum(1 for image in results if image.status == components.BUILT)
    unavailable = sum(1 for image in results if image.status == components.UNAVAILABLE)
    print(
        f"images: {built} built, {unavailable} unavailable, {len(failed)} failed in {time.monotonic() - started:.1f}s",
        file=sys.stderr if args.output == "json" else sys.stdout,  # stdout stays one JSON document
    )
    return 1 if failed else 0


def _watch_images(args: argparse.Namespace) -> int:
    """``images ACTION --watch-images``: the one image, listed, built or pushed like the set's."""
    from e2e.imageset import watch_images

    selection = [option for option, value in (("--kserve", args.kserve), ("--proxy", args.proxy), ("--k8s", args.k8s),
                 ("--matrix", args.matrix), ("--manifest-dir", args.manifest_dir)) if value]  # fmt: skip
    if selection:
        raise UsageError(f"images {args.action} --watch-images {selection[0]}: the watch-images image has no selection")
    if args.action == "push":
        return _push([watch_images.planned()], args.to)
    image = watch_images.ensure() if args.action == "build" else watch_images.planned()
    _print([image], args.output)
    return 1 if image.status == components.FAILED else 0
