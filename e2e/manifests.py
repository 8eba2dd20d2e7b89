"""KServe release manifests: fetch them, pin them, read them, and patch the proxy sidecar.

Four parts, in the order a run uses them:

1. **Fetching** (``ReleaseFiles``). A release file comes from, in this order: the offline
   manifest directory (``--manifest-dir`` / ``KSERVE_COMPAT_MANIFEST_DIR``; when it is set it
   is the *only* source, a missing file is ``NotInOfflineDirectory``, never a silent
   download), the cache (``$KSERVE_COMPAT_CACHE/manifests``, default
   ``~/.cache/kserve-compat/manifests``), or a download from the GitHub release. Downloads
   are retried on connection errors, timeouts, 429 and 5xx only, land in a temporary file
   and are renamed into the cache only once complete and verified.
   Opt-in (``--manifests-from-module`` / ``KSERVE_COMPAT_MANIFESTS_FROM_MODULE=1``), a KServe
   file the offline directory (or the cache) lacks is read from the release's own Go
   module instead (``ModuleFiles``: ``go mod download github.com/kserve/kserve@<version>``,
   file ``install/<version>/<name>``), for machines whose only way out is the Go module
   proxy. A version the proxy refuses is ``NotInModule`` (a ``NotInOfflineDirectory``: the
   cell is skipped with the proxy's answer). ``ReleaseFiles.origin`` says where each file
   was read from.
2. **Pinning** (``ManifestLock``). ``e2e/data/release-manifests.lock.json`` maps
   ``<project>/<version>/<file>`` to a sha256. The repository pins the files of the
   matrix's default releases whose upstream bytes are known; a file without a pin is
   pinned by its first download. Every read (offline directory, cache, download) is
   checked against the pin: a difference is ``LockMismatch``, naming the file and where
   it came from.
3. **Reading** (``ReleaseManifest``). Multi-document YAML, with the controller pieces found
   by the names of the release's ``ControllerProfile``, never by position. What a release
   ships (``shipped_proxy``: the proxy image and args of its controller Deployment) is read
   here, not taken from the matrix, whose ``proxy_image`` is only the line's default.
4. **Patching** (``proxy_patch``, ``patched_manifest``, ``deployment_diff``). The strategic
   merge patch that puts a matrix cell's proxy image (and variant) into the controller
   Deployment, its in-memory application, and a reviewable diff for ``--plan``.

Knows nothing of clusters: applying the patch is the caller's business.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
import tenacity
import yaml

from e2e.atomic_write import write_atomic
from e2e.cache import cache_root
from e2e.data import LOCK_FILE
from e2e.errors import (
    EnvironmentMissing,
    HarnessError,
    LockMismatch,
    ManifestError,
    NotInOfflineDirectory,
    UsageError,
)
from e2e.http_retry import retry_after_seconds
from e2e.local import binaries
from e2e.matrix import ControllerProfile, KServeRelease, MatrixCell, version_key

log = logging.getLogger(__name__)

DEFAULT_LOCK_FILE = LOCK_FILE

# Where each project publishes its release assets: ``<base>/<version>/<file>``.
RELEASE_URLS: Mapping[str, str] = {
    "kserve": "https://github.com/kserve/kserve/releases/download",
    "cert-manager": "https://github.com/cert-manager/cert-manager/releases/download",
}
CERT_MANAGER_CRDS = "cert-manager.crds.yaml"

ENV_MANIFEST_DIR = "KSERVE_COMPAT_MANIFEST_DIR"
ENV_RELEASE_URL = "KSERVE_COMPAT_RELEASE_URL"
ENV_CERT_MANAGER_URL = "KSERVE_COMPAT_CERT_MANAGER_URL"
ENV_MANIFESTS_FROM_MODULE = "KSERVE_COMPAT_MANIFESTS_FROM_MODULE"
# The project whose release files its Go module carries (cert-manager's module holds a
# chart, not its release manifests).
MODULE_PROJECT = "kserve"
MODULE_ORIGIN_PREFIX = "Go module "  # how ReleaseFiles.origin names a file read from a module

# The C loader parses the 3.5 MB v0.16 manifest in about a second; the pure-Python one
# takes many times that. Both give the same documents.
YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Even the C loader spends 0.1-0.5 s of CPU on a 1-3 MB release manifest (the Python
# constructors do most of the work), once per cluster group, on the thread that prepares the
# next group while cells run; JSON loads the same documents twenty times faster. So an
# install keeps a large text's documents as JSON in the cache, named by the text's SHA-256;
# every reader uses them, and only an install writes them (a --plan writes nothing).
PARSED_CACHE_MIN_BYTES = 64 * 1024


def parsed_cache_dir() -> Path:
    return cache_root() / "parsed-yaml"


def yaml_documents(text: str, *, remember: bool = False) -> list[Any]:
    """Every document of a multi-document YAML text (``None`` for an empty one), read from
    the cache when a large text was parsed before; ``remember`` keeps a new parse there.
    Raises ``yaml.YAMLError`` on invalid YAML."""
    if len(text) < PARSED_CACHE_MIN_BYTES:
        return list(yaml.load_all(text, Loader=YAML_LOADER))
    cached = parsed_cache_dir() / f"{sha256_hex(text.encode())}.json"
    try:
        return list(json.loads(cached.read_bytes()))
    except (OSError, ValueError):  # not there yet, or unreadable: parse the YAML again
        pass
    documents = list(yaml.load_all(text, Loader=YAML_LOADER))
    if not remember:
        return documents
    try:
        as_json = json.dumps(documents)
    except (TypeError, ValueError):  # e.g. a YAML timestamp: JSON cannot hold it as parsed
        return documents
    if json.loads(as_json) == documents:  # e.g. integer keys would come back as strings
        with contextlib.suppress(OSError):  # a read-only cache only costs the next parse
            write_atomic(cached, as_json.encode())
    return documents


def load_yaml_documents(text: str, *, remember: bool = False) -> list[dict[str, Any]]:
    """The non-empty documents of a multi-document YAML text (see ``yaml_documents``)."""
    return [document for document in yaml_documents(text, remember=remember) if document]


class DownloadFailed(HarnessError):
    """A release file could not be downloaded (after retrying what is worth retrying)."""


class NotInModule(NotInOfflineDirectory):
    """Neither the offline directory (or cache) nor the release's Go module has the file:
    the Go module proxy refuses the version, or the module lacks ``install/<version>/<name>``.

    A ``NotInOfflineDirectory``, so a cell that needs the file is skipped with this reason.
    """


def manifests_from_module_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``KSERVE_COMPAT_MANIFESTS_FROM_MODULE`` asks for the Go module source (``1``)."""
    value = (os.environ if environ is None else environ).get(ENV_MANIFESTS_FROM_MODULE, "")
    if value not in ("", "0", "1"):
        raise UsageError(f"{ENV_MANIFESTS_FROM_MODULE}={value!r}: expected 1 (on) or 0 (off)")
    return value == "1"


