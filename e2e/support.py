"""Which Kubernetes minors each KServe release supports, read from the release itself.

Two facts per release, both data:

- **built against**: the minor of the ``k8s.io/client-go`` its ``go.mod`` requires (v0.30.4
  is Kubernetes 1.30), read through the Go module proxy and kept in
  ``e2e/data/kubernetes-support.json`` (``kserve-compat matrix --refresh-support`` rewrites
  it; a test checks it against the proxy). A version the proxy refuses is listed with its
  answer, never guessed.
- **documented minimum**: the "Kubernetes 1.x is the minimally required version" of the
  release line's install guide, in the matrix file (``kubernetes_minimum``), where one is
  known.

The window is the harness's rule, not KServe's word: from the documented minimum (when
known) up to one minor past the one the release is built against, the skew Kubernetes
supports between a client and the API server. A cell outside it still runs; its verdict
stands and the report marks it ``outside support``.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from e2e.command import run
from e2e.data import SUPPORT_FILE
from e2e.errors import EnvironmentMissing, HarnessError
from e2e.matrix import KServeRelease, MatrixCell, version_key
from e2e.text import one_line

KSERVE_MODULE = "github.com/kserve/kserve"
CLIENT_GO = "k8s.io/client-go"
# One minor past the one a release is built against: client and API server one minor apart.
SKEW_MINORS = 1

_REQUIRE = re.compile(r"^\s*(?:require\s+)?k8s\.io/client-go\s+(v0\.(\d+)\.\d+\S*)", re.MULTILINE)
_REPLACE = re.compile(
    r"^\s*(?:replace\s+)?k8s\.io/client-go(?:\s+v\S+)?\s+=>\s+k8s\.io/client-go\s+(v0\.(\d+)\.\d+\S*)", re.MULTILINE
)


class Support(Enum):
    INSIDE = "inside support"
    OUTSIDE = "outside support"
    UNKNOWN = "support unknown"


@dataclass(frozen=True)
class ReleaseSupport:
    """What is known of one release: its client-go, or why it could not be read."""

    release: str
    client_go: str | None = None  # "v0.30.4"
    unavailable: str | None = None  # the module proxy's answer when go.mod could not be read

    @property
    def built_against(self) -> str | None:
        """The Kubernetes minor of its client-go: v0.30.4 -> "1.30"."""
        if self.client_go is None:
            return None
        return f"1.{int(self.client_go.removeprefix('v').split('.')[1])}"


@dataclass(frozen=True)
class SupportVerdict:
    support: Support
    reason: str  # one line, e.g. "KServe v0.14.0 is built against Kubernetes 1.30 (client-go v0.30.4): ..."
    window: str = ""  # short, e.g. "built against 1.30, supported up to 1.31"


def _minor(version: str) -> int:
    return int(version.removeprefix("v").split(".")[1])


def client_go_of(go_mod: str) -> str | None:
    """The client-go version a go.mod builds with (a ``replace`` of it wins)."""
    replaced = _REPLACE.search(go_mod)
    if replaced:
        return replaced.group(1)
    required = _REQUIRE.search(go_mod)
    return required.group(1) if required else None


def window(release: KServeRelease, known: ReleaseSupport | None) -> tuple[str | None, str | None]:
    """(lowest, highest) supported minor; None where the data says nothing."""
    built = known.built_against if known else None
    highest = f"1.{_minor(built) + SKEW_MINORS}" if built else None
    return release.kubernetes_minimum, highest


def verdict(cell: MatrixCell, data: dict[str, ReleaseSupport] | None = None) -> SupportVerdict:
    """Whether the cell's Kubernetes minor is inside its release's window, and why."""
    known = (data if data is not None else load_support()).get(cell.release.version)
    lowest, highest = window(cell.release, known)
    minor = cell.kubernetes.version
    name = f"KServe {cell.release.version}"
    documented = f"documented minimum {lowest}" if lowest else "no documented minimum known"
    if known is None or highest is None:
        why = (
            f"the Go module proxy answered {known.unavailable}"
            if known and known.unavailable
            else f"not in the support data (kserve-compat matrix --refresh-support --kserve {cell.release.version})"
        )
        short = f"go.mod unread, documented minimum {lowest}" if lowest else "go.mod unread"
        if lowest and _minor(minor) < _minor(lowest):
            return SupportVerdict(Support.OUTSIDE, f"{name}: Kubernetes {minor} is below its {documented}", short)
        return SupportVerdict(Support.UNKNOWN, f"{name}: its go.mod could not be read ({why}); {documented}", short)
    built = f"{name} is built against Kubernetes {known.built_against} (client-go {known.client_go})"
    span = f"{lowest}-{highest}" if lowest else f"up to {highest}"
    short = f"built against {known.built_against}, supported {span}"
    if _minor(minor) > _minor(highest):
        return SupportVerdict(
            Support.OUTSIDE, f"{built}: Kubernetes {minor} is past {highest}, one minor of client skew", short
        )
    if lowest and _minor(minor) < _minor(lowest):
        return SupportVerdict(Support.OUTSIDE, f"{name}: Kubernetes {minor} is below its {documented}", short)
    return SupportVerdict(Support.INSIDE, f"{built}; supported {span} ({documented})", short)


# -- the data file ---------------------------------------------------------------------------


@functools.cache
def load_support(path: Path = SUPPORT_FILE) -> dict[str, ReleaseSupport]:
    """The checked-in support data by release version ({} when the file is absent)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc})") from None
    return {
        version: ReleaseSupport(version, entry.get("client_go"), entry.get("unavailable"))
        for version, entry in (raw.get("releases") or {}).items()
    }


