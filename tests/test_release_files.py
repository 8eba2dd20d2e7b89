"""Where the tests get release manifests, the committed pins, and a clone that has none.

The tests read release manifests only through the harness's resolver
(``tests/helpers/release_files.py``). Without a source for a file they skip locally and fail with
``CI=true``, in one line naming ``KSERVE_COMPAT_MANIFEST_DIR``; the last test proves it on a
real ``git clone`` with no ``../shared`` beside it. The pins of
``e2e/data/release-manifests.lock.json`` are checked against the real files and enforced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.release_files import SessionReleaseFiles

from e2e import binaries
from e2e.availability import unavailable
from e2e.errors import LockMismatch
from e2e.manifests import DEFAULT_LOCK_FILE, ManifestLock, ReleaseFile, kserve_file
from e2e.matrix import load_matrix

VARIABLE = "KSERVE_COMPAT_MANIFEST_DIR"


class Forbidden(BaseHTTPRequestHandler):
    """Answers 403 to everything: a release server that will not give the files."""

    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def forbidding_server() -> Iterator[tuple[str, list[str]]]:
    """(URL, paths asked) of a server on 127.0.0.1 that refuses every download."""
    hits: list[str] = []
    handler = type("Handler", (Forbidden,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def files_without_a_source(tmp_path: Path, url: str) -> SessionReleaseFiles:
    """The tests' resolver with no offline directory, an empty cache and a refusing server."""
    environ = {
        "KSERVE_COMPAT_CACHE": str(tmp_path / "cache"),
        "KSERVE_COMPAT_RELEASE_URL": url,
        "KSERVE_COMPAT_CERT_MANAGER_URL": url,
    }
    files = SessionReleaseFiles.from_environment(environ=environ, lock=ManifestLock(tmp_path / "lock.json"))
    assert isinstance(files, SessionReleaseFiles)
    return files


# -- no source: skip locally, fail in CI -------------------------------------------------------