# -- release files --------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseFile:
    """One release asset: ``kserve v0.14.0 kserve.yaml``, ``cert-manager v1.16.1 ...``."""

    project: str  # a key of RELEASE_URLS
    version: str
    name: str

    def __post_init__(self) -> None:
        if self.project not in RELEASE_URLS:
            known = ", ".join(RELEASE_URLS)
            raise UsageError(f"release file project {self.project!r}: expected one of {known}")
        version_key(self.version)  # rejects anything that is not vX.Y.Z[-pre], e.g. "../x"
        if not self.name or "/" in self.name or "\\" in self.name or self.name.startswith("."):
            raise UsageError(f"release file name {self.name!r}: expected a plain file name")

    @property
    def key(self) -> str:
        """The lock file key and the relative path in the offline directory and cache."""
        return f"{self.project}/{self.version}/{self.name}"

    @property
    def label(self) -> str:
        return f"{self.project} {self.version} {self.name}"


def kserve_file(version: str, name: str = "kserve.yaml") -> ReleaseFile:
    return ReleaseFile("kserve", version, name)


def cert_manager_crds_file(version: str) -> ReleaseFile:
    return ReleaseFile("cert-manager", version, CERT_MANAGER_CRDS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ManifestLock:
    """The sha256 pins of release files, kept in the repository so reviews see changes.

    The file is a flat JSON object ``{"kserve/v0.14.0/kserve.yaml": "<sha256>", ...}``,
    written sorted and indented so that a new pin is a one-line diff.
    """

    def __init__(self, path: Path = DEFAULT_LOCK_FILE) -> None:
        self.path = Path(path)
        self._write_lock = threading.Lock()

    def digests(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"lock file {self.path}: not readable JSON ({exc})") from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise UsageError(f"lock file {self.path}: expected a JSON object of file -> sha256")
        return raw

    def expected(self, ref: ReleaseFile) -> str | None:
        return self.digests().get(ref.key)

    def verify(self, ref: ReleaseFile, data: bytes, where: str) -> bool:
        """Raise ``LockMismatch`` if ``data`` differs from the pin; False if there is no pin."""
        expected = self.expected(ref)
        if expected is None:
            return False
        actual = sha256_hex(data)
        if actual != expected:
            raise LockMismatch(
                f"{ref.key} from {where}: sha256 {actual}, expected {expected} (recorded in {self.path})"
            )
        return True

    def record(self, ref: ReleaseFile, digest: str) -> None:
        """Pin ``ref`` to ``digest`` (read, merge, atomic rewrite: other pins are kept)."""
        with self._write_lock:
            digests = self.digests()
            if digests.get(ref.key) == digest:
                return
            digests[ref.key] = digest
            try:
                self.save(digests)
            except OSError as exc:
                # A read-only checkout can still run; it just cannot pin new files.
                log.warning("could not pin %s in %s: %s", ref.key, self.path, exc)
                return
        log.info("pinned %s to sha256 %s in %s", ref.key, digest, self.path)

    def save(self, digests: Mapping[str, str] | None = None) -> None:
        """Write the lock file atomically (``digests`` default: what it holds now)."""
        content = json.dumps(dict(sorted((digests or self.digests()).items())), indent=2) + "\n"
        write_atomic(self.path, content.encode())


ModuleDownloader = Callable[[str, str, Path], binaries.ModuleDownload]
ModuleProbe = Callable[[str, str], "str | None"]


class ModuleFiles:
    """KServe release files out of the release's own Go module: ``install/<version>/<name>``.

    Each module version is fetched once through the Go module proxy with ``go mod
    download`` (``binaries.download_module``: the Go module cache keeps the zip, checked
    against the checksum database; a cached version answers in milliseconds). Answers,
    refusals included, are remembered for the process.
    """

    def __init__(
        self,
        module: str = binaries.KSERVE_MODULE,
        download: ModuleDownloader | None = None,
        probe: ModuleProbe | None = None,
    ) -> None:
        self.module = module
        self._download = download or binaries.download_module
        self._probe = probe or binaries.module_unavailable_reason
        self._lock = threading.Lock()
        self._answers: dict[str, binaries.ModuleDownload | str] = {}

    @staticmethod
    def path_in_module(ref: ReleaseFile) -> str:
        return f"install/{ref.version}/{ref.name}"

    def describe(self, ref: ReleaseFile) -> str:
        """``Go module github.com/kserve/kserve@v0.13.1: install/v0.13.1/kserve.yaml``."""
        return f"{MODULE_ORIGIN_PREFIX}{self.module}@{ref.version}: {self.path_in_module(ref)}"

    def download(self, version: str) -> binaries.ModuleDownload:
        """The module at ``version``; ``NotInModule`` with the Go proxy's answer if refused.

        Raises ``EnvironmentMissing`` when there is no ``go`` to ask with.
        """
        with self._lock:
            answer = self._answers.get(version)
        if answer is None:
            with tempfile.TemporaryDirectory(prefix="kserve-compat-module-") as tmp:
                try:
                    answer = self._download(self.module, version, Path(tmp))
                except binaries.BuildUnavailable as refused:
                    answer = str(refused)
            with self._lock:
                self._answers[version] = answer
        if isinstance(answer, str):
            raise NotInModule(answer)
        return answer

    def serves(self, version: str) -> bool:
        """Whether the Go module proxy serves the module at ``version``, without downloading it.

        Asks for the version's ``.info`` only (``go list -m``: well under a second, a few
        milliseconds when cached); False, with a warning, when there is no ``go``.
        """
        with self._lock:
            answer = self._answers.get(version)
        if answer is not None:
            return not isinstance(answer, str)
        try:
            return self._probe(self.module, version) is None
        except EnvironmentMissing as exc:
            log.warning("%s@%s: cannot ask the Go module proxy: %s", self.module, version, exc)
            return False

    def read(self, ref: ReleaseFile) -> tuple[bytes, str]:
        """The file's bytes and a description of where they came from (for ``origin``).

        ``NotInModule`` says why not, without naming ``ref`` (the caller does).
        """
        if ref.project != MODULE_PROJECT:
            raise NotInModule(f"only {MODULE_PROJECT} files are read from a Go module")
        try:
            download = self.download(ref.version)
        except EnvironmentMissing as exc:
            raise EnvironmentMissing(
                f"{ref.label}: {ENV_MANIFESTS_FROM_MODULE}=1 reads it from the release's Go module, but {exc}"
            ) from None
        path = download.dir / self.path_in_module(ref)
        if not path.is_file():
            raise NotInModule(f"{self.module}@{ref.version} has no {self.path_in_module(ref)}")
        where = self.describe(ref)
        if download.checksum_db != "verified":
            where += f" (checksum database {download.checksum_db})"
        return path.read_bytes(), where


class _Transient(Exception):
    """A download failure worth retrying: connection error, timeout, 429, 5xx."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ReleaseFiles:
    """The text of release files, from the offline directory, the cache, or a download."""

    def __init__(
        self,
        *,
        offline_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        lock: ManifestLock | None = None,
        release_urls: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: tuple[float, float] = (10.0, 60.0),
        module: ModuleFiles | None = None,
    ) -> None:
        self.offline_dir = Path(offline_dir).expanduser() if offline_dir else None
        # The Go module source (opt-in): consulted for KServe files the offline directory
        # or the cache lacks; None when off.
        self.module = module
        self._origins: dict[str, str] = {}
        self._origins_lock = threading.Lock()
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "manifests"
        self.lock = lock or ManifestLock()
        self.release_urls = {**RELEASE_URLS, **(release_urls or {})}
        self.session = session or requests.Session()
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s

    @classmethod
    def from_environment(
        cls,
        manifest_dir: Path | str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        lock: ManifestLock | None = None,
        from_module: bool | None = None,
    ) -> ReleaseFiles:
        """Settings from the command line (``manifest_dir``, ``from_module``) or else the environment."""
        env = os.environ if environ is None else environ
        if from_module is None:
            from_module = manifests_from_module_requested(env)
        urls = {}
        if env.get(ENV_RELEASE_URL):
            urls["kserve"] = env[ENV_RELEASE_URL]
        if env.get(ENV_CERT_MANAGER_URL):
            urls["cert-manager"] = env[ENV_CERT_MANAGER_URL]
        return cls(
            offline_dir=manifest_dir or env.get(ENV_MANIFEST_DIR) or None,
            cache_dir=cache_root(env) / "manifests",
            lock=lock,
            release_urls=urls,
            module=ModuleFiles() if from_module else None,
        )

    # -- public ---------------------------------------------------------------------

    def kserve(self, version: str, name: str = "kserve.yaml") -> str:
        return self.text(kserve_file(version, name))

    def cert_manager_crds(self, version: str) -> str:
        return self.text(cert_manager_crds_file(version))

    def text(self, ref: ReleaseFile) -> str:
        data = self.read(ref)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{ref.label}: not UTF-8 text (byte {exc.start})") from None

    def read(self, ref: ReleaseFile) -> bytes:
        if self.offline_dir is not None:
            try:
                data = self._read_offline(ref, self.offline_dir)
            except NotInOfflineDirectory:
                module = self._module_for(ref)
                if module is None:
                    raise
                lacking = f"not in the offline manifest directory {self.offline_dir}"
                return self._read_module(module, ref, lacking=lacking)
            self._record_origin(ref, f"offline directory: {self.offline_dir / ref.key}")
            return data
        cached = self.cache_dir / ref.key
        if cached.is_file():
            data = cached.read_bytes()
            if not self.lock.verify(ref, data, where=f"the cache ({cached})"):
                # Only this harness writes the cache, so its copy was a download once: pin
                # it (e.g. the lock file was reset, or the cache came from another checkout).
                self.lock.record(ref, sha256_hex(data))
            self._record_origin(ref, f"cache: {cached}")
            return data
        module = self._module_for(ref)
        if module is not None:
            try:
                return self._read_module(module, ref, lacking="not in the cache")
            except NotInModule as refused:
                log.info("%s; downloading the release asset instead", refused)
        data = self._download(ref, cached)
        self._record_origin(ref, f"download: {self.url(ref)}")
        return data

    def available(self, ref: ReleaseFile) -> bool:
        """Whether ``read`` can be expected to find ``ref``, cheaply (for selecting releases).

        Offline: the offline directory has it, or the Go module source is on and the proxy
        serves the version (the module may still lack the file: ``read`` then says so).
        Otherwise a download is always worth a try.
        """
        if self.offline_dir is None:
            return True
        if (self.offline_dir / ref.key).is_file():
            return True
        module = self._module_for(ref)
        return module is not None and module.serves(ref.version)

    def origin(self, ref: ReleaseFile) -> str | None:
        """Where ``ref`` was read from by this instance (None if not read yet), e.g.
        ``offline directory: /m/kserve/v0.14.0/kserve.yaml`` or ``Go module
        github.com/kserve/kserve@v0.13.1: install/v0.13.1/kserve.yaml``."""
        with self._origins_lock:
            return self._origins.get(ref.key)

    def origins(self) -> dict[str, str]:
        """Every file read so far (lock-file key -> where from), for reports and notes."""
        with self._origins_lock:
            return dict(self._origins)

    def _record_origin(self, ref: ReleaseFile, where: str) -> None:
        with self._origins_lock:
            self._origins[ref.key] = where

    def _module_for(self, ref: ReleaseFile) -> ModuleFiles | None:
        """The Go module source when it is on and carries ``ref``'s project."""
        return self.module if ref.project == MODULE_PROJECT else None

    def url(self, ref: ReleaseFile) -> str:
        return f"{self.release_urls[ref.project].rstrip('/')}/{ref.version}/{ref.name}"

    def source_of(self, ref: ReleaseFile) -> str:
        """Where ``read`` would take ``ref`` from, without reading it (for ``--plan``)."""
        if self.offline_dir is not None:
            path = self.offline_dir / ref.key
            module = self._module_for(ref)
            if module is not None and not path.is_file():
                return module.describe(ref)
            return f"offline directory: {path}"
        cached = self.cache_dir / ref.key
        if cached.is_file():
            return f"cache: {cached}"
        module = self._module_for(ref)
        if module is not None:
            return f"{module.describe(ref)} (else download: {self.url(ref)})"
        return f"download: {self.url(ref)}"

    # -- sources --------------------------------------------------------------------

    def _read_offline(self, ref: ReleaseFile, directory: Path) -> bytes:
        if not directory.is_dir():
            raise ManifestError(
                f"offline manifest directory {directory}: not a directory (set by --manifest-dir or {ENV_MANIFEST_DIR})"
            )
        path = directory / ref.key
        if not path.is_file():
            raise NotInOfflineDirectory(
                f"{ref.label}: not in the offline manifest directory {directory} "
                f"(expected {path}); add it there, or unset --manifest-dir/{ENV_MANIFEST_DIR} "
                "to download it"
            )
        data = path.read_bytes()
        # A mirror is checked against the pins it has, but never adds pins: the lock
        # records what upstream published, and a mirror may hold rebuilt files.
        self.lock.verify(ref, data, where=f"the offline directory ({path})")
        return data

    def _read_module(self, module: ModuleFiles, ref: ReleaseFile, *, lacking: str) -> bytes:
        """``ref`` from the release's Go module; ``NotInModule`` names both sources' answers."""
        try:
            data, where = module.read(ref)
        except NotInModule as refused:
            raise NotInModule(f"{ref.label}: {lacking}, and {refused}") from None
        # Checked against the pins, never pinning: the lock records the published release
        # assets, and a module copy is only known to equal them where a pin says so.
        self.lock.verify(ref, data, where=where)
        self._record_origin(ref, where)
        log.info("read %s from %s (%s)", ref.label, where, lacking)
        return data

    def _download(self, ref: ReleaseFile, target: Path) -> bytes:
        url = self.url(ref)
        target.parent.mkdir(parents=True, exist_ok=True)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            before_sleep=lambda state: log.warning(
                "%s: attempt %d failed (%s); retrying",
                url,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
            reraise=True,
        )
        try:
            part = retrying(self._fetch_once, ref, url, target.parent)
        except _Transient as exc:
            raise DownloadFailed(
                f"{ref.label}: {url} failed {self.attempts} times, last with {exc.reason}; "
                f"expected HTTP 200 (or use --manifest-dir/{ENV_MANIFEST_DIR} offline)"
            ) from None
        try:
            data = part.read_bytes()
            pinned = self.lock.verify(ref, data, where=url)
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if not pinned:
            self.lock.record(ref, sha256_hex(data))
        log.info("downloaded %s (%d bytes) into %s", url, len(data), target)
        return data

    def _fetch_once(self, ref: ReleaseFile, url: str, directory: Path) -> Path:
        """One GET into a temporary file in ``directory``; raises ``_Transient`` to retry."""
        try:
            with self.session.get(url, stream=True, timeout=self.timeout_s) as response:
                status = response.status_code
                if status == 404:
                    raise ManifestError(f"{ref.label}: {url} answered 404; expected a published release asset")
                if status == 429 or status >= 500:
                    raise _Transient(f"HTTP {status}", retry_after_seconds(response.headers.get("Retry-After")))
                if status != 200:
                    raise DownloadFailed(f"{ref.label}: {url} answered HTTP {status}; expected 200")
                fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{ref.name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in response.iter_content(chunk_size=64 * 1024):
                            out.write(chunk)
                except BaseException:
                    Path(temp_name).unlink(missing_ok=True)
                    raise
                return Path(temp_name)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise _Transient(type(exc).__name__) from exc

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff, stretched to a server's Retry-After (within the cap)."""
        wait = tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)(state)
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _Transient) and failure.retry_after is not None:
            wait = min(max(wait, failure.retry_after), self.max_backoff_s)
        return float(wait)


