"""A release file's identity (``kserve v0.14.0 kserve.yaml``): where the projects publish
them, and the key the lock, the offline directory and the cache file it under."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from e2e.errors import UsageError
from e2e.matrix import version_key

# Where each project publishes its release assets: ``<base>/<version>/<file>``.
RELEASE_URLS: Mapping[str, str] = {
    "kserve": "https://github.com/kserve/kserve/releases/download",
    "cert-manager": "https://github.com/cert-manager/cert-manager/releases/download",
}
CERT_MANAGER_CRDS = "cert-manager.crds.yaml"


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
