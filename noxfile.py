"""Entry points of kserve-compat. `nox -l` lists them; README.md explains each.

Arguments after `--` go to the underlying command, e.g.
`nox -s e2e -- --kserve v0.14.0 --proxy quay-v0.18.0 --k8s 1.33`.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


def _install(session: nox.Session, *extras: str) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


def _pytest(session: nox.Session, *args: str) -> None:
    # pytest exits 5 when it collected no test: that must never pass.
    session.run("pytest", *args, success_codes=[0])


def _scenarios(session: nox.Session, *args: str) -> None:
    """The scenarios; with --parallel-groups N, N shares of the cluster groups at once
    (`kserve-compat run`, which starts them and merges their reports)."""
    if any(arg.startswith("--parallel-groups") for arg in args):
        session.run("kserve-compat", "run", "--", *args, success_codes=[0])
    else:
        _pytest(session, "scenarios", *args)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The project's own tests (tests/): real etcd, kube-apiserver, kube-rbac-proxy, registry."""
    _install(session, "test")
    session.run("kserve-compat", "binaries", external=False)
    _pytest(session, "tests", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site (docs/, mkdocs.yml) into site/, strictly: a broken link or page fails."""
    session.install("mkdocs>=1.6")
    session.run("mkdocs", "build", "--strict", "--clean")


@nox.session(python=PYTHON)
def flakes(session: nox.Session) -> None:
    """Flake hunt: the suite several times (optionally beside stress-ng), failures tallied per test.

    `-- [--rounds N] [--load [STRESS_NG_ARGS]] [--out DIR] [pytest args]`; see tests/flake_hunt.py."""
    _install(session, "test")
    session.run("kserve-compat", "binaries", external=False)
    session.run("python", "tests/flake_hunt.py", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, mypy (strict) and the GitHub workflow's validation."""
    _install(session, "test", "lint")
    session.run("ruff", "check", ".")
    session.run("mypy")
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", ".github/workflows/e2e.yaml")


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """The main job: the matrix on kind clusters (needs Docker). `-- --plan` only prints the plan."""
    _install(session, "test")
    _scenarios(session, "--provider", "kind", *session.posargs)


@nox.session(python=PYTHON)
def local(session: nox.Session) -> None:
    """The same scenarios against a real control plane and real proxies, no Docker."""
    _install(session, "test")
    if "--plan" not in session.posargs:  # a plan touches nothing, so it builds nothing either
        session.run("kserve-compat", "binaries")
    manifest_dir = os.environ.get("KSERVE_COMPAT_MANIFEST_DIR")
    args = ["--all-releases"] if manifest_dir else []
    _scenarios(session, "--provider", "local", *args, *session.posargs)


@nox.session(python=PYTHON)
def matrix(session: nox.Session) -> None:
    """Print a GitHub Actions matrix (JSON include list) for the selected cells."""
    _install(session)
    session.run("kserve-compat", "matrix", "--github", *session.posargs, silent=False)


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """Render saved JSON results (one or more dirs: CI shards merge) as Markdown, HTML, JUnit."""
    _install(session)
    session.run("kserve-compat", "report", *(session.posargs or ["reports"]))


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build the wheel users install (`pip install dist/kserve_compat-*.whl`) into dist/."""
    session.install("build")
    session.run("python", "-m", "build", "--wheel", "--outdir", "dist", ".")


@nox.session(python=PYTHON)
def binaries(session: nox.Session) -> None:
    """Build (or locate) etcd, the Kubernetes control plane, kwok and kube-rbac-proxy versions."""
    _install(session)
    session.run("kserve-compat", "binaries", *session.posargs)


@nox.session(python=PYTHON)
def images(session: nox.Session) -> None:
    """The kind tier's images built offline from upstream source: `nox -s images -- [list|build] [selection]`."""
    _install(session)
    args = session.posargs if session.posargs[:1] in (["list"], ["build"]) else ["build", *session.posargs]
    session.run("kserve-compat", "images", *args)


@nox.session(python=PYTHON)
def audit(session: nox.Session) -> None:
    """Flag retired, unpinned and unavailable images in manifests: `nox -s audit -- FILE|DIR|-`."""
    _install(session)
    session.run("kserve-compat", "audit", *session.posargs)


@nox.session(python=PYTHON)
def preflight(session: nox.Session) -> None:
    """Check the cluster of the current kubeconfig context before an upgrade or image swap."""
    _install(session)
    session.run("kserve-compat", "preflight", *session.posargs)


@nox.session(python=PYTHON)
def migrate(session: nox.Session) -> None:
    """Move the proxy sidecar of the current kubeconfig context's cluster, guarded (`-- --to ALIAS`)."""
    _install(session)
    session.run("kserve-compat", "migrate", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Wall time of the local matrix (shared control planes vs one per cell); `-- kind` times
    one kind cluster group on the local image set instead."""
    _install(session, "test")
    if session.posargs[:1] == ["kind"]:
        session.run("python", "-m", "e2e.bench_kind", *session.posargs[1:])
        return
    session.run("kserve-compat", "binaries")
    session.run("python", "-m", "e2e.bench", *session.posargs)
