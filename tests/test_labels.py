"""Label selectors: the string the list APIs take, read back, matched (e2e.labels)."""

from __future__ import annotations

from kubernetes import client as k8s_client

from e2e.labels import label_selector, parse_equality_selector, selects


def test_match_labels_and_expressions_become_the_list_api_form() -> None:
    selector = k8s_client.V1LabelSelector(
        match_labels={"b": "2", "a": "1"},
        match_expressions=[
            k8s_client.V1LabelSelectorRequirement(key="tier", operator="In", values=["x", "y"]),
            k8s_client.V1LabelSelectorRequirement(key="gone", operator="DoesNotExist"),
        ],
    )
    assert label_selector(selector) == "a=1,b=2,tier in (x,y),!gone"
    assert label_selector(None) == ""


def test_an_equality_selector_reads_back_and_matches() -> None:
    parsed = parse_equality_selector("control-plane=kserve-controller-manager, app = kserve")
    assert parsed == {"control-plane": "kserve-controller-manager", "app": "kserve"}
    assert selects(parsed, {**parsed, "pod-template-hash": "abc"})
    assert not selects(parsed, {"app": "kserve"})
    assert not selects({}, {"app": "kserve"})
