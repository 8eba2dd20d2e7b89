"""The pure parts of ``e2e.kserve`` against the real release manifests (``tests/helpers/release_files.py``).

For every mirrored release: its ``inferenceservice-config`` ConfigMap switched to raw
deployment mode, its admission webhooks found; and the predictor Service read from an
InferenceService's status in the shapes the releases report.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from helpers.release_files import MIRRORED_KSERVE_VERSIONS

from e2e.kserve import (
    SAMPLES_NAMESPACE,
    InferenceServiceNotReady,
    admission_webhooks,
    deployment_mode,
    predictor_service,
    raw_deployment_config,
)
from e2e.manifests import ReleaseFiles, ReleaseManifest, kserve_file
from e2e.matrix import Matrix, load_matrix, version_key

FIXTURE_VERSIONS = list(MIRRORED_KSERVE_VERSIONS)


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return load_matrix()


@pytest.fixture(scope="module")
def manifest_of(matrix: Matrix, release_files: ReleaseFiles) -> Callable[[str], ReleaseManifest]:
    """Parse each release's kserve.yaml at most once for the whole module."""
    files = release_files
    parsed: dict[str, ReleaseManifest] = {}

    def get(version: str) -> ReleaseManifest:
        if version not in parsed:
            ref = kserve_file(version)
            parsed[version] = ReleaseManifest.parse(
                files.text(ref), source=ref.label, profile=matrix.release(version).profile
            )
        return parsed[version]

    return get


def config_data(manifest: ReleaseManifest) -> dict[str, str]:
    profile = manifest.profile
    config_map = manifest.find("ConfigMap", profile.config_map, profile.namespace)
    assert config_map is not None, f"{manifest.source}: no {profile.namespace}/{profile.config_map}"
    return dict(config_map["data"])


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def test_the_fixtures_hold_releases_the_matrix_knows(matrix: Matrix) -> None:
    assert len(FIXTURE_VERSIONS) >= 8
    for version in FIXTURE_VERSIONS:
        matrix.release(version)  # raises for an unknown one


def test_deployment_mode_is_renamed_in_v0_20(matrix: Matrix) -> None:
    for release in matrix.releases:
        expected = "Standard" if version_key(release.version) >= version_key("v0.20.0") else "RawDeployment"
        assert deployment_mode(release) == expected, release.version
    assert deployment_mode(matrix.release("v0.19.0")) == "RawDeployment"
    assert deployment_mode(matrix.release("v0.20.0")) == "Standard"


@pytest.mark.parametrize("version", FIXTURE_VERSIONS)
def test_raw_deployment_config_of_the_real_config_map(
    matrix: Matrix, manifest_of: Callable[[str], ReleaseManifest], version: str
) -> None:
    release = matrix.release(version)
    data = config_data(manifest_of(version))
    original = copy.deepcopy(data)
    assert json.loads(data["deploy"])["defaultDeploymentMode"] == "Serverless"  # what ships

    changed = raw_deployment_config(release, data)

    assert data == original  # the input is not modified
    assert set(changed) == set(original)
    deploy = json.loads(changed["deploy"])
    expected_mode = "Standard" if version == "v0.20.0" else "RawDeployment"
    assert deploy["defaultDeploymentMode"] == expected_mode
    assert {k: v for k, v in deploy.items() if k != "defaultDeploymentMode"} == {
        k: v for k, v in json.loads(original["deploy"]).items() if k != "defaultDeploymentMode"
    }

    ingress_before = json.loads(original["ingress"])
    if version_key(version) >= version_key("v0.12.0"):
        ingress_after = json.loads(changed["ingress"])
        assert ingress_after["disableIngressCreation"] is True
        assert {k: v for k, v in ingress_after.items() if k != "disableIngressCreation"} == {
            k: v for k, v in ingress_before.items() if k != "disableIngressCreation"
        }
    else:
        assert "disableIngressCreation" not in ingress_before
        assert changed["ingress"] == original["ingress"]  # untouched, byte for byte

    for key in set(original) - {"deploy", "ingress"}:
        assert changed[key] == original[key], key  # e.g. _example, credentials, storageInitializer
        if _json_or_none(original[key]) is not None:
            assert json.loads(changed[key]) == json.loads(original[key])
    for key in ("deploy", "ingress"):
        assert isinstance(_json_or_none(changed[key]), dict), key


