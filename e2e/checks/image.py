"""The image-in-use check: the Deployment's template and every pod run the expected image."""

from __future__ import annotations

from collections.abc import Sequence

from kubernetes import client as k8s_client

from e2e.images import ImageReference
from e2e.labels import label_selector
from e2e.results import CellResult, CheckResult, CheckStatus, timed_check


def _as_pulled(reported: str) -> ImageReference | None:
    """An image as a kubelet reports it (``docker-pullable://`` and all), with every default spelled
    out; None where it is no reference (some runtimes report a bare ``sha256:...`` image ID)."""
    ref = ImageReference.parse_or_none(reported.removeprefix("docker-pullable://").removeprefix("docker://"))
    return ref.normalized() if ref is not None else None


def image_matches(expected: str, image: str, image_id: str = "") -> bool:
    """Whether a container runs ``expected``: by digest where it names one, else by name and tag."""
    wanted = _as_pulled(expected)
    if wanted is None:
        return expected == image
    seen = [ref for ref in (_as_pulled(image), _as_pulled(image_id)) if ref is not None]
    if wanted.digest:
        return any(ref.digest == wanted.digest for ref in seen)
    running = _as_pulled(image)
    return running is not None and (running.name, running.tag) == (wanted.name, wanted.tag)


def check_image_in_use(
    cell: CellResult,
    api: k8s_client.ApiClient,
    namespace: str,
    deployment: str,
    container: str,
    expected_image: str,
    *,
    observed_images: Sequence[str] | None = None,
) -> CheckResult:
    """``image-in-use``: the Deployment asks for ``expected_image`` and it is what runs.

    The pod template's container must name ``expected_image``; then every Running,
    non-terminating pod of the Deployment (its own label selector) must report it in
    ``containerStatuses`` (``image``, or ``imageID`` when a digest is expected). Without a
    kubelet (local tier) there are no pods: the caller passes ``observed_images``, the
    images of what it actually runs, and those are compared instead.
    """
    with timed_check(cell, "image-in-use") as check:
        apps = k8s_client.AppsV1Api(api)
        stored = apps.read_namespaced_deployment(deployment, namespace)
        template_images = {c.name: c.image for c in stored.spec.template.spec.containers}
        template_image = template_images.get(container)
        if template_image is None:
            check.status = CheckStatus.FAIL
            check.detail = f"deployment {namespace}/{deployment} has no container {container!r}"
            check.evidence = [f"containers: {', '.join(sorted(template_images))}"]
            return check
        check.evidence = [f"pod template {container}: {template_image}"]
        if not image_matches(expected_image, template_image):
            check.status = CheckStatus.FAIL
            check.detail = f"pod template says {template_image}, expected {expected_image}"
            return check

        if observed_images is not None:
            seen = [("process", image, "") for image in observed_images]
            source = "running processes"
        else:
            selector = label_selector(stored.spec.selector)
            pods = k8s_client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
            seen = []
            for pod in pods:
                if pod.status.phase != "Running" or pod.metadata.deletion_timestamp is not None:
                    check.evidence.append(
                        f"pod {pod.metadata.name}: ignored ({pod.status.phase}"
                        f"{', terminating' if pod.metadata.deletion_timestamp else ''})"
                    )
                    continue
                statuses = {s.name: s for s in pod.status.container_statuses or []}
                status = statuses.get(container)
                if status is None:
                    seen.append((pod.metadata.name, "<no status>", ""))
                else:
                    seen.append((pod.metadata.name, status.image or "", status.image_id or ""))
            source = f"Running pods ({selector})"

        for where, image, image_id in seen:
            check.evidence.append(f"{where}: {image}" + (f" ({image_id})" if image_id else ""))
        if not seen:
            check.status = CheckStatus.FAIL
            check.detail = f"no {source} to compare with {expected_image}"
            return check
        wrong = [where for where, image, image_id in seen if not image_matches(expected_image, image, image_id)]
        if wrong:
            check.status = CheckStatus.FAIL
            check.detail = f"{len(wrong)} of {len(seen)} {source} do not run {expected_image}: {', '.join(wrong)}"
        else:
            check.status = CheckStatus.PASS
            check.detail = f"template and {len(seen)} {source} run {expected_image}"
    return check
