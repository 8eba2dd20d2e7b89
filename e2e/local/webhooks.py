"""Point admission webhooks at the processes that play their Services' pods.

Without a kubelet and kube-proxy the API server cannot reach a webhook through its
Service. The local tier rewrites each webhook's ``clientConfig`` from ``service:`` to
``url: https://127.0.0.1:<port><path>`` of the process that plays the Service's pod (the
real KServe manager), with the CA that signed that process's serving certificate as
``caBundle``: the API server then calls the real webhooks. A webhook whose Service no
real process plays (a stand-in manager, a controller not played at all) would reject
every request it matches (``failurePolicy: Fail``), so it is removed. Both are
deviations the caller records.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client

log = logging.getLogger(__name__)

#: (Service namespace, Service name, Service port) -> ``HOST:PORT`` of the real process that
#: serves it, or None (with why) when nothing real does.
Resolver = Callable[[str, str, int], tuple[str | None, str]]


@dataclass
class WebhookRouting:
    """What ``route_admission_webhooks`` changed, by backing Service (``ns/name``)."""

    routed: dict[str, list[str]] = field(default_factory=dict)  # service -> webhook names
    removed: dict[str, list[str]] = field(default_factory=dict)
    why_removed: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.routed or self.removed)


def route_admission_webhooks(api: k8s_client.ApiClient, resolve: Resolver, ca_pem: bytes) -> WebhookRouting:
    """Rewrite every Service-backed admission webhook to its player's loopback URL, or
    remove it when nothing real serves it. Webhooks that already have a URL are left as
    they are (so calling this again changes nothing)."""
    admission = k8s_client.AdmissionregistrationV1Api(api)
    routing = WebhookRouting()
    ca_bundle = base64.b64encode(ca_pem).decode()
    kinds: list[tuple[Any, Callable[..., Any], Callable[..., Any]]] = [
        (
            admission.list_validating_webhook_configuration(),
            admission.replace_validating_webhook_configuration,
            admission.delete_validating_webhook_configuration,
        ),
        (
            admission.list_mutating_webhook_configuration(),
            admission.replace_mutating_webhook_configuration,
            admission.delete_mutating_webhook_configuration,
        ),
    ]
    for listing, replace, delete in kinds:
        for configuration in listing.items:
            kept = []
            changed = False
            for webhook in configuration.webhooks or []:
                service = webhook.client_config.service
                if service is None:
                    kept.append(webhook)
                    continue
                key = f"{service.namespace}/{service.name}"
                address, why = resolve(service.namespace, service.name, service.port or 443)
                changed = True
                if address is None:
                    routing.removed.setdefault(key, []).append(webhook.name)
                    routing.why_removed[key] = why
                    continue
                webhook.client_config = k8s_client.AdmissionregistrationV1WebhookClientConfig(
                    url=f"https://{address}{service.path or '/'}", ca_bundle=ca_bundle
                )
                routing.routed.setdefault(key, []).append(webhook.name)
                kept.append(webhook)
            name = configuration.metadata.name
            if not changed:
                continue
            if kept:
                configuration.webhooks = kept
                replace(name, configuration)
                log.info("webhook configuration %s: %d webhooks point at played processes", name, len(kept))
            else:
                delete(name)
                log.info("webhook configuration %s removed: nothing real serves it", name)
    return routing


def deviations(routing: WebhookRouting) -> list[str]:
    """Report lines for what ``route_admission_webhooks`` changed (no ports: they repeat
    identically for every cell)."""
    lines = [
        f"admission webhooks of Service {service} ({len(names)}): clientConfig points at the played manager "
        "(url https://127.0.0.1:<port><path>, caBundle the local CA; no Service routing without a kubelet)"
        for service, names in sorted(routing.routed.items())
    ]
    lines += [
        f"admission webhooks of Service {service} removed ({len(names)}): {routing.why_removed[service]} "
        f"({', '.join(sorted(names))})"
        for service, names in sorted(routing.removed.items())
    ]
    return lines
