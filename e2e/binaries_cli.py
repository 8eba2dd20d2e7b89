"""``kserve-compat binaries``: build or locate the local tier's binaries, and derive the
kube-rbac-proxy flag contracts from them (``--flag-contracts``). The command line only: the
build machinery is ``e2e.binaries``, the contracts ``e2e.proxy_flags``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re

from e2e import proxy_flags
from e2e.binaries import (
    ALL_COMPONENTS,
    COMPONENTS,
    ENV_FROM_IMAGE,
    IMAGE_COMPONENTS,
    KUBERNETES_VERSION,
    ON_DEMAND_COMPONENTS,
    PROXY_VERSIONS,
    ensure_all,
    proxy_version_for_tag,
    requested_recipes,
    status,
)
from e2e.errors import UsageError
from e2e.matrix import packaged_matrix

log = logging.getLogger(__name__)


ACTIONS = ("build", "list")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", choices=ACTIONS, default=None,
        help="build (the default): build what is missing; list: what exists, without building",
    )  # fmt: skip
    parser.add_argument(
        "--component",
        action="append",
        choices=ALL_COMPONENTS,
        metavar="NAME",
        help=f"build only these (repeatable; default the local tier's: {', '.join(COMPONENTS)}; "
        f"also: {', '.join((*IMAGE_COMPONENTS, *ON_DEMAND_COMPONENTS))})",
    )
    parser.add_argument(
        "--proxy-versions",
        metavar="V1,V2",
        help=f"kube-rbac-proxy versions (default {','.join(PROXY_VERSIONS)})",
    )
    parser.add_argument(
        "--k8s", metavar="MINOR|VERSION",
        help="Kubernetes of the control plane binaries and kubectl: a minor of the matrix (its build, e.g. 1.35) "
        f"or an exact version (default {KUBERNETES_VERSION})",
    )  # fmt: skip
    # The names these had before the commands spoke with one voice: still accepted, not shown.
    parser.add_argument("--kubernetes-version", dest="k8s", help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=2, help="builds at a time (default 2)")
    parser.add_argument("--output", choices=("text", "json"), default="text", help="list: text (default) or json")
    parser.add_argument(
        "--from-image",
        action="store_true",
        help=f"take kube-rbac-proxy versions the Go module proxy refuses out of their published images "
        f"(docker create + cp; needs a Docker engine and the registry; also {ENV_FROM_IMAGE}=1)",
    )
    parser.add_argument(
        "--flag-contracts",
        nargs="?",
        const="",
        metavar="FILE",
        help="derive each kube-rbac-proxy version's flag contract from its binary (building missing ones) "
        "into FILE (default: the package's e2e/data/proxy-flags.json); one line per version",
    )


def kubernetes_version(value: str | None) -> str:
    """``--k8s``: a minor of the matrix names its build; an exact version (``v1.35.2``) is itself."""
    if not value:
        return KUBERNETES_VERSION
    if re.fullmatch(r"v?\d+\.\d+", value.strip()):
        matrix = packaged_matrix()
        known = [kube for kube in matrix.kubernetes if kube.version == value.strip().removeprefix("v")]
        if not known:
            minors = ", ".join(kube.version for kube in matrix.kubernetes)
            raise UsageError(f"--k8s {value}: not a minor of the matrix ({minors}); an exact version (v1.35.4) is")
        return known[0].build
    if re.fullmatch(r"v?\d+\.\d+\.\d+", value.strip()):
        return "v" + value.strip().removeprefix("v")
    raise UsageError(f"--k8s {value}: expected a Kubernetes minor (1.35) or version (v1.35.4)")


def run(args: argparse.Namespace) -> int:
    listing = args.action == "list" or args.list
    if args.action == "build" and args.list:
        raise UsageError("build and --list: expected one of them")
    version = kubernetes_version(args.k8s)
    if args.from_image:
        os.environ[ENV_FROM_IMAGE] = "1"
    proxy_versions = [v.strip() for v in args.proxy_versions.split(",") if v.strip()] if args.proxy_versions else None
    if args.flag_contracts is not None:
        if listing:
            raise UsageError(f"--flag-contracts and {'--list' if args.list else 'list'}: expected one of them")
        extra = [proxy_version_for_tag(v) for v in proxy_versions or ()]
        derivation = proxy_flags.derive_all([*PROXY_VERSIONS, *extra], jobs=args.jobs)
        print(*derivation.lines, sep="\n")
        log.info("wrote %s", proxy_flags.write_contracts(derivation.contracts, args.flag_contracts or None))
        return 0
    recipes = requested_recipes(args.component, proxy_versions, version)
    if listing:
        results = [status(rec.component, rec.version) for rec in recipes]
        if args.output == "json":
            rows = [
                {"component": rec.component, "version": rec.version, "status": result.status,
                 "path": str(result.path) if result.path else None, "detail": result.detail}
                for rec, result in zip(recipes, results, strict=True)
            ]  # fmt: skip
            print(json.dumps(rows, indent=2))
            return 0
        for rec, result in zip(recipes, results, strict=True):
            where = str(result.path) if result.path else "-"
            detail = f"  {result.detail}" if result.detail else ""
            print(f"{rec.component:<24} {rec.version:<9} {result.status:<12} {where}{detail}")
        return 0
    summary = ensure_all(args.component, proxy_versions, args.jobs, kubernetes_version=version)
    for result in summary.results:
        if result.status in ("present", "built"):
            print(f"{result.component:<24} {result.version:<9} {result.status:<12} {result.path}")
    for result in summary.with_status("unavailable"):
        print(f"warning: {result.component} {result.version} unavailable: {result.detail}")
    for result in summary.with_status("failed"):
        print(f"error: {result.component} {result.version}: {result.detail}")
    return 0 if summary.ok else 1