def test_raw_deployment_config_keeps_other_deploy_keys_and_creates_a_missing_one(matrix: Matrix) -> None:
    release = matrix.release("v0.14.1")
    changed = raw_deployment_config(release, {"deploy": '{"defaultDeploymentMode": "Serverless", "x": [1]}'})
    assert json.loads(changed["deploy"]) == {"defaultDeploymentMode": "RawDeployment", "x": [1]}
    assert "ingress" not in changed  # nothing to disable: not invented
    assert json.loads(raw_deployment_config(release, {})["deploy"]) == {"defaultDeploymentMode": "RawDeployment"}
    assert json.loads(raw_deployment_config(release, {"deploy": ""})["deploy"]) == {
        "defaultDeploymentMode": "RawDeployment"
    }


def test_raw_deployment_config_applied_twice_is_the_same(
    matrix: Matrix, manifest_of: Callable[[str], ReleaseManifest]
) -> None:
    release = matrix.release("v0.14.0")
    once = raw_deployment_config(release, config_data(manifest_of("v0.14.0")))
    assert raw_deployment_config(release, once) == once


@pytest.mark.parametrize("version", FIXTURE_VERSIONS)
def test_admission_webhooks_of_every_release(manifest_of: Callable[[str], ReleaseManifest], version: str) -> None:
    manifest = manifest_of(version)
    found = admission_webhooks(manifest.documents)
    kinds = {d["kind"] for d in found}
    assert kinds == {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
    names = {(d["kind"], d["metadata"]["name"]) for d in found}
    assert ("MutatingWebhookConfiguration", "inferenceservice.serving.kserve.io") in names
    assert ("ValidatingWebhookConfiguration", "inferenceservice.serving.kserve.io") in names
    # every webhook configuration of the release, and nothing else
    assert [id(d) for d in found] == [id(d) for d in manifest.documents if "WebhookConfiguration" in d.get("kind", "")]
    # the reason the local tier removes them: nobody serves them there, and they fail closed
    for document in found:
        for hook in document["webhooks"]:
            assert hook["failurePolicy"] == "Fail", (version, document["metadata"]["name"])


def test_admission_webhooks_of_nothing() -> None:
    assert admission_webhooks([]) == []
    assert admission_webhooks([{"kind": "Deployment"}, {}]) == []


# -- predictor_service ------------------------------------------------------------------------


def isvc(name: str, status: dict[str, Any], namespace: str | None = "kserve-compat-samples") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "status": status,
    }


def test_predictor_service_v0_10_style_from_the_isvc_address() -> None:
    # v0.10 raw mode: the predictor component reports only its external url; the
    # InferenceService's address points at the "-predictor-default" Service.
    status = {
        "address": {"url": "http://sklearn-iris-predictor-default.kserve-compat-samples.svc.cluster.local"},
        "components": {"predictor": {"url": "http://sklearn-iris-predictor-default-kserve-compat-samples.example.com"}},
    }
    target = predictor_service(isvc("sklearn-iris", status))
    assert (target.namespace, target.name, target.port) == (
        "kserve-compat-samples",
        "sklearn-iris-predictor-default",
        80,
    )


def test_predictor_service_later_style_from_the_component_address() -> None:
    status = {
        "address": {"url": "http://sklearn-iris-v2.kserve-compat-samples.svc.cluster.local"},
        "components": {
            "predictor": {"address": {"url": "http://sklearn-iris-v2-predictor.kserve-compat-samples.svc.cluster.local"}}
        },
    }
    target = predictor_service(isvc("sklearn-iris-v2", status))
    assert (target.namespace, target.name, target.port) == ("kserve-compat-samples", "sklearn-iris-v2-predictor", 80)


def test_predictor_service_keeps_an_explicit_port_and_defaults_the_namespace() -> None:
    status = {"components": {"predictor": {"address": {"url": "http://iris-predictor.other.svc:8080/v1"}}}}
    target = predictor_service(isvc("iris", status, namespace=None))
    assert (target.namespace, target.name, target.port) == (SAMPLES_NAMESPACE, "iris-predictor", 8080)


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"components": {"predictor": {}}},
        {"address": {}, "components": {"predictor": {"address": {"url": ""}}}},
        {"address": {"url": "not a url"}},
    ],
)
def test_predictor_service_without_an_address_is_not_ready(status: dict[str, Any]) -> None:
    with pytest.raises(InferenceServiceNotReady) as excinfo:
        predictor_service(isvc("sklearn-iris", status))
    message = str(excinfo.value)
    assert "kserve-compat-samples/sklearn-iris" in message and "\n" not in message

