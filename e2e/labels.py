"""Kubernetes label selectors: built for the list APIs, read back, matched against labels.

The one place that knows the selector string form (``k=v,k in (a,b),!k``), so that what a
Deployment selects, what the list APIs are asked and what the local tier's played pods match
agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from kubernetes import client as k8s_client


def label_selector(selector: k8s_client.V1LabelSelector | None) -> str:
    """A ``V1LabelSelector`` (matchLabels and matchExpressions) as the string the list APIs take."""
    if selector is None:
        return ""
    parts = [f"{key}={value}" for key, value in sorted((selector.match_labels or {}).items())]
    for expression in selector.match_expressions or []:
        values = ",".join(expression.values or [])
        operator = expression.operator
        if operator == "In":
            parts.append(f"{expression.key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{expression.key} notin ({values})")
        elif operator == "Exists":
            parts.append(expression.key)
        elif operator == "DoesNotExist":
            parts.append(f"!{expression.key}")
    return ",".join(parts)


def parse_equality_selector(selector: str) -> dict[str, str]:
    """The ``k=v`` terms of a selector string as a mapping; set-based terms are not read."""
    pairs = (part.split("=", 1) for part in selector.split(",") if "=" in part)
    return {key.strip(): value.strip() for key, value in pairs}


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether an equality selector picks an object with ``labels``; an empty one picks nothing
    (as a Service's empty selector does)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
