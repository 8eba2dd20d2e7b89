"""The rollout's fail-fast probe looks at the pods of the Deployment's current revision only.

Seen on kind: after a cell swapped in the retired gcr.io image, the next cell patched the
Deployment back to a served image; the old revision's pod still showed ErrImagePull, and
the probe took it for the new image's failure (``image-unavailable`` for a served image).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from e2e import diagnostics, install, rollout

SELECTOR = {"control-plane": "kserve-controller-manager"}


def replica_set(revision: str, template_hash: str, owner: str = "dep-uid") -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(
            annotations={rollout.REVISION: revision},
            labels={**SELECTOR, "pod-template-hash": template_hash},
            owner_references=[SimpleNamespace(uid=owner)],
        )
    )


class FakeApps:
    def __init__(self, revision: str, replica_sets: list[Any]) -> None:
        self.revision, self.replica_sets = revision, replica_sets

    observed_generation = 7

    def read_namespaced_deployment(self, name: str, namespace: str) -> Any:
        return SimpleNamespace(
            metadata=SimpleNamespace(
                uid="dep-uid", generation=7, annotations={rollout.REVISION: self.revision}
            ),
            spec=SimpleNamespace(selector=SimpleNamespace(match_labels=SELECTOR, match_expressions=None)),
            status=SimpleNamespace(observed_generation=self.observed_generation),
        )

    def list_namespaced_replica_set(self, namespace: str, label_selector: str) -> Any:
        assert label_selector == "control-plane=kserve-controller-manager"
        return SimpleNamespace(items=self.replica_sets)


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    selectors: list[str] = []

    def evidence(api: Any, namespace: str, selector: str, read_log: Any = None) -> list[str] | None:
        selectors.append(selector)
        return [f"pods of {selector}: ErrImagePull"]

    monkeypatch.setattr(diagnostics, "pod_failure_evidence", evidence)
    return selectors


def provider() -> Any:
    return SimpleNamespace(api_client=lambda: object(), container_logs=lambda *a, **k: "")


def test_only_the_current_revisions_pods_are_evidence(monkeypatch: pytest.MonkeyPatch, probed: list[str]) -> None:
    sets = [replica_set("3", "old-gcr"), replica_set("4", "new-quay"), replica_set("4", "foreign", owner="other")]
    monkeypatch.setattr(rollout.k8s_client, "AppsV1Api", lambda api: FakeApps("4", sets))
    evidence = install.failure_probe(provider(), "kserve", "kserve-controller-manager")()
    assert probed == ["control-plane=kserve-controller-manager,pod-template-hash=new-quay"]
    assert evidence == ["pods of control-plane=kserve-controller-manager,pod-template-hash=new-quay: ErrImagePull"]


def test_no_evidence_before_the_current_revision_has_its_replica_set(
    monkeypatch: pytest.MonkeyPatch, probed: list[str]
) -> None:
    monkeypatch.setattr(rollout.k8s_client, "AppsV1Api", lambda api: FakeApps("5", [replica_set("4", "old")]))
    assert install.failure_probe(provider(), "kserve", "kserve-controller-manager")() is None
    assert probed == []


def test_no_evidence_before_the_controller_saw_the_patch(monkeypatch: pytest.MonkeyPatch, probed: list[str]) -> None:
    """Seen on kind: read right after the patch, the Deployment still carries the previous
    revision (the retired image's), whose pod fails to pull; that is not the new image's failure."""
    apps = FakeApps("2", [replica_set("2", "old-gcr")])
    apps.observed_generation = 6  # the patch made generation 7
    monkeypatch.setattr(rollout.k8s_client, "AppsV1Api", lambda api: apps)
    assert install.failure_probe(provider(), "kserve", "kserve-controller-manager")() is None
    assert probed == []
