"""``kserve-compat migrate``: move a live cluster's kube-rbac-proxy sidecar to another image, guarded.

What operators were advised to do by hand after ``gcr.io/kubebuilder`` stopped serving
(stage the change, roll it out, watch the metrics, undo it if it goes wrong), as one command:

1. ``preflight`` (read-only): a target that is retired, cannot be pulled, would be rejected
   by admission, lacks the proxy's RBAC or holds a flag the target version refuses stops
   here (the preflight's exit code), unless ``--force``; a retired image *in use* does not;
2. the Deployment is recorded (``before.json``); if Helm, kustomize or a GitOps tool owns it,
   the change is printed for that tool instead (exit 8);
3. temporary ServiceAccounts (a metrics reader, one without access) and port-forwards let a
   prober ask the proxied metrics, and each ``--inference`` model, every 0.2 s;
4. the planned strategic patch is applied and the rollout watched, failing fast on a pod
   that cannot pull or crashes (with its reason and last log lines);
5. after the rollout the metrics must answer the reader and refuse the others, and no model
   request may have been lost; otherwise, or on Ctrl-C / SIGTERM after the patch, the
   recorded pod template is put back in one patch and its rollout waited for.

``migration.json`` and ``migration.md`` (``--report-dir``) say what happened, the metrics
outage measured, and which Deployment the cluster ends on (read back from the API).

Modules: ``runner`` (the steps and the rollback), ``gate`` (whether and what to apply), ``probe``
(what is watched and what must hold after), ``report`` (the record and its rendering), ``command``.
"""

from e2e.migrate.command import EXIT_CODES, add_arguments, run
from e2e.migrate.report import MigrationReport, Outcome
from e2e.migrate.runner import Options, migrate

__all__ = ["EXIT_CODES", "MigrationReport", "Options", "Outcome", "add_arguments", "migrate", "run"]
