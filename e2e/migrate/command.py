"""The ``kserve-compat migrate`` subcommand: its arguments, its report files and its exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import e2e.migrate.report as migration_report
from e2e.migrate.runner import Options, migrate

EXIT_CODES = (
    (migration_report.EXIT_MIGRATED, "migrated (or already on the target, or --dry-run)"),
    (2, "usage error (unreachable cluster, unknown --to, an --inference that is not a Ready InferenceService)"),
    (3, "refused: the target is on a retired registry (the preflight's code; --force overrides)"),
    (4, "refused: the target image is unavailable (the preflight's code)"),
    (5, "refused: the swap would be rejected or the proxy lacks RBAC (the preflight's code)"),
    (6, "refused: the target image could not be checked (the preflight's code)"),
    (7, "refused: the proxy args hold a flag the target version refuses (the preflight's code)"),
    (
        migration_report.EXIT_NOT_APPLIED,
        "not applied: Helm, kustomize or a GitOps tool owns the Deployment; the change is printed",
    ),
    (migration_report.EXIT_ROLLED_BACK, "a check failed after the patch: rolled back to the recorded Deployment"),
    (migration_report.EXIT_ROLLBACK_FAILED, "the rollback failed too: the report says what the cluster runs"),
    (migration_report.EXIT_ABORTED, "a step before the patch failed (probe RBAC, port-forward): nothing applied"),
    (migration_report.EXIT_INTERRUPTED, "Ctrl-C or SIGTERM: rolled back if anything was applied"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to", required=True, metavar="ALIAS|IMAGE", help="the proxy image to run: a matrix alias (quay-v0.22.1) or "
        "an image reference",
    )  # fmt: skip
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")
    parser.add_argument("--namespace", "-n", metavar="NS", help="where KServe's controller runs (default: kserve)")
    parser.add_argument("--dry-run", action="store_true", help="run the (read-only) preflight, print every step")
    parser.add_argument(
        "--force", action="store_true", help="migrate although the preflight says no-go or a tool owns the Deployment"
    )
    parser.add_argument(
        "--inference",
        action="append",
        default=[],
        metavar="NS/NAME",
        help="an InferenceService to keep asking (GET /v1/models/NAME) throughout; repeatable",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("kserve-compat-migrate"),
        metavar="DIR",
        help="where migration.json, migration.md and before.json go (default ./kserve-compat-migrate)",
    )
    parser.add_argument("--rollout-timeout", type=float, default=300.0, metavar="S", help="default 300")
    parser.add_argument(
        "--settle", type=float, default=10.0, metavar="S", help="seconds to keep probing after the rollout (default 10)"
    )
    parser.add_argument("--kubectl", metavar="PATH", help="kubectl for the port-forwards (default: from PATH)")
    parser.add_argument("--metrics-url", metavar="URL", help="the proxy's metrics URL (default: a port-forward)")
    parser.add_argument("--no-probe", action="store_true", help="preflight: do not ask registries for the target")
    parser.add_argument(
        "--registry-mirror", action="append", default=[], metavar="SRC=DST|HOST=URL", help="as in preflight"
    )
    parser.add_argument(
        "--insecure-registry", action="append", default=[], metavar="HOST[:PORT]", help="as in preflight"
    )
    parser.add_argument("--matrix", metavar="FILE", help="matrix file for --to ALIAS (default: the packaged one)")


def run(args: argparse.Namespace) -> int:
    options = Options(
        to=args.to,
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        force=args.force,
        dry_run=args.dry_run,
        inference=tuple(args.inference),
        report_dir=args.report_dir,
        rollout_timeout_s=args.rollout_timeout,
        settle_s=args.settle,
        kubectl=args.kubectl,
        metrics_url=args.metrics_url,
        probe_registries=not args.no_probe,
        registry_mirror=tuple(args.registry_mirror),
        insecure_registry=tuple(args.insecure_registry),
        matrix=args.matrix,
    )
    report = migrate(options)
    if not options.dry_run:
        report.files += [str(path) for path in migration_report.write(report, options.report_dir)]
    sys.stdout.write(migration_report.render_markdown(report))
    if report.files:
        sys.stdout.write("\nReport: " + ", ".join(report.files) + "\n")
    return report.exit_code
