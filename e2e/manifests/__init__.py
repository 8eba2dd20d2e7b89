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

One module per part: ``files`` (fetching), ``lock`` (pinning), ``release`` (reading),
``patch`` (patching), and ``yaml_text`` (the YAML reader they share). This face names what
the rest of the harness uses. Knows nothing of clusters: applying the patch is the caller's
business.
"""

from __future__ import annotations

from e2e.manifests.files import (
    ENV_MANIFEST_DIR,
    ENV_MANIFESTS_FROM_MODULE,
    DownloadFailed,
    ModuleFiles,
    NotInModule,
    ReleaseFiles,
    manifests_from_module_requested,
)
from e2e.manifests.lock import DEFAULT_LOCK_FILE, ManifestLock, sha256_hex
from e2e.manifests.patch import apply_strategic_merge, cell_proxy_args, deployment_diff, patched_manifest, proxy_patch
from e2e.manifests.release import (
    ReleaseManifest,
    container_images,
    load_release_manifest,
    pod_spec,
    pod_template_labels,
    serving_images,
    shipped_proxy,
)
from e2e.manifests.release_file import ReleaseFile, cert_manager_crds_file, kserve_file
from e2e.manifests.yaml_text import (
    PARSED_CACHE_MIN_BYTES,
    YAML_LOADER,
    load_yaml_documents,
    parsed_cache_dir,
    yaml_documents,
)

__all__ = [
    "DEFAULT_LOCK_FILE",
    "ENV_MANIFESTS_FROM_MODULE",
    "ENV_MANIFEST_DIR",
    "PARSED_CACHE_MIN_BYTES",
    "YAML_LOADER",
    "DownloadFailed",
    "ManifestLock",
    "ModuleFiles",
    "NotInModule",
    "ReleaseFile",
    "ReleaseFiles",
    "ReleaseManifest",
    "apply_strategic_merge",
    "cell_proxy_args",
    "cert_manager_crds_file",
    "container_images",
    "deployment_diff",
    "kserve_file",
    "load_release_manifest",
    "load_yaml_documents",
    "manifests_from_module_requested",
    "parsed_cache_dir",
    "patched_manifest",
    "pod_spec",
    "pod_template_labels",
    "proxy_patch",
    "serving_images",
    "sha256_hex",
    "shipped_proxy",
    "yaml_documents",
]
