"""Release manifests: the offline directory, the cache, downloads, the lock, parsing, patches.

Parsing and patching run against the real KServe release manifests, obtained through the
harness's resolver (``tests/helpers/release_files.py``; ``.ci/run`` points its offline directory at
../shared/fixtures, as a user with an air-gapped mirror would). The offline directory's own
tests need that directory.
Downloads run against a real HTTP server on 127.0.0.1 with scripted answers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.release_files import MIRRORED_KSERVE_VERSIONS, SessionReleaseFiles

from e2e.errors import LockMismatch, ManifestError, NotInOfflineDirectory, UsageError
from e2e.manifests import (
    PARSED_CACHE_MIN_BYTES,
    DownloadFailed,
    ManifestLock,
    ReleaseFiles,
    ReleaseManifest,
    apply_strategic_merge,
    cert_manager_crds_file,
    deployment_diff,
    kserve_file,
    load_release_manifest,
    parsed_cache_dir,
    patched_manifest,
    proxy_patch,
    yaml_documents,
)
from e2e.matrix import Matrix, MatrixCell, load_matrix, version_key

# Every KServe version mirrored in the fixtures (the README there lists them).
FIXTURE_VERSIONS = list(MIRRORED_KSERVE_VERSIONS)
KSERVE_PROXY_ARGS = [
    "--secure-listen-address=0.0.0.0:8443",
    "--upstream=http://127.0.0.1:8080/",
    "--logtostderr=true",
    "--v=10",
]
GCR_PROXY = "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"
QUAY_PROXY = "quay.io/brancz/kube-rbac-proxy:v0.18.0"
SHIPPED_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}


def ships_quay(version: str) -> bool:
    return version_key(version) >= version_key("v0.14.0")


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def matrix() -> Matrix:
    return load_matrix()


@pytest.fixture(scope="session")
def fixtures_dir(release_files: SessionReleaseFiles) -> Path:
    """The offline directory: the tests of its own behaviour need one."""
    return release_files.offline_directory()


@pytest.fixture
def lock(tmp_path: Path) -> ManifestLock:
    """A lock file of the test's own: tests never touch the repository's lock."""
    return ManifestLock(tmp_path / "lock.json")


@pytest.fixture(scope="session")
def offline_files(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ReleaseFiles:
    return ReleaseFiles(
        offline_dir=fixtures_dir,
        cache_dir=tmp_path_factory.mktemp("unused-cache"),
        lock=ManifestLock(tmp_path_factory.mktemp("lock") / "lock.json"),
        release_urls={"kserve": "http://127.0.0.1:9/never", "cert-manager": "http://127.0.0.1:9/x"},
    )


@pytest.fixture(scope="session")
def parsed(matrix: Matrix, release_files: ReleaseFiles) -> Callable[[str], ReleaseManifest]:
    """A release's kserve.yaml through the session's resolver, parsed once per session."""
    manifests: dict[str, ReleaseManifest] = {}

    def manifest_of(version: str) -> ReleaseManifest:
        if version not in manifests:
            manifests[version] = load_release_manifest(matrix.release(version), release_files)
        return manifests[version]

    return manifest_of


@pytest.fixture(params=FIXTURE_VERSIONS)
def release_manifest(
    request: pytest.FixtureRequest, parsed: Callable[[str], ReleaseManifest]
) -> ReleaseManifest:
    return parsed(request.param)


def cell(matrix: Matrix, version: str, alias: str, variant: str | None = None) -> MatrixCell:
    return MatrixCell(
        matrix.release(version),
        matrix.proxy(alias),
        matrix.kubernetes[0],
        matrix.variant(variant) if variant else None,
    )


def version_of(manifest: ReleaseManifest) -> str:
    return manifest.source.split()[1]


# -- the real release manifests -------------------------------------------------------


def test_every_fixture_version_is_mirrored_and_in_the_matrix(
    fixtures_dir: Path, matrix: Matrix
) -> None:
    mirrored = sorted((p.name for p in (fixtures_dir / "kserve").iterdir()), key=version_key)
    assert mirrored == FIXTURE_VERSIONS
    for version in FIXTURE_VERSIONS:
        matrix.release(version)  # raises if the matrix lacks it


def test_shipped_proxy_image(release_manifest: ReleaseManifest, matrix: Matrix) -> None:
    version = version_of(release_manifest)
    expected = QUAY_PROXY if ships_quay(version) else GCR_PROXY
    assert release_manifest.proxy_image == expected
    assert matrix.release(version).proxy_image == expected


def test_shipped_proxy_args(release_manifest: ReleaseManifest) -> None:
    assert release_manifest.proxy_args == KSERVE_PROXY_ARGS


def test_shipped_proxy_security_context(release_manifest: ReleaseManifest) -> None:
    if ships_quay(version_of(release_manifest)):
        assert release_manifest.proxy_security_context == SHIPPED_SECURITY_CONTEXT
    else:
        assert release_manifest.proxy_security_context is None


def test_profile_names_are_found(release_manifest: ReleaseManifest) -> None:
    profile = release_manifest.profile
    deployment = release_manifest.deployment()
    assert deployment["metadata"]["namespace"] == profile.namespace == "kserve"
    assert deployment["metadata"]["name"] == profile.deployment == "kserve-controller-manager"
    assert release_manifest.manager_container()["name"] == "manager"
    assert f"--metrics-addr={profile.manager_metrics_address}" in release_manifest.manager_args
    port = release_manifest.metrics_service_port()
    assert (port["port"], port["name"]) == (8443, "https")
    assert release_manifest.proxy_cluster_role_rules() == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    binding = release_manifest.proxy_cluster_role_binding()
    assert binding["roleRef"]["name"] == profile.proxy_cluster_role
    assert {"kind": "ServiceAccount", "name": profile.service_account, "namespace": "kserve"} in (
        binding["subjects"]
    )


def test_crds_webhooks_and_images(release_manifest: ReleaseManifest) -> None:
    crd_names = {crd["metadata"]["name"] for crd in release_manifest.crds()}
    assert "inferenceservices.serving.kserve.io" in crd_names
    assert "servingruntimes.serving.kserve.io" in crd_names
    webhook_kinds = {w["kind"] for w in release_manifest.webhook_configurations()}
    assert "ValidatingWebhookConfiguration" in webhook_kinds
    images = release_manifest.images()
    assert release_manifest.proxy_image in images
    manager_image = release_manifest.manager_container()["image"]
    assert manager_image in images
    assert any(
        use.container == "manager" and use.name == "kserve-controller-manager" and not use.init
        for use in release_manifest.image_uses()
    )


# -- patches for every proxy alias ----------------------------------------------------


def test_patch_for_every_proxy_alias(release_manifest: ReleaseManifest, matrix: Matrix) -> None:
    version = version_of(release_manifest)
    shipped = release_manifest.deployment()
    for proxy in matrix.proxies:
        the_cell = cell(matrix, version, proxy.alias)
        patch = proxy_patch(the_cell, release_manifest)
        [container] = patch["spec"]["template"]["spec"]["containers"]
        assert container["name"] == "kube-rbac-proxy"
        assert container["image"] == proxy.image
        assert container["args"] == KSERVE_PROXY_ARGS

        patched = patched_manifest(the_cell, release_manifest)
        assert patched.proxy_image == proxy.image
        assert patched.proxy_args == KSERVE_PROXY_ARGS
        assert patched.proxy_security_context == release_manifest.proxy_security_context
        assert patched.manager_container() == release_manifest.manager_container()
        assert [c["name"] for c in patched.deployment()["spec"]["template"]["spec"]["containers"]] == [
            c["name"] for c in shipped["spec"]["template"]["spec"]["containers"]
        ]
        # The original is untouched: patches work on copies.
        assert release_manifest.proxy_image == (QUAY_PROXY if ships_quay(version) else GCR_PROXY)

        diff = deployment_diff(the_cell, release_manifest)
        if proxy.image == release_manifest.proxy_image:
            assert diff == ""
        else:
            changed = [
                line for line in diff.splitlines()
                if line[:1] in "+-" and not line.startswith(("+++", "---"))
            ]
            assert changed == [
                f"-        image: {release_manifest.proxy_image}",
                f"+        image: {proxy.image}",
            ]
            assert the_cell.id in diff


def test_rewrite_hook_maps_the_image(matrix: Matrix, parsed: Callable[[str], ReleaseManifest]) -> None:
    manifest = parsed("v0.10.1")
    the_cell = cell(matrix, "v0.10.1", "quay-v0.18.2")
    mirrored = "mirror.example.com/brancz/kube-rbac-proxy:v0.18.2"
    patch = proxy_patch(
        the_cell, manifest, rewrite=lambda ref: ref.replace("quay.io", "mirror.example.com")
    )
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == mirrored
    patched = patched_manifest(the_cell, manifest, rewrite=lambda ref: mirrored)
    assert patched.proxy_image == mirrored


# -- variants -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v0.10.1", "v0.20.0"])
def test_variant_args(matrix: Matrix, parsed: Callable[[str], ReleaseManifest], version: str) -> None:
    manifest = parsed(version)
    expectations = {
        "drop-logtostderr": [a for a in KSERVE_PROXY_ARGS if a != "--logtostderr=true"],
        "http2-disable": [*KSERVE_PROXY_ARGS, "--http2-disable"],
        "quiet": [a for a in KSERVE_PROXY_ARGS if a != "--v=10"] + ["--v=0"],
    }
    for variant, args in expectations.items():
        the_cell = cell(matrix, version, "quay-v0.18.2", variant)
        container = proxy_patch(the_cell, manifest)["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == args
        assert patched_manifest(the_cell, manifest).proxy_args == args
    quiet_diff = deployment_diff(cell(matrix, version, "quay-v0.18.2", "quiet"), manifest)
    assert "-        - --v=10\n" in quiet_diff and "+        - --v=0\n" in quiet_diff


def test_security_context_variant_on_a_release_without_one(
    matrix: Matrix, parsed: Callable[[str], ReleaseManifest]
) -> None:
    manifest = parsed("v0.12.1")
    the_cell = cell(matrix, "v0.12.1", "quay-v0.18.0", "shipped-security-context")
    container = proxy_patch(the_cell, manifest)["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"] == {"$patch": "replace", **SHIPPED_SECURITY_CONTEXT}
    patched = patched_manifest(the_cell, manifest)
    assert patched.proxy_security_context == SHIPPED_SECURITY_CONTEXT
    assert "+          readOnlyRootFilesystem: true\n" in deployment_diff(the_cell, manifest)


def test_security_context_variant_on_a_release_that_ships_it_changes_nothing(
    matrix: Matrix, parsed: Callable[[str], ReleaseManifest]
) -> None:
    manifest = parsed("v0.14.0")
    the_cell = cell(matrix, "v0.14.0", "quay-v0.18.0", "shipped-security-context")
    assert deployment_diff(the_cell, manifest) == ""


def test_a_base_cell_after_a_variant_restores_the_shipped_container(
    matrix: Matrix, parsed: Callable[[str], ReleaseManifest]
) -> None:
    """Cells share a cluster: the next cell's patch must undo the previous cell's variant."""
    manifest = parsed("v0.10.1")
    after_variant = manifest
    for variant in ("shipped-security-context", "quiet"):
        after_variant = patched_manifest(
            cell(matrix, "v0.10.1", "quay-v0.16.0", variant), after_variant
        )
    assert after_variant.proxy_security_context == SHIPPED_SECURITY_CONTEXT
    base = cell(matrix, "v0.10.1", "gcr-v0.13.1")
    restored = apply_strategic_merge(
        after_variant.deployment(), proxy_patch(base, manifest)
    )
    assert restored == manifest.deployment()


def test_a_variant_dropping_an_absent_arg_is_refused(
    matrix: Matrix, parsed: Callable[[str], ReleaseManifest]
) -> None:
    manifest = parsed("v0.10.1")
    dropped_once = patched_manifest(cell(matrix, "v0.10.1", "quay-v0.18.0", "quiet"), manifest)
    with pytest.raises(ManifestError) as raised:
        proxy_patch(cell(matrix, "v0.10.1", "quay-v0.18.0", "quiet"), dropped_once)
    message = str(raised.value)
    assert "\n" not in message
    assert "variant quiet" in message and "--v=10" in message


def test_strategic_merge_replace_and_delete_directives() -> None:
    original = {"a": {"keep": 1, "old": 2}, "b": {"x": 1}, "list": [1, 2]}
    patch = {"a": {"$patch": "replace", "new": 3}, "b": None, "list": [3]}
    assert apply_strategic_merge(original, patch) == {"a": {"new": 3}, "list": [3]}
    assert original == {"a": {"keep": 1, "old": 2}, "b": {"x": 1}, "list": [1, 2]}


# -- the offline directory ------------------------------------------------------------


def test_a_version_missing_from_the_offline_directory(
    fixtures_dir: Path, matrix: Matrix, offline_files: ReleaseFiles
) -> None:
    assert not (fixtures_dir / "kserve" / "v0.11.2").exists()
    with pytest.raises(NotInOfflineDirectory) as raised:
        load_release_manifest(matrix.release("v0.11.2"), offline_files)
    message = str(raised.value)
    assert "\n" not in message
    assert "v0.11.2" in message and "kserve.yaml" in message and str(fixtures_dir) in message
    assert raised.value.exit_code == 2


def test_offline_directory_does_not_fall_through_to_the_network(
    fixtures_dir: Path, lock: ManifestLock, tmp_path: Path, server: ScriptedServer
) -> None:
    server.script("/v0.11.2/kserve.yaml", Answer(200, b"kind: Namespace\n"))
    files = ReleaseFiles(
        offline_dir=fixtures_dir, cache_dir=tmp_path / "cache", lock=lock,
        release_urls={"kserve": server.url},
    )
    with pytest.raises(NotInOfflineDirectory):
        files.kserve("v0.11.2")
    assert server.hits == {}
    assert files.source_of(kserve_file("v0.11.2")).startswith("offline directory: ")


def test_cert_manager_crds_from_the_offline_directory(
    offline_files: ReleaseFiles, fixtures_dir: Path
) -> None:
    text = offline_files.cert_manager_crds("v1.16.1")
    assert "certificates.cert-manager.io" in text
    with pytest.raises(NotInOfflineDirectory, match=r"cert-manager v1\.3\.0 cert-manager\.crds"):
        offline_files.cert_manager_crds("v1.3.0")


def test_offline_files_are_checked_against_the_lock_but_never_added(
    fixtures_dir: Path, lock: ManifestLock, tmp_path: Path
) -> None:
    files = ReleaseFiles(offline_dir=fixtures_dir, cache_dir=tmp_path / "cache", lock=lock)
    files.kserve("v0.14.0", "kserve-cluster-resources.yaml")
    assert lock.digests() == {}

    ref = kserve_file("v0.14.0", "kserve-cluster-resources.yaml")
    lock.save({ref.key: "0" * 64})
    with pytest.raises(LockMismatch) as raised:
        files.read(ref)
    actual = hashlib.sha256((fixtures_dir / ref.key).read_bytes()).hexdigest()
    message = str(raised.value)
    assert "\n" not in message
    assert ref.key in message and "0" * 64 in message and actual in message


def test_a_missing_offline_directory_is_named(tmp_path: Path, lock: ManifestLock) -> None:
    files = ReleaseFiles(offline_dir=tmp_path / "nowhere", lock=lock)
    with pytest.raises(ManifestError, match="nowhere: not a directory"):
        files.kserve("v0.14.0")


def test_release_file_names_cannot_escape_the_layout() -> None:
    with pytest.raises(UsageError):
        kserve_file("../v0.14.0")
    with pytest.raises(UsageError):
        kserve_file("v0.14.0", "../../etc/passwd")
    assert cert_manager_crds_file("v1.16.1").key == "cert-manager/v1.16.1/cert-manager.crds.yaml"


def test_settings_from_the_environment(tmp_path: Path, lock: ManifestLock) -> None:
    environ = {
        "KSERVE_COMPAT_MANIFEST_DIR": str(tmp_path / "mirror"),
        "KSERVE_COMPAT_CACHE": str(tmp_path / "cache-root"),
        "KSERVE_COMPAT_RELEASE_URL": "http://127.0.0.1:1/releases",
        "KSERVE_COMPAT_CERT_MANAGER_URL": "http://127.0.0.1:1/cm",
    }
    files = ReleaseFiles.from_environment(environ=environ, lock=lock)
    assert files.offline_dir == tmp_path / "mirror"
    assert files.cache_dir == tmp_path / "cache-root" / "manifests"
    assert files.url(kserve_file("v0.14.0")) == "http://127.0.0.1:1/releases/v0.14.0/kserve.yaml"
    assert files.url(cert_manager_crds_file("v1.16.1")) == (
        "http://127.0.0.1:1/cm/v1.16.1/cert-manager.crds.yaml"
    )
    from_option = ReleaseFiles.from_environment(tmp_path / "option", environ=environ, lock=lock)
    assert from_option.offline_dir == tmp_path / "option"
    assert ReleaseFiles.from_environment(environ={}, lock=lock).offline_dir is None


# -- malformed and incomplete manifests -----------------------------------------------

DEPLOYMENT_WITHOUT_PROXY = """\
apiVersion: v1
kind: Namespace
metadata:
  name: kserve
