"""Fetching (``ReleaseFiles``): a release file from the offline directory, the cache, a
download, or (opt-in) the release's Go module; ``origin`` says where each came from."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import requests
import tenacity

from e2e import binaries
from e2e.cache import cache_root
from e2e.errors import (
    EnvironmentMissing,
    HarnessError,
    ManifestError,
    NotInOfflineDirectory,
    UsageError,
)
from e2e.http_retry import retry_after_seconds
from e2e.manifests.lock import ManifestLock, sha256_hex
from e2e.manifests.release_file import RELEASE_URLS, ReleaseFile, cert_manager_crds_file, kserve_file

log = logging.getLogger(__name__)


ENV_MANIFEST_DIR = "KSERVE_COMPAT_MANIFEST_DIR"
ENV_RELEASE_URL = "KSERVE_COMPAT_RELEASE_URL"
ENV_CERT_MANAGER_URL = "KSERVE_COMPAT_CERT_MANAGER_URL"
ENV_MANIFESTS_FROM_MODULE = "KSERVE_COMPAT_MANIFESTS_FROM_MODULE"
# The project whose release files its Go module carries (cert-manager's module holds a
# chart, not its release manifests).
MODULE_PROJECT = "kserve"
MODULE_ORIGIN_PREFIX = "Go module "  # how ReleaseFiles.origin names a file read from a module


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