# -- reading --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageUse:
    """One container of one pod template and the image it runs."""

    kind: str
    namespace: str
    name: str
    container: str
    image: str
    init: bool = False


@dataclass(frozen=True)
class ReleaseManifest:
    """A parsed multi-document release file, read through a ``ControllerProfile``.

    ``documents`` are plain dicts as PyYAML returns them; treat them as read-only (a
    patched manifest shares every document but the Deployment with its original).
    """

    source: str  # what the file is, for messages: "kserve v0.14.0 kserve.yaml"
    profile: ControllerProfile
    documents: tuple[dict[str, Any], ...]
    origin: str = ""  # where it was read from (ReleaseFiles.origin), when known

    @classmethod
    def parse(cls, text: str, *, source: str, profile: ControllerProfile, remember: bool = False) -> ReleaseManifest:
        documents: list[dict[str, Any]] = []
        try:
            for index, document in enumerate(yaml_documents(text, remember=remember)):
                if document is None:  # "---" separators with nothing between them
                    continue
                if not isinstance(document, dict):
                    raise ManifestError(
                        f"{source}: document {index + 1} is a {type(document).__name__}; "
                        "expected a Kubernetes object (a mapping)"
                    )
                documents.append(document)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ManifestError(f"{source}{where}: not valid YAML ({problem})") from None
        return cls(source=source, profile=profile, documents=tuple(documents))

    # -- lookups --------------------------------------------------------------------

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object of that kind and name (and namespace, for namespaced objects)."""
        for document in self.of_kind(kind):
            metadata = document.get("metadata") or {}
            if metadata.get("name") == name and (namespace is None or metadata.get("namespace") == namespace):
                return document
        return None

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d.get("kind") in kinds]

    def _require(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name, namespace)
        if found is None:
            wanted = f"{namespace}/{name}" if namespace else name
            present = ", ".join(_qualified_name(d) for d in self.of_kind(kind)) or "none"
            raise ManifestError(
                f"{self.source}: no {kind} {wanted} (profile {self.profile.name}); found {kind}s: {present}"
            )
        return found

    # -- the controller ------------------------------------------------------------

    def deployment(self) -> dict[str, Any]:
        """The controller Deployment the profile names."""
        return self._require("Deployment", self.profile.deployment, self.profile.namespace)

    def _container(self, name: str, role: str) -> dict[str, Any]:
        deployment = self.deployment()
        containers = _pod_spec(deployment).get("containers") or []
        for container in containers:
            if container.get("name") == name:
                return dict(container)
        present = ", ".join(str(c.get("name")) for c in containers) or "none"
        raise ManifestError(
            f"{self.source}: Deployment {_qualified_name(deployment)} has no {role} container "
            f"{name!r} (profile {self.profile.name}); found containers: {present}"
        )

    def proxy_container(self) -> dict[str, Any]:
        return self._container(self.profile.proxy_container, "proxy")

    def manager_container(self) -> dict[str, Any]:
        return self._container(self.profile.manager_container, "manager")

    @property
    def proxy_image(self) -> str:
        image = self.proxy_container().get("image")
        if not image:
            raise ManifestError(f"{self.source}: the proxy container has no image")
        return str(image)

    @property
    def proxy_args(self) -> list[str]:
        return [str(arg) for arg in self.proxy_container().get("args") or []]

    @property
    def proxy_security_context(self) -> dict[str, Any] | None:
        """The proxy container's own securityContext (None when the release sets none)."""
        context = self.proxy_container().get("securityContext")
        return copy.deepcopy(context) if context else None

    @property
    def manager_args(self) -> list[str]:
        return [str(arg) for arg in self.manager_container().get("args") or []]

    def metrics_service(self) -> dict[str, Any]:
        return self._require("Service", self.profile.metrics_service, self.profile.namespace)

    def metrics_service_port(self) -> dict[str, Any]:
        """The metrics Service's port entry whose ``port`` is the profile's metrics port."""
        service = self.metrics_service()
        ports = (service.get("spec") or {}).get("ports") or []
        for port in ports:
            if port.get("port") == self.profile.metrics_port:
                return dict(port)
        present = ", ".join(str(p.get("port")) for p in ports) or "none"
        raise ManifestError(
            f"{self.source}: Service {_qualified_name(service)} has no port "
            f"{self.profile.metrics_port} (profile {self.profile.name}); found ports: {present}"
        )

    def proxy_cluster_role(self) -> dict[str, Any]:
        return self._require("ClusterRole", self.profile.proxy_cluster_role)

    def proxy_cluster_role_rules(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.proxy_cluster_role().get("rules") or [])

    def proxy_cluster_role_binding(self) -> dict[str, Any]:
        return self._require("ClusterRoleBinding", self.profile.proxy_cluster_role_binding)

    # -- everything else ------------------------------------------------------------

    def crds(self) -> list[dict[str, Any]]:
        return self.of_kind("CustomResourceDefinition")

    def webhook_configurations(self) -> list[dict[str, Any]]:
        return self.of_kind("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")

    def image_uses(self) -> list[ImageUse]:
        """Every container and initContainer of every pod template, with its image."""
        uses = []
        for document in self.documents:
            spec = _pod_spec_or_none(document)
            if spec is None:
                continue
            metadata = document.get("metadata") or {}
            for field_name, init in (("initContainers", True), ("containers", False)):
                for container in spec.get(field_name) or []:
                    if container.get("image"):
                        uses.append(
                            ImageUse(
                                kind=str(document.get("kind")),
                                namespace=str(metadata.get("namespace", "")),
                                name=str(metadata.get("name", "")),
                                container=str(container.get("name", "")),
                                image=str(container["image"]),
                                init=init,
                            )
                        )
        return uses

    def images(self) -> list[str]:
        """The distinct images of ``image_uses``, sorted."""
        return sorted({use.image for use in self.image_uses()})


