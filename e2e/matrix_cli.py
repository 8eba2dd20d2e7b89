"""``kserve-compat matrix``: show the selected cells, or print a GitHub Actions matrix."""

from __future__ import annotations

import argparse
import json

from e2e import support
from e2e.data import SUPPORT_FILE
from e2e.matrix import ClusterGroup, Selection, github_actions_matrix_json, group_cells, load_matrix


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The cell-selection options, shared by every command that runs or plans cells."""
    parser.add_argument("--matrix", metavar="FILE", help="matrix file (default: e2e/data/matrix.yaml)")
    parser.add_argument(
        "--kserve", action="append", metavar="V[,V]",
        help="KServe release tags, e.g. v0.14.0,v0.15.0 (any release of a listed line; repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--proxy", action="append", metavar="ALIAS[,ALIAS]", help="proxy image aliases, e.g. quay-v0.18.0 (repeatable)"
    )
    parser.add_argument(
        "--proxy-image", action="append", default=[], metavar="REF", help="an ad-hoc proxy image, e.g. a patched build"
    )
    parser.add_argument(
        "--k8s", action="append", metavar="V[,V]",
        help="Kubernetes minors, e.g. 1.35, or all (repeatable; default: the matrix's default minors)",
    )  # fmt: skip
    parser.add_argument(
        "--cell", action="append", default=[], metavar="ID[,ID]",
        help="exact cell ids (repeatable; not with --kserve, --proxy or --k8s)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", metavar="NAME[,NAME]",
        help="extra variant cells, e.g. drop-logtostderr (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--all-releases", action="store_true", help="every release in the matrix file, not only latest patches"
    )


def selection_from(args: argparse.Namespace) -> Selection:
    return Selection.from_options(
        kserve=args.kserve,
        proxy=args.proxy,
        k8s=args.k8s,
        cells=args.cell,
        variants=args.variant,
        all_releases=args.all_releases,
        proxy_images=args.proxy_image,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser)
    parser.add_argument(
        "--github", action="store_true", help="print a GitHub Actions matrix (JSON include list, one entry per cluster)"
    )
    parser.add_argument("--output", choices=("text", "json"), default="text", help="text (default) or json")
    parser.add_argument(
        "--refresh-support", action="store_true",
        help="read the selected releases' go.mod through the Go module proxy and rewrite "
        "e2e/data/kubernetes-support.json (needs Go)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    cells = matrix.select(selection_from(args))
    if args.github:
        print(github_actions_matrix_json(cells))
        return 0
    if args.refresh_support:
        versions = list(dict.fromkeys(cell.release.version for cell in cells))
        document = support.refresh(versions)
        for version in versions:
            entry = document["releases"][version]
            print(f"{version}  " + (f"client-go {entry['client_go']}" if "client_go" in entry else
                                    f"unavailable: {entry['unavailable']}"))  # fmt: skip
        print(f"wrote {SUPPORT_FILE}")
        return 0
    if args.output == "json":
        print(json.dumps([_group_json(group) for group in group_cells(cells)], indent=2))
        return 0
    for group in group_cells(cells):
        derived = f"; defaults of {group.release.derived_from}" if group.release.derived_from else ""
        window = support.verdict(group.cells[0])
        print(f"{group.id}  (cert-manager {group.release.cert_manager}{derived}; {window.support.value}: "
              f"{window.window})")  # fmt: skip
        for cell in group.cells:
            print(f"  {cell.id}  {cell.proxy.image}  [{cell.proxy.status}]")
    print(f"{len(cells)} cells in {len(group_cells(cells))} cluster groups")
    return 0


def _group_json(group: ClusterGroup) -> dict[str, object]:
    window = support.verdict(group.cells[0])
    return {
        "group": group.id,
        "kserve": group.release.version,
        "defaults_of": group.release.derived_from or None,
        "cert_manager": group.release.cert_manager,
        "kubernetes": group.cells[0].kubernetes.version,
        "support": window.support.value,
        "window": window.window,
        "cells": [
            {
                "id": cell.id,
                "proxy": cell.proxy.alias,
                "image": cell.proxy.image,
                "status": cell.proxy.status,
                "variant": cell.variant.name if cell.variant else None,
            }
            for cell in group.cells
        ],
    }
