"""The ``kserve-compat preflight`` subcommand: its arguments and exit code."""

from __future__ import annotations

import argparse
import sys

from e2e.errors import UsageError
from e2e.preflight.render import (
    RENDERERS,
)
from e2e.preflight.runner import Options, preflight


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")
    parser.add_argument("--namespace", "-n", metavar="NS", help="where KServe's controller runs (default: kserve)")
    parser.add_argument(
        "--all-namespaces", "-A", action="store_true", help="list images of workloads in every namespace"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-image", metavar="IMAGE", help="the proxy image you plan to run")
    target.add_argument(
        "--target-proxy", metavar="ALIAS", help="the proxy image you plan to run, by matrix alias (e.g. quay-v0.18.0)"
    )
    parser.add_argument(
        "--matrix", metavar="FILE", help="matrix file for --target-proxy (default: e2e/data/matrix.yaml)"
    )
    parser.add_argument(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="SRC=DST|HOST=URL",
        help="probe SRC/... at DST/... instead (repeatable), e.g. gcr.io/kubebuilder=registry.example:5000/kubebuilder"
        "; HOST=URL asks your mirror at URL for HOST's images under their own paths, e.g. quay.io=http://10.0.0.5:5000",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (localhost and 127.0.0.1 always are)",
    )
    parser.add_argument("--no-probe", action="store_true", help="do not ask registries whether images can be pulled")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per registry request (default 10)")
    parser.add_argument(
        "--check-metrics",
        action="store_true",
        help="WRITES: also scrape the proxied metrics with temporary ServiceAccounts and RBAC (removed afterwards)",
    )
    parser.add_argument(
        "--metrics-url",
        metavar="URL",
        help="with --check-metrics: the proxy's metrics URL (default: kubectl port-forward to the metrics Service)",
    )
    parser.add_argument("--kubectl", metavar="PATH", help="kubectl for the port-forward (default: from PATH)")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="table", help="output format")


def run(args: argparse.Namespace) -> int:
    if args.metrics_url and not args.check_metrics:
        raise UsageError("--metrics-url: only meaningful with --check-metrics")
    options = Options(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        all_namespaces=args.all_namespaces,
        target_image=args.target_image,
        target_proxy=args.target_proxy,
        registry_mirror=tuple(args.registry_mirror),
        insecure_registry=tuple(args.insecure_registry),
        probe=not args.no_probe,
        timeout=args.timeout,
        check_metrics=args.check_metrics,
        metrics_url=args.metrics_url,
        kubectl=args.kubectl,
        matrix=args.matrix,
    )
    report = preflight(options)
    sys.stdout.write(RENDERERS[args.format](report))
    return report.exit_code
