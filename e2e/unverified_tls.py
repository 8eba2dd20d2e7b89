"""HTTPS without certificate verification, and urllib3's warning about it, silenced once.

The harness talks to servers whose certificates are self-signed by design: kube-rbac-proxy
(KServe's Deployment gives it none) and the /healthz of kube-controller-manager and
kube-scheduler. urllib3 warns (``InsecureRequestWarning``) on every such request; the
warning says nothing a reader of the run can act on.

The filter must be in place before pytest's per-test ``catch_warnings`` starts: pytest
restores the filter list when a test ends, so a filter added during a test vanishes with
it, and a thread preparing the next cluster then warns into whichever test runs next.
``e2e.plugin`` calls :func:`ignore_insecure_request_warnings` at session start; code that
makes such requests calls it too (a no-op the second time), for runs outside pytest.
"""

from __future__ import annotations

import warnings

import urllib3


def ignore_insecure_request_warnings() -> None:
    """Ignore urllib3's ``InsecureRequestWarning`` process-wide (not ``catch_warnings()``,
    which swaps global state and races the harness's other threads)."""
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
