"""A real distribution registry on 127.0.0.1 for tests, and the small servers around it.

``docker-registry`` is Debian's build of github.com/distribution/distribution (v2.8).
Images are pushed through its HTTP API (blob uploads, then the manifest), so nothing but
the registry and ``requests`` is involved. For the bearer-token flow the registry runs
with ``auth: token`` and trusts a self-signed certificate whose key signs the JWTs that
``TokenService`` (an ``http.server`` on another port) hands out.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import http.server
import io
import json
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from e2e.availability import unavailable

REGISTRY_BINARY = "docker-registry"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
TOKEN_SERVICE = "kserve-compat-test-registry"
TOKEN_ISSUER = "kserve-compat-test-issuer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def registry_binary() -> str | None:
    return shutil.which(REGISTRY_BINARY) or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )


@dataclass
class RunningRegistry:
    url: str  # http://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT, as written in image references
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def run_registry(binary: str, workdir: Path, auth: dict[str, Any] | None = None) -> Iterator[RunningRegistry]:
    """Start the registry with filesystem storage under ``workdir``; stop it afterwards."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if auth:
        config["auth"] = auth
    config_file = workdir / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = workdir / "registry.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([binary, "serve", str(config_file)], stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for attempt in Retrying(
            retry=retry_if_exception_type((requests.ConnectionError, RuntimeError)),
            stop=stop_after_delay(30),
            wait=wait_fixed(0.1),
            reraise=True,
        ):
            with attempt:
                if process.poll() is not None:
                    raise ProcessLookupError(f"registry exited {process.returncode}: {log.read_text()}")
                requests.get(f"{url}/v2/", timeout=2)
        yield RunningRegistry(url=url, host=f"127.0.0.1:{port}", process=process, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def require_registry_binary() -> str:
    """Debian's docker-registry; without it the test is skipped (failed with ``CI=true``)."""
    binary = registry_binary()
    if binary is None:
        unavailable("docker-registry not installed (apt-get install docker-registry)")
    return binary


@contextmanager
def registry_serving(workdir: Path, images: Mapping[str, Iterable[str]]) -> Iterator[RunningRegistry]:
    """A real registry holding ``images`` (repository -> tags), each a small image pushed here."""
    with run_registry(require_registry_binary(), workdir) as running:
        for repository, tags in images.items():
            for tag in tags:
                push_image(running.url, repository, tag)
        yield running


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(content: bytes) -> bytes:
    """A gzipped tar holding one file: the smallest honest image layer."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def push_image(registry_url: str, repository: str, tag: str, session: requests.Session | None = None) -> str:
    """Push a one-layer image through the registry API; returns the manifest digest."""
    http = session or requests.Session()
    layer = _layer(f"{repository}:{tag}\n".encode())
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    for blob in (layer, config):
        started = http.post(f"{registry_url}/v2/{repository}/blobs/uploads/", timeout=10)
        started.raise_for_status()
        location = urllib.parse.urljoin(registry_url, started.headers["Location"])
        separator = "&" if "?" in location else "?"
        done = http.put(
            f"{location}{separator}digest={_digest(blob)}",
            data=blob,
            headers={"Content-Type": "application/octet-stream"},
            timeout=10,
        )
        done.raise_for_status()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": _digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": _digest(layer),
                }
            ],
        }
    ).encode()
    put = http.put(
        f"{registry_url}/v2/{repository}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": DOCKER_MANIFEST},
        timeout=10,
    )
    put.raise_for_status()
    assert put.headers["Docker-Content-Digest"] == _digest(manifest)
    return _digest(manifest)


# -- the token service ----------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenSigner:
    """An EC key and a self-signed certificate for it: the registry's ``rootcertbundle``."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls) -> TokenSigner:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kserve-compat test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def token(self, access: list[dict[str, Any]], lifetime: int = 300) -> str:
        """A registry JWT (ES256) carrying its certificate in ``x5c``."""
        header = {
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()],
        }
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": "",
            "aud": TOKEN_SERVICE,
            "exp": now + lifetime,
            "nbf": now - 60,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"


@dataclass
class TokenService:
    """Token endpoint: grants ``pull`` on any repository not in ``refused`` to anyone, and on
    every repository to a caller with the Basic credentials of one of ``users`` (a wrong
    password is answered 401, as real token services do)."""

    signer: TokenSigner
    refused: set[str] = field(default_factory=set)
    requests_by_scope: Counter[str] = field(default_factory=Counter)
    url: str = ""
    users: dict[str, str] = field(default_factory=dict)

    def grant(self, scope: str, user: str | None = None) -> list[dict[str, Any]]:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or (name in self.refused and user is None):
            return []
        return [{"type": "repository", "name": name, "actions": ["pull"] if "pull" in actions else []}]

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                scope = query.get("scope", [""])[0]
                service.requests_by_scope[scope] += 1
                if query.get("service", [""])[0] != TOKEN_SERVICE:
                    self.send_response(400)
                    self.end_headers()
                    return
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if service.users.get(name) != password:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                body = json.dumps({"token": service.signer.token(service.grant(scope, user)), "expires_in": 300})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on 127.0.0.1 in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def scripted_handler(
    answer: Callable[[http.server.BaseHTTPRequestHandler, int], tuple[int, dict[str, str]]],
) -> tuple[type[http.server.BaseHTTPRequestHandler], list[str]]:
    """A handler whose n-th request (0-based) gets ``answer(request, n)``; records paths."""
    seen: list[str] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _respond(self) -> None:
            with lock:
                index = len(seen)
                seen.append(f"{self.command} {self.path}")
            code, headers = answer(self, index)
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = _respond
        do_GET = _respond

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler, seen


@contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung registry."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()
