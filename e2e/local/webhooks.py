"""Point admission webhooks at the processes that play their Services' pods.

Without a kubelet and kube-proxy the API server cannot reach a webhook through its
Service. The local tier rewrites each webhook's ``clientConfig`` from ``service:`` to
``url: https://127.0.0.1:<port><path>`` of the process that plays the Service's pod (the
real KServe manager). Its ``caBundle`` stays the one cert-manager's cainjector injects
where cert-manager issued that process's serving certificate (``e2e/local/certmanager.py``),
else it is the CA that signed the harness-made pair: the API server then calls the real
webhooks. A webhook whose Service no
real process plays (a stand-in manager, a controller not played at all) would reject
every request it matches (``failurePolicy: Fail``), so it is removed. Both are
deviations the caller records.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import tenacity
from kubernetes import client as k8s_client

log = logging.getLogger(__name__)

INJECT_ANNOTATION = "cert-manager.io/inject-ca-from"

#: (Service namespace, Service name, Service port) -> ``HOST:PORT`` of the real process that
#: serves it, or None (with why) when nothing real does.
Resolver = Callable[[str, str, int], tuple[str | None, str]]


@dataclass
class WebhookRouting:
    """What ``route_admission_webhooks`` changed, by backing Service (``ns/name``)."""

    routed: dict[str, list[str]] = field(default_factory=dict)  # service -> webhook names
    removed: dict[str, list[str]] = field(default_factory=dict)
    why_removed: dict[str, str] = field(default_factory=dict)
    injected: set[str] = field(default_factory=set)  # services whose caBundle cert-manager's cainjector sets

    @property
    def changed(self) -> bool:
        return bool(self.routed or self.removed)


def route_admission_webhooks(
    api: k8s_client.ApiClient, resolve: Resolver, ca_pem: bytes, injected: Collection[str] = ()
) -> WebhookRouting:
    """Rewrite every Service-backed admission webhook to its player's loopback URL, or
    remove it when nothing real serves it. Webhooks that already have a URL are left as
    they are (so calling this again changes nothing).

    The caBundle of a rewritten webhook is ``ca_pem``, except in configurations annotated
    ``cert-manager.io/inject-ca-from`` one of ``injected`` (``namespace/name`` of
    Certificates cert-manager issues here): those keep the caBundle cert-manager's
    cainjector put there (or will put: it injects into URL webhooks just the same). A
    configuration changed meanwhile (the cainjector writes too) is read again and redone.
    """
    admission = k8s_client.AdmissionregistrationV1Api(api)
    routing = WebhookRouting()
    ca_bundle = base64.b64encode(ca_pem).decode()
    kinds: list[tuple[Callable[[], Any], Callable[[str], Any], Callable[..., Any], Callable[..., Any]]] = [
        (
            admission.list_validating_webhook_configuration,
            admission.read_validating_webhook_configuration,
            admission.replace_validating_webhook_configuration,
            admission.delete_validating_webhook_configuration,
        ),
        (
            admission.list_mutating_webhook_configuration,
            admission.read_mutating_webhook_configuration,
            admission.replace_mutating_webhook_configuration,
            admission.delete_mutating_webhook_configuration,
        ),
    ]
    for list_all, read, replace, delete in kinds:
        for listed in list_all().items:
            name = listed.metadata.name
            retrying = tenacity.Retrying(
                retry=tenacity.retry_if_exception(_is_conflict),
                stop=tenacity.stop_after_attempt(10),
                wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
                before_sleep=_log_conflict,
                reraise=True,
            )
            retrying(_route_one, read, replace, delete, name, resolve, ca_bundle, injected, routing)
    return routing


def _log_conflict(state: tenacity.RetryCallState) -> None:
    log.info("a webhook configuration changed meanwhile (attempt %d); reading it again", state.attempt_number)


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, k8s_client.ApiException) and exc.status == 409


def _route_one(
    read: Callable[[str], Any],
    replace: Callable[..., Any],
    delete: Callable[..., Any],
    name: str,
    resolve: Resolver,
    ca_bundle: str,
    injected: Collection[str],
    routing: WebhookRouting,
) -> None:
    """Route the webhooks of one configuration (read fresh), recording into ``routing`` only
    once its replace or delete succeeded."""
    configuration = read(name)
    keep_ca = (configuration.metadata.annotations or {}).get(INJECT_ANNOTATION) in injected
    kept = []
    routed: dict[str, list[str]] = {}
    removed: dict[str, list[str]] = {}
    why_removed: dict[str, str] = {}
    for webhook in configuration.webhooks or []:
        service = webhook.client_config.service
        if service is None:
            kept.append(webhook)
            continue
        key = f"{service.namespace}/{service.name}"
        address, why = resolve(service.namespace, service.name, service.port or 443)
        if address is None:
            removed.setdefault(key, []).append(webhook.name)
            why_removed[key] = why
            continue
        webhook.client_config = k8s_client.AdmissionregistrationV1WebhookClientConfig(
            url=f"https://{address}{service.path or '/'}",
            ca_bundle=webhook.client_config.ca_bundle if keep_ca else ca_bundle,
        )
        routed.setdefault(key, []).append(webhook.name)
        kept.append(webhook)
    if not routed and not removed:
        return
    if kept:
        configuration.webhooks = kept
        replace(name, configuration)
        log.info("webhook configuration %s: %d webhooks point at played processes", name, len(kept))
    else:
        delete(name)
        log.info("webhook configuration %s removed: nothing real serves it", name)
    for key, names in routed.items():
        routing.routed.setdefault(key, []).extend(names)
        if keep_ca:
            routing.injected.add(key)
    for key, names in removed.items():
        routing.removed.setdefault(key, []).extend(names)
    routing.why_removed.update(why_removed)


def _ca_of(routing: WebhookRouting, service: str) -> str:
    if service in routing.injected:
        return "caBundle injected by cert-manager's cainjector"
    return "caBundle the local CA"


def deviations(routing: WebhookRouting) -> list[str]:
    """Report lines for what ``route_admission_webhooks`` changed (no ports: they repeat
    identically for every cell)."""
    lines = [
        f"admission webhooks of Service {service} ({len(names)}): clientConfig points at the played manager "
        f"(url https://127.0.0.1:<port><path>, {_ca_of(routing, service)}; no Service routing without a kubelet)"
        for service, names in sorted(routing.routed.items())
    ]
    lines += [
        f"admission webhooks of Service {service} removed ({len(names)}): {routing.why_removed[service]} "
        f"({', '.join(sorted(names))})"
        for service, names in sorted(routing.removed.items())
    ]
    return lines
