"""Which Services of a release publish a controller's metrics, read from its manifest."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.release_files import SessionReleaseFiles

from e2e.checks.metrics_services import check_name
from e2e.manifests import ReleaseManifest
from e2e.manifests.metrics_services import metrics_services
from e2e.matrix import load_matrix


def documents(version: str, release_files: SessionReleaseFiles) -> tuple[dict[str, Any], ...]:
    release = load_matrix().release(version)
    return ReleaseManifest.parse(release_files.kserve(version), source=version, profile=release.profile).documents


def test_kserve_s_controller_publishes_its_proxy_through_two_services(release_files: SessionReleaseFiles) -> None:
    found = metrics_services(documents("v0.14.0", release_files))
    assert [(m.service, m.port, m.container, m.listen, m.behind_proxy) for m in found] == [
        ("kserve-controller-manager-metrics-service", 8443, "kube-rbac-proxy", "0.0.0.0:8443", True),
        ("kserve-controller-manager-service", 8443, "kube-rbac-proxy", "0.0.0.0:8443", True),
    ]
    assert not any(m.loopback_only for m in found)


def test_v0_16_adds_the_llmisvc_service_in_front_of_a_loopback_listener(release_files: SessionReleaseFiles) -> None:
    (llmisvc,) = [m for m in metrics_services(documents("v0.16.0", release_files)) if not m.behind_proxy]
    assert (llmisvc.service, llmisvc.deployment, llmisvc.container) == (
        "llmisvc-controller-manager-service",
        "llmisvc-controller-manager",
        "manager",
    )
    assert (llmisvc.flag, llmisvc.listen, llmisvc.loopback_only) == ("--metrics-addr", "127.0.0.1:8443", True)


def deployment(args: list[str], ports: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, Any]:
    container = {"name": "manager", "image": "x", "args": args, "ports": ports}
    return {
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "n"},
        "spec": {"template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}},
    }


def service(selector: dict[str, str], port: int, target: object = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"port": port}
    if target is not None:
        entry["targetPort"] = target
    return {
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "n"},
        "spec": {"selector": selector, "ports": [entry]},
    }


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:9090", True),
        ("localhost:9090", True),
        ("[::1]:9090", True),
        (":9090", False),
        ("0.0.0.0:9090", False),
    ],
)
def test_a_numbered_target_port_and_the_listener_s_host(listen: str, loopback: bool) -> None:
    (found,) = metrics_services(
        [deployment([f"--metrics-bind-address={listen}"], [], {"a": "b"}), service({"a": "b"}, 9090)]
    )
    assert found.loopback_only is loopback


def test_a_named_target_port_is_resolved_through_the_container_s_ports() -> None:
    docs = [
        deployment(["--metrics-addr=127.0.0.1:8443"], [{"name": "metrics", "containerPort": 8443}], {"a": "b"}),
        service({"a": "b"}, 443, "metrics"),
    ]
    (found,) = metrics_services(docs)
    assert (found.port, found.listen) == (443, "127.0.0.1:8443")


@pytest.mark.parametrize(
    "docs",
    [
        [deployment(["--metrics-addr=127.0.0.1:8443"], [], {"a": "b"}), service({}, 8443)],  # no selector
        [deployment(["--metrics-addr=127.0.0.1:8443"], [], {"a": "other"}), service({"a": "b"}, 8443)],  # no match
        [deployment(["--metrics-addr=127.0.0.1:8080"], [], {"a": "b"}), service({"a": "b"}, 8443)],  # other port
        [deployment(["--health-probe-addr=:8443"], [], {"a": "b"}), service({"a": "b"}, 8443)],  # not metrics
    ],
    ids=["no-selector", "selects-nothing", "another-port", "not-a-metrics-flag"],
)
def test_a_service_that_reaches_no_metrics_listener_is_not_listed(docs: list[dict[str, Any]]) -> None:
    assert metrics_services(docs) == []


def test_no_namespace_on_either_side_is_one_namespace_and_two_word_flags_are_read() -> None:
    docs = [deployment(["--metrics-addr", "127.0.0.1:8443"], [], {"a": "b"}), service({"a": "b"}, 8443)]
    for document in docs:
        del document["metadata"]["namespace"]
    (found,) = metrics_services(docs)
    assert (found.namespace, found.flag, found.listen) == ("", "--metrics-addr", "127.0.0.1:8443")


def test_a_service_with_two_metrics_ports_names_each_check_by_its_port() -> None:
    two = deployment(["--metrics-addr=127.0.0.1:8443", "--secure-listen-address=0.0.0.0:9443"], [], {"a": "b"})
    svc = service({"a": "b"}, 8443)
    svc["spec"]["ports"].append({"port": 9443})
    found = metrics_services([two, svc])
    assert [check_name(m) for m in found] == ["metrics-via-s-8443", "metrics-via-s-9443"]
    assert [check_name(m) for m in metrics_services([two, service({"a": "b"}, 8443)])] == ["metrics-via-s"]
