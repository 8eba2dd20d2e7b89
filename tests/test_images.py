"""Image reference grammar, mirrors and retired registries."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2e.errors import ImageReferenceError, UsageError
from e2e.images import (
    RETIRED_REGISTRIES,
    ImageReference,
    RegistryMirrors,
    replacement,
    retirement,
)

SHA = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "path", "tag", "digest", "normalized"),
    [
        ("nginx", None, "nginx", None, None, "docker.io/library/nginx:latest"),
        ("nginx:1.25", None, "nginx", "1.25", None, "docker.io/library/nginx:1.25"),
        ("kserve/kserve-controller:v0.10.1", None, "kserve/kserve-controller", "v0.10.1", None,
         "docker.io/kserve/kserve-controller:v0.10.1"),
        ("docker.io/nginx", "docker.io", "nginx", None, None, "docker.io/library/nginx:latest"),
        ("index.docker.io/library/nginx:1", "index.docker.io", "library/nginx", "1", None,
         "docker.io/library/nginx:1"),
        ("localhost/foo", "localhost", "foo", None, None, "localhost/foo:latest"),
        ("localhost:5000/foo/bar:v1", "localhost:5000", "foo/bar", "v1", None, "localhost:5000/foo/bar:v1"),
        ("127.0.0.1:5000/a", "127.0.0.1:5000", "a", None, None, "127.0.0.1:5000/a:latest"),
        ("[::1]:5000/a:b", "[::1]:5000", "a", "b", None, "[::1]:5000/a:b"),
        ("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1", "gcr.io", "kubebuilder/kube-rbac-proxy", "v0.13.1",
         None, "gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1"),
        (f"quay.io/brancz/kube-rbac-proxy@{SHA}", "quay.io", "brancz/kube-rbac-proxy", None, SHA,
         f"quay.io/brancz/kube-rbac-proxy@{SHA}"),
        (f"quay.io/brancz/kube-rbac-proxy:v0.18.0@{SHA}", "quay.io", "brancz/kube-rbac-proxy", "v0.18.0", SHA,
         f"quay.io/brancz/kube-rbac-proxy:v0.18.0@{SHA}"),
        ("a/b/c/d_e__f.g-h---i", None, "a/b/c/d_e__f.g-h---i", None, None,
         "docker.io/a/b/c/d_e__f.g-h---i:latest"),
        ("Registry.Example/a", "Registry.Example", "a", None, None, "Registry.Example/a:latest"),
    ],
)
def test_parse(text: str, registry: str | None, path: str, tag: str | None, digest: str | None,
               normalized: str) -> None:
    ref = ImageReference.parse(text)
    assert (ref.registry, ref.path, ref.tag, ref.digest) == (registry, path, tag, digest)
    assert ref.format() == text
    assert ref.normalized().format() == normalized


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("Nginx", "lowercase"),
        ("foo/Bar", "lowercase"),
        ("nginx:", "tag"),
        ("nginx:-x", "tag"),
        ("nginx:" + "a" * 129, "tag"),
        ("nginx@sha256:abc", "digest"),
        ("nginx@md5:" + "a" * 32, "digest"),
        ("nginx@sha256:" + "A" * 64, "digest"),
        ("a//b", "path component"),
        ("-a/b", "path component"),
        ("a/b_", "path component"),
        ("a:b:c", "path component"),
        ("gcr.io/", "path component"),
        ("-bad.host/a", "registry host"),
        (" nginx", "whitespace"),
        ("a/" + "b" * 260, "longer than 255"),
    ],
)
def test_parse_rejects(text: str, expected: str) -> None:
    with pytest.raises(ImageReferenceError) as caught:
        ImageReference.parse(text)
    message = str(caught.value)
    assert expected in message
    assert repr(text) in message
    assert "\n" not in message
    assert isinstance(caught.value, UsageError)


def test_pinning() -> None:
    assert ImageReference.parse("nginx").unpinned
    assert ImageReference.parse("nginx:latest").unpinned
    assert not ImageReference.parse("nginx:1.25").unpinned
    assert ImageReference.parse(f"nginx:latest@{SHA}").pinned_by_digest
    assert not ImageReference.parse(f"nginx:latest@{SHA}").unpinned
    assert ImageReference.parse(f"nginx:v1@{SHA}").manifest_reference == SHA
    assert ImageReference.parse("nginx").manifest_reference == "latest"


# -- mirrors ------------------------------------------------------------------------------------


def test_mirror_longest_prefix_on_component_boundaries() -> None:
    mirrors = RegistryMirrors.from_options(
        [
            "gcr.io=mirror.example/gcr",
            "gcr.io/kubebuilder=registry.example:5000/kubebuilder",
            "docker.io=hub.example",
        ]
    )
    assert (
        mirrors.rewrite("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1")
        == "registry.example:5000/kubebuilder/kube-rbac-proxy:v0.13.1"
    )
    # "gcr.io/kubebuilderx" is not below "gcr.io/kubebuilder": the shorter rule applies.
    assert mirrors.rewrite("gcr.io/kubebuilderx/a:v1") == "mirror.example/gcr/kubebuilderx/a:v1"
    assert mirrors.rewrite("nginx") == "hub.example/library/nginx"
    assert mirrors.rewrite(f"quay.io/brancz/kube-rbac-proxy@{SHA}") == f"quay.io/brancz/kube-rbac-proxy@{SHA}"
    assert mirrors.rewrite("index.docker.io/kserve/x:v1") == "hub.example/kserve/x:v1"


def test_mirror_of_a_whole_repository() -> None:
    mirrors = RegistryMirrors.from_options(
        ["quay.io/brancz/kube-rbac-proxy=127.0.0.1:5000/proxy", "index.docker.io=hub.example"]
    )
    assert mirrors.rewrite("quay.io/brancz/kube-rbac-proxy:v0.18.0") == "127.0.0.1:5000/proxy:v0.18.0"
    assert mirrors.rewrite("quay.io/brancz/kube-rbac-proxy-x:v1") == "quay.io/brancz/kube-rbac-proxy-x:v1"
    assert mirrors.rewrite("nginx:1") == "hub.example/library/nginx:1"


@pytest.mark.parametrize(
    "option",
    ["gcr.io", "=x.io", "gcr.io=", "gcr.io/Kube=x.io", "gcr.io=x.io/", "gcr io=x.io", "a.io=b.io=c.io"],
)
def test_malformed_mirror_is_a_usage_error(option: str) -> None:
    with pytest.raises(UsageError) as caught:
        RegistryMirrors.from_options([option])
    assert "--registry-mirror" in str(caught.value)
    assert repr(option) in str(caught.value) or "expected" in str(caught.value)


def test_host_url_rules_are_node_mirrors_not_rewrites() -> None:
    mirrors = RegistryMirrors.from_options(
        ["quay.io=http://10.0.0.5:5000", "index.docker.io=https://hub.example/", "gcr.io/kubebuilder=k8s.example/kb"]
    )
    assert mirrors.endpoints == (("docker.io", "https://hub.example"), ("quay.io", "http://10.0.0.5:5000"))
    assert mirrors.rules == (("gcr.io/kubebuilder", "k8s.example/kb"),)
    assert mirrors.rewrite("quay.io/brancz/kube-rbac-proxy:v0.22.1") == "quay.io/brancz/kube-rbac-proxy:v0.22.1"
    assert mirrors.rewrite("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1") == "k8s.example/kb/kube-rbac-proxy:v0.13.1"
    assert RegistryMirrors.from_options(["quay.io=http://10.0.0.5:5000"])  # a rule, so truthy


@pytest.mark.parametrize(
    "option",
    ["quay.io/brancz=http://10.0.0.5:5000", "quay.io=ftp://10.0.0.5", "quay.io=http://10.0.0.5:5000/path",
     "quay.io=http://", "quay.io=http://bad host"],
)  # fmt: skip
def test_malformed_host_url_rule_is_one_line_naming_it(option: str) -> None:
    with pytest.raises(UsageError) as caught:
        RegistryMirrors.from_options([option])
    assert str(caught.value) == (
        f"--registry-mirror {option!r}: expected HOST=URL with a registry host and an http(s) URL without a path, "
        "e.g. quay.io=http://10.0.0.5:5000"
    )


def test_duplicate_mirror_source_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="already mirrored"):
        RegistryMirrors.from_options(["gcr.io=a.io", "gcr.io=b.io"])


# -- retired registries -------------------------------------------------------------------------


def test_kube_rbac_proxy_on_gcr_has_a_frozen_and_a_maintained_replacement() -> None:
    found = retirement("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1")
    assert found is not None
    assert found.replacements == (
        ("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1", "frozen"),
        ("quay.io/brancz/kube-rbac-proxy:v0.13.1", "maintained"),
    )
    assert "pulls fail since about 2026-03-06" in found.describe()
    assert replacement("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1") == (
        "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1"
    )


def test_other_kubebuilder_images_only_have_the_frozen_copy() -> None:
    found = retirement("gcr.io/kubebuilder/thanos:v1")
    assert found is not None
    assert found.replacements == (("registry.k8s.io/kubebuilder/thanos:v1", "frozen"),)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("k8s.gcr.io/pause:3.1", "registry.k8s.io/pause:3.1"),
        ("gcr.io/google-containers/pause:3.1", "registry.k8s.io/pause:3.1"),
        ("gcr.io/google_containers/busybox", "registry.k8s.io/busybox"),
        (f"k8s.gcr.io/sig-storage/csi-attacher@{SHA}", f"registry.k8s.io/sig-storage/csi-attacher@{SHA}"),
    ],
)
def test_google_registries(image: str, expected: str) -> None:
    assert replacement(image) == expected


@pytest.mark.parametrize(
    "image",
    [
        "quay.io/brancz/kube-rbac-proxy:v0.18.0",
        "registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1",
        "gcr.io/kubebuilderx/a:v1",
        "gcr.io/other/a:v1",
        "kubebuilder/kube-rbac-proxy:v1",
    ],
)
def test_not_retired(image: str) -> None:
    assert retirement(image) is None
    assert replacement(image) is None


def test_every_retired_prefix_is_a_valid_name() -> None:
    for retired in RETIRED_REGISTRIES:
        assert ImageReference.parse(f"{retired.prefix}/x").name.startswith(retired.prefix)
        for option in retired.replacements:
            ImageReference.parse(f"{option.prefix}/x")


# -- properties ---------------------------------------------------------------------------------

alphanumeric = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--"])
path_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    alphanumeric,
    st.lists(st.tuples(separator, alphanumeric), max_size=2),
)
# Built from alphabets rather than st.from_regex: generating from a regex and discarding
# what does not match was slow enough to trip Hypothesis's "input generation is slow" check
# on a busy machine. Same languages as the regexes in the comments.
_alnum = string.ascii_letters + string.digits
# [a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?
domain_component = st.one_of(
    st.text(_alnum, min_size=1, max_size=1),
    st.builds(lambda first, middle, last: first + middle + last,
              st.text(_alnum, min_size=1, max_size=1), st.text(_alnum + "-", max_size=6),
              st.text(_alnum, min_size=1, max_size=1)),
)
host = st.one_of(
    st.just("localhost"),
    st.builds(lambda parts: ".".join(parts), st.lists(domain_component, min_size=2, max_size=3)),
    st.builds(lambda parts, port: ".".join(parts) + f":{port}",
              st.lists(domain_component, min_size=1, max_size=3), st.integers(1, 65535)),
)
# [\w][\w.-]{0,20}, ASCII only
_word = _alnum + "_"
tag = st.builds(lambda first, rest: first + rest,
                st.text(_word, min_size=1, max_size=1), st.text(_word + ".-", max_size=20))
digest = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}")


@st.composite
def references(draw: st.DrawFn) -> str:
    components = draw(st.lists(path_component, min_size=1, max_size=3))
    if draw(st.booleans()):
        components.insert(0, draw(host))
    elif len(components) > 1:
        # Without a host, a first component with a '.' (or "localhost") would be read as one.
        components[0] = components[0].replace(".", "-").replace("localhost", "local-host")
    text = "/".join(components)
    if draw(st.booleans()):
        text += f":{draw(tag)}"
    if draw(st.booleans()):
        text += f"@{draw(digest)}"
    return text


@given(references())
def test_parse_format_round_trip(text: str) -> None:
    ref = ImageReference.parse(text)
    assert ref.format() == text
    assert ImageReference.parse(ref.format()) == ref


@given(references())
def test_normalized_is_idempotent_and_fully_qualified(text: str) -> None:
    once = ImageReference.parse(text).normalized()
    assert once.normalized() == once
    assert ImageReference.parse(once.format()) == once
    assert once.registry is not None
    assert once.tag is not None or once.digest is not None


@given(references(), host, st.lists(path_component, max_size=2))
def test_rewrite_keeps_tag_and_digest(text: str, mirror_host: str, mirror_path: list[str]) -> None:
    ref = ImageReference.parse(text)
    target = "/".join([mirror_host, *mirror_path])
    mirrors = RegistryMirrors.from_options([f"{ref.domain}={target}"])
    rewritten = ImageReference.parse(mirrors.rewrite(text))
    assert (rewritten.tag, rewritten.digest) == (ref.tag, ref.digest)
    assert rewritten.name == f"{target}/{ref.repository}"


@pytest.mark.parametrize(
    ("image", "retired"),
    [
        ("gcr.io/kubebuilder/kube-rbac-proxy:v0.13.1", True),
        ("gcr.io/kubebuilder/anything-else:v1", True),  # the whole retired path, not one repository
        ("registry.k8s.io/kubebuilder/kube-rbac-proxy:v0.13.1", False),  # its frozen copy
        ("quay.io/brancz/kube-rbac-proxy:v0.22.1", False),
        ("not a reference", False),
    ],
)
def test_retirement_has_one_owner_that_every_part_asks(image: str, retired: bool) -> None:
    from e2e.images import is_retired

    assert is_retired(image) is retired