def test_a_file_nobody_has_skips_locally_in_one_line_naming_the_variable(
    tmp_path: Path, forbidding_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    url, hits = forbidding_server
    files = files_without_a_source(tmp_path, url)
    with pytest.raises(pytest.skip.Exception) as raised:
        files.kserve("v0.14.0")
    message = str(raised.value)
    assert "\n" not in message
    assert VARIABLE in message and "kserve v0.14.0 kserve.yaml" in message and "HTTP 403" in message
    assert hits == ["/v0.14.0/kserve.yaml"]


def test_a_file_nobody_has_fails_in_ci_in_one_line_naming_the_variable(
    tmp_path: Path, forbidding_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    url, _ = forbidding_server
    files = files_without_a_source(tmp_path, url)
    with pytest.raises(pytest.fail.Exception) as raised:
        files.cert_manager_crds("v1.16.1")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("required component missing in CI: release manifest unavailable: ")
    assert VARIABLE in message and "cert-manager v1.16.1" in message
    assert raised.value.__context__ is None  # else pytest prints "During handling ..." and a second message


def test_after_a_failed_download_the_session_asks_no_more(
    tmp_path: Path, forbidding_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    url, hits = forbidding_server
    files = files_without_a_source(tmp_path, url)
    for version in ("v0.14.0", "v0.16.0", "v0.20.0"):
        with pytest.raises(pytest.skip.Exception, match=VARIABLE):
            files.kserve(version)
    assert hits == ["/v0.14.0/kserve.yaml"]


def test_a_directory_for_a_command_needs_the_offline_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    unset = SessionReleaseFiles.from_environment(environ={}, lock=ManifestLock(tmp_path / "lock.json"))
    assert isinstance(unset, SessionReleaseFiles)
    with pytest.raises(pytest.skip.Exception, match=f"{VARIABLE} is unset"):
        unset.offline_directory()
    missing = SessionReleaseFiles.from_environment(
        environ={VARIABLE: str(tmp_path / "nowhere")}, lock=ManifestLock(tmp_path / "lock.json")
    )
    assert isinstance(missing, SessionReleaseFiles)
    with pytest.raises(pytest.skip.Exception, match=r"nowhere \(KSERVE_COMPAT_MANIFEST_DIR\): not a directory"):
        missing.offline_directory()


# -- the committed pins -------------------------------------------------------------------------


def pinned_files() -> list[ReleaseFile]:
    return [ReleaseFile(*key.split("/")) for key in sorted(ManifestLock().digests())]


def test_the_lock_pins_the_default_releases() -> None:
    """Not empty, and only files of the matrix's default (latest-patch) releases."""
    pins = pinned_files()
    assert len(pins) >= 8
    matrix = load_matrix()
    defaults = {release.version: release for release in matrix.releases if release.latest_patch}
    for ref in pins:
        assert ref.project == "kserve", ref.key
        assert ref.version in defaults, f"{ref.key}: not a default release of the matrix"
        assert ref.name in defaults[ref.version].files, ref.key


def test_the_pins_match_the_real_files(release_files: SessionReleaseFiles) -> None:
    """Each pinned file, wherever the resolver finds it, has the pinned sha256."""
    digests = ManifestLock().digests()
    for ref in pinned_files():
        path = release_files.path(ref)  # checks the pin on the way
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[ref.key], ref.key


def test_an_offline_copy_that_differs_from_its_pin_is_an_error_naming_it(
    tmp_path: Path, release_files: SessionReleaseFiles
) -> None:
    """A mirror with an edited pinned file: LockMismatch (not a skip), naming the file."""
    ref = kserve_file("v0.16.0")
    assert ref.key in ManifestLock().digests()
    mirror = release_files.materialize([ref], tmp_path / "mirror")
    edited = mirror / ref.key
    edited.write_bytes(edited.read_bytes() + b"# edited\n")
    lock = tmp_path / "lock.json"
    shutil.copyfile(DEFAULT_LOCK_FILE, lock)
    files = SessionReleaseFiles.from_environment(environ={VARIABLE: str(mirror)}, lock=ManifestLock(lock))
    with pytest.raises(LockMismatch) as raised:
        files.kserve("v0.16.0")
    message = str(raised.value)
    assert "\n" not in message
    assert ref.key in message and str(edited) in message


# -- a fresh clone ------------------------------------------------------------------------------

# Tests that need a release manifest, quick once they have it; names unique in tests/.
MANIFEST_TESTS = (
    "(test_shipped_proxy_image and not switches) or test_remap_ports_on_kserves_shipped_args"
    " or test_cli_exit_codes_on_release_files or test_every_fixture_version_is_mirrored_and_in_the_matrix"
)


def git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def fresh_clone(into: Path) -> Path:
    """A ``git clone`` of this checkout's HEAD (committed files only) at ``into``."""
    if shutil.which("git") is None:
        unavailable("git not on PATH: cannot clone the repository")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, check=False).returncode:
        unavailable(f"{REPO} is not a git checkout with a commit: nothing to clone")
    head = git("rev-parse", "HEAD")
    git("clone", "--quiet", str(REPO), str(into), cwd=into.parent)
    # HEAD itself, even when it is on no branch (CI checks out a detached merge commit).
    git("fetch", "--quiet", "origin", "HEAD", cwd=into)
    git("checkout", "--quiet", "--detach", "FETCH_HEAD", cwd=into)
    assert git("rev-parse", "HEAD", cwd=into) == head
    return into


def junit_cases(path: Path) -> dict[str, ElementTree.Element]:
    """The test cases of a JUnit XML report, by class and name."""
    root = ElementTree.parse(path).getroot()
    return {f"{case.get('classname')}::{case.get('name')}": case for case in root.iter("testcase")}


@pytest.mark.slow
def test_a_fresh_clone_collects_skips_locally_and_fails_in_ci(
    tmp_path: Path, forbidding_server: tuple[str, list[str]]
) -> None:
    """A clone with no ``../shared``, no offline directory, an empty manifest cache and a
    release server that refuses: the whole tree collects; the manifest tests skip, naming
    the variable; with ``CI=true`` they fail, in one line naming it."""
    alone = tmp_path / "alone"
    alone.mkdir()
    clone = fresh_clone(alone / "kserve-compat")
    assert not (clone.parent / "shared").exists()

    cache = tmp_path / "cache"
    (cache / "manifests").mkdir(parents=True)
    if (binaries.cache_root() / "bin").is_dir():  # the same cache root holds the built binaries
        (cache / "bin").symlink_to(binaries.cache_root() / "bin")
    url, _ = forbidding_server
    env = {k: v for k, v in os.environ.items() if k not in ("CI", VARIABLE, "PYTEST_ADDOPTS")}
    env.update(
        KSERVE_COMPAT_CACHE=str(cache),
        KSERVE_COMPAT_RELEASE_URL=url,
        KSERVE_COMPAT_CERT_MANAGER_URL=url,
        PYTHONPATH=str(clone),  # the clone's e2e/, not the installed checkout's
        PYTHONDONTWRITEBYTECODE="1",
    )

    def run(junit: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-q", "-rs",
             "-k", MANIFEST_TESTS, "--junitxml", str(junit)],
            cwd=clone, env={**env, **extra_env}, capture_output=True, text=True, timeout=300, check=False,
        )

    local = run(tmp_path / "local.xml", {})
    output = local.stdout + local.stderr
    assert local.returncode == 0, output[-3000:]  # 0: collected without errors, nothing failed
    assert str(REPO) not in output, "the run imported this checkout's code, not the clone's"
    cases = junit_cases(tmp_path / "local.xml")
    assert len(cases) >= 11, sorted(cases)  # 8 releases' proxy images and three more
    for name, case in cases.items():
        (skipped,) = case.findall("skipped")
        assert VARIABLE in skipped.get("message", ""), name

    in_ci = run(tmp_path / "ci.xml", {"CI": "true"})
    output = in_ci.stdout + in_ci.stderr
    assert in_ci.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "During handling" not in output, output[-3000:]
    ci_cases = junit_cases(tmp_path / "ci.xml")
    assert ci_cases.keys() == cases.keys()
    for name, case in ci_cases.items():
        (problem,) = case.findall("failure") + case.findall("error")
        message = problem.get("message", "")
        assert "required component missing in CI: release manifest unavailable: " in message, name
        assert VARIABLE in message and "\n" not in message, name
