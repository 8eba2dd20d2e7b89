"""``kserve-compat binaries``: build or locate the local tier's binaries, and derive the
kube-rbac-proxy flag contracts from them (``--flag-contracts``). The command line only: the
build machinery is ``e2e.local.binaries``, the contracts ``e2e.proxy_flags``."""

from __future__ import annotations

import argparse
import logging
import os

from e2e import proxy_flags
from e2e.errors import UsageError
from e2e.local.binaries import (
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

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--kubernetes-version",
        default=KUBERNETES_VERSION,
        help=f"Kubernetes version of the control plane binaries and kubectl (default {KUBERNETES_VERSION})",
    )
    parser.add_argument("--jobs", type=int, default=2, help="builds at a time (default 2)")
    parser.add_argument("--list", action="store_true", help="show what exists, without building")
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


def run(args: argparse.Namespace) -> int:
    if args.from_image:
        os.environ[ENV_FROM_IMAGE] = "1"
    proxy_versions = [v.strip() for v in args.proxy_versions.split(",") if v.strip()] if args.proxy_versions else None
    if args.flag_contracts is not None:
        if args.list:
            raise UsageError("--flag-contracts and --list: expected one of them")
        extra = [proxy_version_for_tag(v) for v in proxy_versions or ()]
        derivation = proxy_flags.derive_all([*PROXY_VERSIONS, *extra], jobs=args.jobs)
        print(*derivation.lines, sep="\n")
        log.info("wrote %s", proxy_flags.write_contracts(derivation.contracts, args.flag_contracts or None))
        return 0
    recipes = requested_recipes(args.component, proxy_versions, args.kubernetes_version)
    if args.list:
        for rec in recipes:
            result = status(rec.component, rec.version)
            where = str(result.path) if result.path else "-"
            detail = f"  {result.detail}" if result.detail else ""
            print(f"{rec.component:<24} {rec.version:<9} {result.status:<12} {where}{detail}")
        return 0
    summary = ensure_all(args.component, proxy_versions, args.jobs, kubernetes_version=args.kubernetes_version)
    for result in summary.results:
        if result.status in ("present", "built"):
            print(f"{result.component:<24} {result.version:<9} {result.status:<12} {result.path}")
    for result in summary.with_status("unavailable"):
        print(f"warning: {result.component} {result.version} unavailable: {result.detail}")
    for result in summary.with_status("failed"):
        print(f"error: {result.component} {result.version}: {result.detail}")
    return 0 if summary.ok else 1