---
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kserve-controller-manager
  namespace: kserve
spec:
  template:
    spec:
      containers:
      - name: manager
        image: kserve/kserve-controller:v9.9.9
"""


def test_malformed_yaml_names_file_and_line(matrix: Matrix) -> None:
    text = "kind: Namespace\nmetadata:\n  name: kserve\n---\nkind: Service\nmetadata: [unclosed\n"
    with pytest.raises(ManifestError) as raised:
        ReleaseManifest.parse(text, source="broken.yaml", profile=matrix.releases[0].profile)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("broken.yaml line ")
    assert "not valid YAML" in message


def test_a_document_that_is_not_a_mapping(matrix: Matrix) -> None:
    with pytest.raises(ManifestError, match="document 2 is a list"):
        ReleaseManifest.parse(
            "kind: Namespace\n---\n- a\n- b\n", source="odd.yaml", profile=matrix.releases[0].profile
        )


def test_a_manifest_without_the_controller_deployment(matrix: Matrix) -> None:
    manifest = ReleaseManifest.parse(
        "kind: Namespace\nmetadata:\n  name: kserve\n",
        source="kserve v9.9.9 kserve.yaml",
        profile=matrix.releases[0].profile,
    )
    with pytest.raises(ManifestError) as raised:
        _ = manifest.proxy_image
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        "kserve v9.9.9 kserve.yaml: no Deployment kserve/kserve-controller-manager "
        "(profile default); found Deployments: none"
    )


def test_a_deployment_without_the_proxy_container(matrix: Matrix) -> None:
    manifest = ReleaseManifest.parse(
        DEPLOYMENT_WITHOUT_PROXY, source="kserve v9.9.9 kserve.yaml", profile=matrix.releases[0].profile
    )
    assert len(manifest.documents) == 2  # the empty document is skipped
    assert manifest.manager_args == []
    with pytest.raises(ManifestError) as raised:
        proxy_patch(cell(matrix, "v0.14.0", "quay-v0.18.0"), manifest)
    assert str(raised.value) == (
        "kserve v9.9.9 kserve.yaml: Deployment kserve/kserve-controller-manager has no proxy "
        "container 'kube-rbac-proxy' (profile default); found containers: manager"
    )


# -- downloads ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    truncate: bool = False  # promise more bytes than are sent, then hang up


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 answering each path from a script, counting hits."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Answer]] = {}
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                answer = owner.next_answer(self.path)
                self.send_response(answer.status)
                length = len(answer.body) + (100 if answer.truncate else 0)
                self.send_header("Content-Length", str(length))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)
                if answer.truncate:
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def script(self, path: str, *answers: Answer) -> None:
        self.scripts[path] = list(answers)

    def next_answer(self, path: str) -> Answer:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            script = self.scripts.get(path) or [Answer(404, b"not found")]
            return script.pop(0) if len(script) > 1 else script[0]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


MANIFEST_BYTES = DEPLOYMENT_WITHOUT_PROXY.encode()
PATH = "/v0.14.0/kserve.yaml"


def downloader(server: ScriptedServer, tmp_path: Path, lock: ManifestLock) -> ReleaseFiles:
    return ReleaseFiles(
        cache_dir=tmp_path / "cache",
        lock=lock,
        release_urls={"kserve": server.url, "cert-manager": server.url + "/cm"},
        attempts=3,
        backoff_s=0.001,
        max_backoff_s=0.01,
        timeout_s=(5.0, 5.0),
    )


def cache_entries(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_download_pins_caches_and_then_reads_the_cache(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    server.script(PATH, Answer(200, MANIFEST_BYTES))
    files = downloader(server, tmp_path, lock)
    assert files.source_of(kserve_file("v0.14.0")) == f"download: {server.url}{PATH}"

    assert files.kserve("v0.14.0") == DEPLOYMENT_WITHOUT_PROXY
    digest = hashlib.sha256(MANIFEST_BYTES).hexdigest()
    assert json.loads(lock.path.read_text()) == {"kserve/v0.14.0/kserve.yaml": digest}
    assert cache_entries(tmp_path) == ["kserve/v0.14.0/kserve.yaml"]

    assert files.kserve("v0.14.0") == DEPLOYMENT_WITHOUT_PROXY
    assert server.hits == {PATH: 1}
    assert files.source_of(kserve_file("v0.14.0")).startswith("cache: ")


def test_a_tampered_cache_is_refused(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    server.script(PATH, Answer(200, MANIFEST_BYTES))
    files = downloader(server, tmp_path, lock)
    files.kserve("v0.14.0")
    cached = tmp_path / "cache" / "kserve" / "v0.14.0" / "kserve.yaml"
    cached.write_bytes(MANIFEST_BYTES + b"# edited\n")
    with pytest.raises(LockMismatch, match="from the cache"):
        files.kserve("v0.14.0")


def test_a_cached_file_without_a_pin_is_pinned(tmp_path: Path, lock: ManifestLock) -> None:
    cached = tmp_path / "cache" / "kserve" / "v0.15.2" / "kserve.yaml"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(MANIFEST_BYTES)
    files = ReleaseFiles(cache_dir=tmp_path / "cache", lock=lock)
    files.kserve("v0.15.2")
    assert lock.digests() == {"kserve/v0.15.2/kserve.yaml": hashlib.sha256(MANIFEST_BYTES).hexdigest()}


def test_a_new_pin_keeps_the_others(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    lock.save({"kserve/v0.10.1/kserve.yaml": "a" * 64})
    server.script("/cm/v1.16.1/cert-manager.crds.yaml", Answer(200, b"kind: List\n"))
    downloader(server, tmp_path, lock).cert_manager_crds("v1.16.1")
    assert lock.digests() == {
        "cert-manager/v1.16.1/cert-manager.crds.yaml": hashlib.sha256(b"kind: List\n").hexdigest(),
        "kserve/v0.10.1/kserve.yaml": "a" * 64,
    }


def test_a_server_error_is_retried(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    server.script(PATH, Answer(500, b"oops"), Answer(503, b"later"), Answer(200, MANIFEST_BYTES))
    assert downloader(server, tmp_path, lock).kserve("v0.14.0") == DEPLOYMENT_WITHOUT_PROXY
    assert server.hits == {PATH: 3}


def test_too_many_requests_is_retried(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    server.script(PATH, Answer(429, b"slow down", {"Retry-After": "0"}), Answer(200, MANIFEST_BYTES))
    assert downloader(server, tmp_path, lock).kserve("v0.14.0") == DEPLOYMENT_WITHOUT_PROXY
    assert server.hits == {PATH: 2}


def test_retries_are_bounded(server: ScriptedServer, tmp_path: Path, lock: ManifestLock) -> None:
    server.script(PATH, Answer(429, b"slow down"))
    with pytest.raises(DownloadFailed) as raised:
        downloader(server, tmp_path, lock).kserve("v0.14.0")
    message = str(raised.value)
    assert "\n" not in message
    assert "failed 3 times" in message and "HTTP 429" in message and PATH in message
    assert server.hits == {PATH: 3}
    assert cache_entries(tmp_path) == []
    assert lock.digests() == {}


def test_not_found_is_one_line_and_not_retried(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    with pytest.raises(ManifestError) as raised:
        downloader(server, tmp_path, lock).kserve("v0.99.0")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("kserve v0.99.0 kserve.yaml: ") and "404" in message
    assert server.hits == {"/v0.99.0/kserve.yaml": 1}
    assert cache_entries(tmp_path) == []


def test_a_forbidden_answer_is_not_retried(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    server.script(PATH, Answer(403, b"no"))
    with pytest.raises(DownloadFailed, match="HTTP 403; expected 200"):
        downloader(server, tmp_path, lock).kserve("v0.14.0")
    assert server.hits == {PATH: 1}


def test_a_truncated_download_leaves_nothing_behind(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    server.script(PATH, Answer(200, MANIFEST_BYTES[:40], truncate=True))
    with pytest.raises(DownloadFailed):
        downloader(server, tmp_path, lock).kserve("v0.14.0")
    assert server.hits == {PATH: 3}
    assert cache_entries(tmp_path) == []


class InterruptedSession(requests.Session):
    """Delivers the first bytes of a real response, then behaves as if Ctrl-C was pressed."""

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:
        response = super().get(url, **kwargs)

        def first_bytes_then_interrupt(*args: Any, **kwargs: Any) -> Iterator[bytes]:
            yield response.raw.read(10)
            raise KeyboardInterrupt

        response.iter_content = first_bytes_then_interrupt  # type: ignore[method-assign]
        return response


def test_ctrl_c_during_a_download_leaves_nothing_behind(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    server.script(PATH, Answer(200, MANIFEST_BYTES))
    files = downloader(server, tmp_path, lock)
    files.session = InterruptedSession()
    with pytest.raises(KeyboardInterrupt):
        files.kserve("v0.14.0")
    assert server.hits == {PATH: 1}
    assert cache_entries(tmp_path) == []
    assert lock.digests() == {}


def test_a_read_only_lock_file_does_not_stop_a_download(
    server: ScriptedServer, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the lock's directory should be")
    server.script(PATH, Answer(200, MANIFEST_BYTES))
    files = downloader(server, tmp_path, ManifestLock(blocked / "lock.json"))
    assert files.kserve("v0.14.0") == DEPLOYMENT_WITHOUT_PROXY


def test_a_download_that_differs_from_the_pin_is_refused(
    server: ScriptedServer, tmp_path: Path, lock: ManifestLock
) -> None:
    pinned = hashlib.sha256(MANIFEST_BYTES).hexdigest()
    lock.save({"kserve/v0.14.0/kserve.yaml": pinned})
    served = MANIFEST_BYTES.replace(b"v9.9.9", b"v6.6.6")
    server.script(PATH, Answer(200, served))
    with pytest.raises(LockMismatch) as raised:
        downloader(server, tmp_path, lock).kserve("v0.14.0")
    message = str(raised.value)
    assert "\n" not in message
    assert "kserve/v0.14.0/kserve.yaml" in message
    assert pinned in message and hashlib.sha256(served).hexdigest() in message
    assert cache_entries(tmp_path) == []
    assert lock.digests() == {"kserve/v0.14.0/kserve.yaml": pinned}


def test_an_unreadable_lock_file_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "lock.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match=r"lock file .*lock\.json: not readable JSON"):
        ManifestLock(broken).digests()


def test_the_repository_lock_file_is_valid() -> None:
    digests = ManifestLock().digests()
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in digests.values())


# -- large YAML texts are parsed once, then read from the cache as JSON ---------------------


def _large_yaml(extra: str = "") -> str:
    """A multi-document text past the size from which parses are cached."""
    padding = "x" * 100
    items = "\n".join(f"    key{i}: {padding}" for i in range(PARSED_CACHE_MIN_BYTES // 100))
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n{items}\n---\n---\n{extra}kind: Other\n"


@pytest.fixture
def parse_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KSERVE_COMPAT_CACHE", str(tmp_path))
    return parsed_cache_dir()


def test_a_large_text_is_parsed_once_and_then_read_from_its_json(parse_cache: Path) -> None:
    text = _large_yaml()
    first = yaml_documents(text)
    assert not parse_cache.exists()  # only a parse asked to be remembered is written
    assert yaml_documents(text, remember=True) == first
    assert first[1] is None and first[2] == {"kind": "Other"}  # empty documents are kept
    (cached,) = parse_cache.glob("*.json")
    assert cached.name == hashlib.sha256(text.encode()).hexdigest() + ".json"
    assert json.loads(cached.read_text()) == first
    # The second read comes from the JSON file, not from the YAML: plant a marker there.
    cached.write_text(json.dumps([{"kind": "FromTheCache"}]))
    assert yaml_documents(text) == [{"kind": "FromTheCache"}]
    # An unreadable cache file is parsed again from the YAML.
    cached.write_text("{not json")
    assert yaml_documents(text) == first


def test_what_json_cannot_hold_as_parsed_is_not_cached(parse_cache: Path) -> None:
    dated, integer_keys = _large_yaml("when: 2024-01-02\n"), _large_yaml("codes: {1: one}\n")
    assert str(yaml_documents(dated, remember=True)[2]["when"]) == "2024-01-02"  # a date, not a string
    assert yaml_documents(integer_keys, remember=True)[2]["codes"] == {1: "one"}
    assert not list(parse_cache.glob("*.json"))
    assert yaml_documents(integer_keys, remember=True)[2]["codes"] == {1: "one"}  # parsed again, the same


def test_small_texts_and_invalid_yaml_are_not_cached(parse_cache: Path, matrix: Matrix) -> None:
    assert yaml_documents("kind: A\n---\nkind: B\n", remember=True) == [{"kind": "A"}, {"kind": "B"}]
    with pytest.raises(ManifestError, match="not valid YAML"):
        ReleaseManifest.parse(
            _large_yaml("kind: [unclosed\n"), source="big.yaml", profile=matrix.releases[0].profile, remember=True
        )
    assert not list(parse_cache.glob("*.json"))
