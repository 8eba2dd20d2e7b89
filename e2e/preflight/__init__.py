"""``kserve-compat preflight``: is this live cluster ready for a KServe upgrade or a proxy image swap?

Against the current kubeconfig context, and read-only unless ``--check-metrics`` is given:

1. the KServe version installed (the tag of the controller's manager image, else the
   ``app.kubernetes.io/version`` label), and how it was found;
2. every image of the Pods and workload pod templates (Deployments, StatefulSets,
   DaemonSets) in the KServe namespace (``--all-namespaces``: everywhere), flagged by
   ``e2e.audit`` exactly as ``kserve-compat audit`` flags a manifest: retired registry with
   its replacement, unpinned, pinned by digest; and, unless ``--no-probe``, whether each
   image and the target image can be pulled (``e2e.registry``);
3. whether the proxy's ServiceAccount may create TokenReviews and SubjectAccessReviews,
   asked of the API server with SubjectAccessReviews (what ``kubectl auth can-i`` does; a
   review is answered, never stored);
4. the planned image patch (``e2e.manifests.proxy_patch`` built from the live Deployment)
   sent as a server-side dry run (``dryRun=All``): admission and validation run, nothing is
   persisted; its proxy args checked against the target version's flag contract
   (``e2e.proxy_flags``: an unknown flag fails, a deprecated one warns);
5. with ``--check-metrics`` only: the RBAC-proxied metrics check of ``e2e.checks`` through a
   ``kubectl port-forward`` (or ``--metrics-url``), with two temporary ServiceAccounts, a
   ClusterRole and a ClusterRoleBinding that are deleted afterwards, also on failure,
   Ctrl-C or SIGTERM. This is the only mode that writes to the cluster, and it says so.

Exit codes (``model.EXIT_CODES``; of several, ``model.EXIT_RANK`` decides: 5, 4, 7, 6, 3):
0 go; 2 usage error (unreachable cluster, unknown context, no KServe in the namespace);
3 an image in use (or the target) is on a retired registry; 4 an image is unavailable or
not a valid reference; 5 the swap would be rejected, the proxy's ServiceAccount lacks the
RBAC it needs, or the ``--check-metrics`` check failed; 6 an image could not be checked
(its registry did not answer), as in ``audit``; 7 the planned proxy args hold a flag the
target kube-rbac-proxy version does not accept (the proxy would exit at start).

One module per concern: ``model`` (the go/no-go report), ``cluster`` (connecting and
reading), ``rbac`` (the proxy's SubjectAccessReviews), ``swap`` (the dry-run patch),
``image_checks``, ``metrics`` (``--check-metrics``), ``runner`` (one run), ``render`` and
``command`` (the subcommand). This package re-exports the public API.
"""

from e2e.preflight.cluster import Connection, connect
from e2e.preflight.command import add_arguments, run
from e2e.preflight.model import (
    EXIT_CODES,
    EXIT_GO,
    EXIT_REJECTED,
    EXIT_USAGE,
    MANAGED_BY,
    Check,
    PreflightReport,
    Status,
)
from e2e.preflight.render import RENDERERS, render_json, render_markdown, render_table
from e2e.preflight.runner import Options, preflight

__all__ = [
    "EXIT_CODES",
    "EXIT_GO",
    "EXIT_REJECTED",
    "EXIT_USAGE",
    "MANAGED_BY",
    "RENDERERS",
    "Check",
    "Connection",
    "Options",
    "PreflightReport",
    "Status",
    "add_arguments",
    "connect",
    "preflight",
    "render_json",
    "render_markdown",
    "render_table",
    "run",
]