def load_release_manifest(
    release: KServeRelease, files: ReleaseFiles, name: str = "kserve.yaml", *, remember: bool = False
) -> ReleaseManifest:
    """Fetch and parse one file of a KServe release, read through the release's profile
    (``remember``: keep the parse in the cache, see ``yaml_documents``)."""
    ref = kserve_file(release.version, name)
    manifest = ReleaseManifest.parse(files.text(ref), source=ref.label, profile=release.profile, remember=remember)
    return replace(manifest, origin=files.origin(ref) or "")


@dataclass(frozen=True)
class ShippedProxy:
    """The proxy sidecar a release ships, as its controller Deployment states it.

    The matrix's ``proxy_image`` is only the expectation for the release's line; this is
    what the release's own manifest says, and it wins.
    """

    release: str  # the KServe version
    image: str
    args: tuple[str, ...]
    matrix_default: str  # the matrix entry's proxy_image (of the line, for a derived release)
    derived_from: str = ""  # the matrix entry a release not listed in the file took defaults from
    manifest_source: str = ""  # "kserve v0.13.1 kserve.yaml"
    manifest_origin: str = ""  # where that file was read from (ReleaseFiles.origin)

    @property
    def disagrees(self) -> bool:
        return self.image != self.matrix_default

    def notes(self) -> list[str]:
        """Lines for a cell's notes (and the report): what ships, and where defaults came from."""
        lines = [f"KServe {self.release} ships {self.image} with args {' '.join(self.args) or '(none)'}"]
        if self.manifest_origin.startswith(MODULE_ORIGIN_PREFIX):
            # The opt-in source, worth a line in the report: from v0.17 the repository's
            # kserve.yaml is not the release asset (see ModuleFiles).
            lines.append(f"{self.manifest_source} read from the {self.manifest_origin} (--manifests-from-module)")
        if self.derived_from:
            lines.append(
                f"KServe {self.release} is not listed in the matrix file: profile, files and cert-manager "
                f"are the defaults of its line's entry {self.derived_from}"
            )
        if self.disagrees:
            entry = self.derived_from or self.release
            lines.append(
                f"the matrix entry {entry} expects {self.matrix_default}; the release manifest's "
                f"Deployment ships {self.image}, which is what this run used"
            )
        return lines


