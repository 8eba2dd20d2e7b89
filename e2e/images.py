"""Container image references: the distribution reference grammar, mirrors, retired registries.

``ImageReference.parse`` follows the grammar of github.com/distribution/reference (the one
Docker, containerd and Kubernetes use): ``[host[:port]/]path[:tag][@digest]``. A reference
keeps the form it was written in (``format()`` gives it back); ``normalized()`` spells out
what a runtime pulls (``nginx`` → ``docker.io/library/nginx:latest``). Knows nothing of HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from e2e.errors import ImageReferenceError, UsageError

DEFAULT_REGISTRY = "docker.io"
# What Docker Hub's registry is also called in references; both normalize to docker.io.
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
DEFAULT_TAG = "latest"
OFFICIAL_NAMESPACE = "library"
MAX_NAME_LENGTH = 255

# Pieces of the grammar, as in distribution/reference's regexp.go.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"

PATH_COMPONENT = re.compile(rf"^{_PATH_COMPONENT}$")
DOMAIN = re.compile(rf"^{_DOMAIN}$")
TAG = re.compile(rf"^{_TAG}$")
# Digest algorithms go-digest knows, with the length of their hex encoding.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


def _digest_ok(digest: str) -> bool:
    algorithm, _, encoded = digest.partition(":")
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    return length is not None and len(encoded) == length and re.fullmatch("[a-f0-9]+", encoded) is not None


def _splits_host(first: str) -> bool:
    """Is the first path component a registry host? (distribution's splitDockerDomain rule)."""
    return "." in first or ":" in first or first == "localhost" or first.lower() != first


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference, kept in the form it was written.

    ``registry`` is None when the reference names no host (Docker Hub is implied);
    ``path`` is the repository path as written (``nginx``, not ``library/nginx``).
    """

    registry: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        def bad(expected: str) -> ImageReferenceError:
            return ImageReferenceError(f"image reference {text!r}: {expected}")

        if not isinstance(text, str) or not text:
            raise bad("expected [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST], got an empty value")
        if text != text.strip() or any(ch.isspace() for ch in text):
            raise bad("contains whitespace")
        remainder, at, digest = text.partition("@")
        if at and not _digest_ok(digest):
            raise bad("digest must be sha256: followed by 64 lowercase hex digits")
        name, tag = remainder, None
        # A tag follows the last ':' only if no '/' comes after it (else it is a port).
        colon = remainder.rfind(":")
        if colon != -1 and "/" not in remainder[colon + 1 :]:
            name, tag = remainder[:colon], remainder[colon + 1 :]
            if not TAG.match(tag):
                raise bad("tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")
        if not name:
            raise bad("expected a repository name before the tag or digest")
        first, slash, rest = name.partition("/")
        registry: str | None = None
        path = name
        if slash and _splits_host(first):
            registry, path = first, rest
            if not DOMAIN.match(registry):
                raise bad(f"registry host {registry!r} is not a valid host[:port]")
        components = path.split("/")
        for component in components:
            if PATH_COMPONENT.match(component):
                continue
            if PATH_COMPONENT.match(component.lower()):
                raise bad("repository name must be lowercase")
            raise bad(
                f"path component {component!r} must be lowercase letters and digits joined by '.', '_', '__' or '-'"
            )
        if len(name) > MAX_NAME_LENGTH:
            raise bad(f"repository name longer than {MAX_NAME_LENGTH} characters")
        return cls(registry=registry, path=path, tag=tag, digest=digest if at else None)

    @classmethod
    def parse_or_none(cls, text: str) -> ImageReference | None:
        """``parse(text)``, or None where ``text`` is no reference (a bare image ID, an empty field)."""
        try:
            return cls.parse(text)
        except ImageReferenceError:
            return None

    @property
    def written_name(self) -> str:
        """The repository as written, without tag or digest (``nginx``, ``quay.io/brancz/kube-rbac-proxy``)."""
        return f"{self.registry}/{self.path}" if self.registry is not None else self.path

    @property
    def domain(self) -> str:
        """The registry a runtime pulls from (``docker.io`` when none is written)."""
        if self.registry is None or self.registry == LEGACY_DEFAULT_REGISTRY:
            return DEFAULT_REGISTRY
        return self.registry

    @property
    def repository(self) -> str:
        """The repository path on that registry (``library/nginx`` for ``nginx``)."""
        if self.domain == DEFAULT_REGISTRY and "/" not in self.path:
            return f"{OFFICIAL_NAMESPACE}/{self.path}"
        return self.path

    @property
    def name(self) -> str:
        """Fully qualified repository name: ``docker.io/library/nginx``."""
        return f"{self.domain}/{self.repository}"

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/`` in the registry API: the digest wins over the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def pinned_by_digest(self) -> bool:
        return self.digest is not None

    @property
    def unpinned(self) -> bool:
        """No digest, and a tag that moves: none (means ``latest``) or ``latest`` itself."""
        return self.digest is None and self.tag in (None, DEFAULT_TAG)

    def format(self) -> str:
        """The reference in the form it was written."""
        text = self.written_name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def normalized(self) -> ImageReference:
        """Every default spelled out: ``docker.io/library/nginx:latest``.

        A digest-only reference gets no tag: a runtime pulls it by digest alone.
        """
        tag = self.tag if self.tag is not None or self.digest is not None else DEFAULT_TAG
        return ImageReference(registry=self.domain, path=self.repository, tag=tag, digest=self.digest)

    def with_name(self, name: str) -> ImageReference:
        """The same tag and digest under another repository name (``host/path``)."""
        moved = ImageReference.parse(name)
        return replace(moved, tag=self.tag, digest=self.digest)

    def __str__(self) -> str:
        return self.format()


def _has_prefix(name: str, prefix: str) -> bool:
    """``prefix`` is ``name`` or a leading run of whole path components of it."""
    return name == prefix or name.startswith(prefix + "/")


def _parse_location(text: str, option: str) -> str:
    """A ``host[:port][/path]`` prefix, normalized (``index.docker.io`` → ``docker.io``)."""
    host, slash, path = text.partition("/")
    if not DOMAIN.match(host) or (slash and not all(PATH_COMPONENT.match(c) for c in path.split("/"))):
        raise UsageError(
            f"{option} {text!r}: expected a registry host with an optional lowercase path, e.g. gcr.io/kubebuilder"
        )
    if host == LEGACY_DEFAULT_REGISTRY:
        host = DEFAULT_REGISTRY
    return f"{host}/{path}" if path else host


def _parse_endpoint(source: str, url: str, text: str, option: str) -> str:
    """The base URL of a ``HOST=URL`` rule: http(s), a host and an optional port, no path
    (containerd asks ``URL/v2/<the image's own path>``)."""
    scheme, _, rest = url.partition("://")
    if "/" in source or scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/") \
            or not DOMAIN.match(rest.rstrip("/")):  # fmt: skip
        raise UsageError(
            f"{option} {text!r}: expected HOST=URL with a registry host and an http(s) URL without a path, "
            "e.g. quay.io=http://10.0.0.5:5000"
        )
    return f"{scheme}://{rest.rstrip('/')}"


@dataclass(frozen=True)
class RegistryMirrors:
    """``--registry-mirror`` rules, of two kinds:

    - ``SRC=DST`` (``gcr.io/kubebuilder=registry.example:5000/kubebuilder``): pull ``SRC/...``
      from ``DST/...`` instead, the reference rewritten. The longest ``SRC`` that matches whole
      path components of the normalized name wins; tag and digest are kept.
    - ``HOST=URL`` (``quay.io=http://10.0.0.5:5000``): a registry mirror in containerd's sense,
      the reference unchanged: the kind nodes' containerd pulls ``HOST``'s images from ``URL``
      under the same path (``certs.d/HOST/hosts.toml``), and the probe asks ``URL`` too. What
      an air-gapped site runs; ``kserve-compat images push --to`` seeds it.
    """

    rules: tuple[tuple[str, str], ...] = ()
    endpoints: tuple[tuple[str, str], ...] = ()  # (registry host, base URL): HOST=URL rules

    @classmethod
    def from_options(cls, options: Iterable[str], option: str = "--registry-mirror") -> RegistryMirrors:
        rules: dict[str, str] = {}
        endpoints: dict[str, str] = {}
        for text in options:
            source, equals, target = text.partition("=")
            if not equals or not source or not target:
                raise UsageError(
                    f"{option} {text!r}: expected SRC=DST, e.g. gcr.io/kubebuilder=registry.example:5000/kubebuilder, "
                    "or HOST=URL, e.g. quay.io=http://10.0.0.5:5000"
                )
            source = _parse_location(source, option)
            if source in rules or source in endpoints:
                raise UsageError(f"{option} {text!r}: {source} is already mirrored to "
                                 f"{rules.get(source) or endpoints[source]}")  # fmt: skip
            if "://" in target:
                endpoints[source] = _parse_endpoint(source, target, text, option)
            else:
                rules[source] = _parse_location(target, option)
        return cls(
            tuple(sorted(rules.items(), key=lambda rule: len(rule[0]), reverse=True)), tuple(sorted(endpoints.items()))
        )

    def mirror_for(self, ref: ImageReference) -> tuple[str, str] | None:
        name = ref.name
        for source, target in self.rules:  # longest first
            if _has_prefix(name, source):
                return source, target
        return None

    def rewrite_reference(self, ref: ImageReference) -> ImageReference:
        rule = self.mirror_for(ref)
        if rule is None:
            return ref
        source, target = rule
        return ref.with_name(target + ref.name[len(source) :])

    def rewrite(self, ref: str) -> str:
        """``ref`` as pulled through the mirrors; unchanged when no rule matches."""
        parsed = ImageReference.parse(ref)
        rewritten = self.rewrite_reference(parsed)
        return ref if rewritten is parsed else rewritten.format()

    def __bool__(self) -> bool:
        return bool(self.rules or self.endpoints)


@dataclass(frozen=True)
class Replacement:
    """Where images of a retired registry live now."""

    prefix: str
    status: str  # "frozen": a copy of the old tags, never updated; "maintained": new tags land here
    # Repositories (the path below the retired prefix) this replacement holds; empty = all.
    repositories: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetiredRegistry:
    prefix: str
    retired: str  # what happened and when, for the report
    replacements: tuple[Replacement, ...]


RETIRED_REGISTRIES: tuple[RetiredRegistry, ...] = (
    RetiredRegistry(
        prefix="gcr.io/kubebuilder",
        retired="deletion announced for 2025-03-18; pulls fail since about 2026-03-06 (NotFound)",
        replacements=(
            Replacement("registry.k8s.io/kubebuilder", "frozen"),
            Replacement("quay.io/brancz", "maintained", repositories=("kube-rbac-proxy",)),
        ),
    ),
    RetiredRegistry(
        prefix="k8s.gcr.io",
        retired="frozen in April 2023 and redirected; being shut down",
        replacements=(Replacement("registry.k8s.io", "maintained"),),
    ),
    # k8s.gcr.io was an alias of this project, spelled both ways.
    RetiredRegistry(
        prefix="gcr.io/google-containers",
        retired="frozen in April 2023 with k8s.gcr.io; being shut down",
        replacements=(Replacement("registry.k8s.io", "maintained"),),
    ),
    RetiredRegistry(
        prefix="gcr.io/google_containers",
        retired="frozen in April 2023 with k8s.gcr.io; being shut down",
        replacements=(Replacement("registry.k8s.io", "maintained"),),
    ),
)


@dataclass(frozen=True)
class Retirement:
    """An image on a retired registry, and the references that replace it."""

    registry: RetiredRegistry
    replacements: tuple[tuple[str, str], ...]  # (reference, status)

    def describe(self) -> str:
        options = " or ".join(f"{ref} ({status})" for ref, status in self.replacements)
        return f"{self.registry.prefix} {self.registry.retired}; use {options}"


def retirement(ref: ImageReference | str) -> Retirement | None:
    """The retired registry ``ref`` lives on and its replacements, or None."""
    parsed = ImageReference.parse(ref) if isinstance(ref, str) else ref
    name = parsed.name
    for retired in sorted(RETIRED_REGISTRIES, key=lambda r: len(r.prefix), reverse=True):
        if not _has_prefix(name, retired.prefix):
            continue
        below = name[len(retired.prefix) + 1 :]
        moved = tuple(
            (parsed.with_name(f"{option.prefix}/{below}" if below else option.prefix).format(), option.status)
            for option in retired.replacements
            if not option.repositories or below in option.repositories
        )
        return Retirement(retired, moved)
    return None


def is_retired(ref: ImageReference | str) -> bool:
    """Whether ``ref`` lives on a retired registry; an unparsable reference is not."""
    parsed = ImageReference.parse_or_none(ref) if isinstance(ref, str) else ref
    return parsed is not None and retirement(parsed) is not None


def replacement(ref: ImageReference | str) -> str | None:
    """The first (preferred) replacement of an image on a retired registry, or None."""
    found = retirement(ref)
    return found.replacements[0][0] if found and found.replacements else None