def read_release(version: str) -> ReleaseSupport:
    """A release's client-go, from its go.mod as the Go module proxy serves it
    (``go list -m``: the .mod file alone, not the module's zip)."""
    from e2e import binaries

    with tempfile.TemporaryDirectory(prefix="kserve-compat-gomod-") as work:
        done = run(
            [binaries.go_binary(), "list", "-m", "-json", f"{KSERVE_MODULE}@{version}"],
            f"the go.mod of {KSERVE_MODULE}@{version}",
            cwd=work,
            env=binaries.go_environment(),
            timeout=120,
            check=False,
        )
    if done.returncode != 0:
        answer = one_line(done.stderr).removeprefix("go: ")
        refused = re.search(r"(\d{3} [A-Za-z ]+?)\s+server response: (.*)$", answer)
        if refused:
            return ReleaseSupport(version, unavailable=f"{refused.group(1)}: {refused.group(2)}")
        raise EnvironmentMissing(f"go list -m {KSERVE_MODULE}@{version}: {answer}")
    go_mod = Path(json.loads(done.stdout)["GoMod"]).read_text()
    client_go = client_go_of(go_mod)
    if client_go is None:
        return ReleaseSupport(version, unavailable=f"its go.mod requires no {CLIENT_GO}")
    return ReleaseSupport(version, client_go=client_go)


def support_document(entries: list[ReleaseSupport], today: datetime.date | None = None) -> dict[str, Any]:
    """What ``kubernetes-support.json`` holds: each release's client-go or the proxy's answer."""
    releases: dict[str, dict[str, str]] = {}
    for entry in sorted(entries, key=lambda e: version_key(e.release)):
        releases[entry.release] = (
            {"client_go": entry.client_go} if entry.client_go else {"unavailable": str(entry.unavailable)}
        )
    return {
        "read": (today or datetime.date.today()).isoformat(),
        "source": f"go.mod of {KSERVE_MODULE} at each release, through the Go module proxy ({CLIENT_GO})",
        "releases": releases,
    }


def refresh(versions: list[str], path: Path = SUPPORT_FILE) -> dict[str, Any]:
    """Read ``versions`` from the module proxy and write them (over their old entries) to ``path``."""
    current = load_support.__wrapped__(path)
    for version in versions:
        current[version] = read_release(version)
    document = support_document(list(current.values()))
    path.write_text(json.dumps(document, indent=2) + "\n")
    load_support.cache_clear()
    return document