def shipped_proxy(release: KServeRelease, manifest: ReleaseManifest) -> ShippedProxy:
    """The proxy image and args ``release`` really ships, read from its manifest."""
    return ShippedProxy(
        release=release.version,
        image=manifest.proxy_image,
        args=tuple(manifest.proxy_args),
        matrix_default=release.proxy_image,
        derived_from=release.derived_from,
        manifest_source=manifest.source,
        manifest_origin=manifest.origin,
    )


_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _pod_spec_or_none(document: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = document.get("kind")
    spec = document.get("spec") or {}
    if kind == "Pod":
        return dict(spec)
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in _POD_TEMPLATE_KINDS:
        return None
    pod_spec = (spec.get("template") or {}).get("spec")
    return pod_spec if isinstance(pod_spec, dict) else None


def _pod_spec(document: Mapping[str, Any]) -> dict[str, Any]:
    return _pod_spec_or_none(document) or {}


def _qualified_name(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata") or {}
    name = str(metadata.get("name", "?"))
    return f"{metadata['namespace']}/{name}" if metadata.get("namespace") else name


# -- patching -------------------------------------------------------------------------


def cell_proxy_args(cell: MatrixCell, manifest: ReleaseManifest) -> list[str]:
    """The shipped proxy args with the cell's variant applied (drop, then append)."""
    args = manifest.proxy_args
    variant = cell.variant
    if variant is None:
        return args
    missing = [arg for arg in variant.args_drop if arg not in args]
    if missing:
        raise ManifestError(
            f"variant {variant.name}: drops {' '.join(missing)} but the proxy args in "
            f"{manifest.source} are {' '.join(args) or '(none)'}"
        )
    kept = [arg for arg in args if arg not in variant.args_drop]
    return kept + [arg for arg in variant.args_add if arg not in kept]


def cell_proxy_security_context(cell: MatrixCell, manifest: ReleaseManifest) -> dict[str, Any] | None:
    """The variant's securityContext if it sets one, else the shipped one (maybe None)."""
    if cell.variant is not None and cell.variant.security_context is not None:
        return copy.deepcopy(cell.variant.security_context)
    return manifest.proxy_security_context


def proxy_patch(
    cell: MatrixCell,
    manifest: ReleaseManifest,
    rewrite: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """A strategic merge patch for the controller Deployment that makes its proxy the cell's.

    The patch is absolute: it states the proxy container's image, args and securityContext
    in full (shipped values where the cell's variant changes nothing), so applying cell B
    after cell A on a shared cluster leaves nothing of A behind. ``rewrite`` maps the
    image reference first (registry mirrors). Apply with
    ``AppsV1Api.patch_namespaced_deployment(name, namespace, body)``: the client sends a
    dict body as ``application/strategic-merge-patch+json``.
    """
    image = rewrite(cell.proxy.image) if rewrite else cell.proxy.image
    security_context = cell_proxy_security_context(cell, manifest)
    container: dict[str, Any] = {
        "name": manifest.profile.proxy_container,
        "image": image,
        "args": cell_proxy_args(cell, manifest),
        # "$patch: replace" makes the map exactly this (no fields left from an earlier
        # variant); null deletes it (a release that ships none).
        "securityContext": ({"$patch": "replace", **security_context} if security_context else None),
    }
    return {"spec": {"template": {"spec": {"containers": [container]}}}}


def patched_manifest(
    cell: MatrixCell,
    manifest: ReleaseManifest,
    rewrite: Callable[[str], str] | None = None,
) -> ReleaseManifest:
    """``manifest`` with ``proxy_patch`` applied to its controller Deployment, in memory."""
    original = manifest.deployment()
    patched = apply_strategic_merge(original, proxy_patch(cell, manifest, rewrite))
    documents = tuple(patched if d is original else d for d in manifest.documents)
    return replace(manifest, documents=documents)


def deployment_diff(
    cell: MatrixCell,
    manifest: ReleaseManifest,
    rewrite: Callable[[str], str] | None = None,
) -> str:
    """A unified diff of the controller Deployment, as shipped vs as the cell runs it.

    Empty when the cell runs the release as shipped.
    """
    before = manifest.deployment()
    after = patched_manifest(cell, manifest, rewrite).deployment()
    name = f"Deployment {_qualified_name(before)}"
    return "".join(
        difflib.unified_diff(
            _yaml_lines(before),
            _yaml_lines(after),
            fromfile=f"{manifest.source}: {name} (shipped)",
            tofile=f"{manifest.source}: {name} ({cell.id})",
        )
    )


def _yaml_lines(document: Mapping[str, Any]) -> list[str]:
    # Sorted keys: a map written in another order (a variant's securityContext) is no change.
    text = yaml.safe_dump(dict(document), sort_keys=True, default_flow_style=False)
    return text.splitlines(keepends=True)


# List fields merged element-by-element on a key, as the Kubernetes API declares them
# (patchStrategy "merge"); only those a proxy patch can reach. Other lists are replaced.
_MERGE_KEYS = {"containers": "name", "initContainers": "name"}
_DIRECTIVE = "$patch"


def apply_strategic_merge(original: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the subset of strategic merge patch that ``proxy_patch`` uses, without mutating.

    Maps merge key by key; ``null`` deletes a key; ``$patch: replace`` in a map replaces it
    whole; ``containers`` merge by ``name``; any other list is replaced. Mirrors
    ``k8s.io/apimachinery/pkg/util/strategicpatch`` for those cases.
    """
    if patch.get(_DIRECTIVE) == "replace":
        replaced: dict[str, Any] = _without_directives(patch)
        return replaced
    merged = copy.deepcopy(dict(original))
    for key, value in patch.items():
        if key == _DIRECTIVE:
            continue
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = apply_strategic_merge(merged[key], value)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = _merge_list(merged[key], value, _MERGE_KEYS[key])
        else:
            merged[key] = _without_directives(value)
    return merged


def _merge_list(original: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = list(original)
    for item in patch:
        positions = [
            i for i, old in enumerate(merged) if isinstance(old, Mapping) and old.get(merge_key) == item.get(merge_key)
        ]
        if positions:
            merged[positions[0]] = apply_strategic_merge(merged[positions[0]], item)
        else:
            merged.append(_without_directives(item))
    return merged


def _without_directives(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_directives(v) for k, v in value.items() if k != _DIRECTIVE and v is not None}
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    return value


# The release's ConfigMap that names, among much else, the storage initializer image.
INFERENCESERVICE_CONFIG = "inferenceservice-config"


def serving_images(runtimes: Sequence[dict[str, Any]], documents: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The images the iris samples run on: the sklearn runtime's server and the storage
    initializer (a ``ClusterStorageContainer`` from v0.12 on; the ``storageInitializer`` of
    the release's ``inferenceservice-config`` ConfigMap in ``documents`` for every release)."""
    found: dict[str, None] = {}
    for doc in documents:
        if doc.get("kind") == "ConfigMap" and (doc.get("metadata") or {}).get("name") == INFERENCESERVICE_CONFIG:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                image = json.loads((doc.get("data") or {}).get("storageInitializer") or "{}").get("image")
                if image:
                    found[str(image)] = None
    for doc in runtimes:
        spec = doc.get("spec") or {}
        name = str((doc.get("metadata") or {}).get("name", ""))
        if doc.get("kind") == "ClusterServingRuntime" and "sklearn" in name:
            found.update(dict.fromkeys(str(c["image"]) for c in spec.get("containers") or [] if c.get("image")))
        elif doc.get("kind") == "ClusterStorageContainer" and (spec.get("container") or {}).get("image"):
            found[str(spec["container"]["image"])] = None
    return list(found)
