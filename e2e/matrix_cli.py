"""``kserve-compat matrix``: show the selected cells, or print a GitHub Actions matrix."""

from __future__ import annotations

import argparse

from e2e.matrix import Selection, github_actions_matrix_json, group_cells, load_matrix


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
    parser.add_argument("--k8s", action="append", metavar="V[,V]", help="Kubernetes versions, e.g. 1.33 (repeatable)")
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


def run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    cells = matrix.select(selection_from(args))
    if args.github:
        print(github_actions_matrix_json(cells))
        return 0
    for group in group_cells(cells):
        derived = f"; defaults of {group.release.derived_from}" if group.release.derived_from else ""
        print(f"{group.id}  (cert-manager {group.release.cert_manager}{derived})")
        for cell in group.cells:
            print(f"  {cell.id}  {cell.proxy.image}  [{cell.proxy.status}]")
    print(f"{len(cells)} cells in {len(group_cells(cells))} cluster groups")
    return 0
