"""Go/no-go lines for the images in use and the target: retired registries, unavailable or invalid references."""

from __future__ import annotations

from e2e.audit import EXIT_RETIRED, EXIT_UNAVAILABLE, EXIT_UNCHECKED
from e2e.preflight.model import (
    Check,
    PreflightReport,
    Status,
)


def image_checks(report: PreflightReport, probed: bool) -> list[Check]:
    relevant = [image for image in report.images.images if report.in_use(image) or image.image == report.target]
    retired = [image for image in relevant if image.retirement is not None]
    checks = []
    if retired:
        checks.append(
            Check(
                "retired-registry",
                Status.FAIL,
                "; ".join(f"{image.image} ({report.role(image)})" for image in retired) + " on a retired registry",
                EXIT_RETIRED,
                evidence=[f"{image.image}: {image.retirement.describe()}" for image in retired if image.retirement],
            )
        )
    else:
        checks.append(Check("retired-registry", Status.OK, f"none of {len(relevant)} images is on a retired registry"))
    invalid = [image for image in relevant if image.invalid is not None]
    if not probed:
        if invalid:
            checks.append(
                Check(
                    "image-availability",
                    Status.FAIL,
                    f"{len(invalid)} not a valid reference",
                    EXIT_UNAVAILABLE,
                    evidence=[str(i.invalid) for i in invalid],
                )
            )
        else:
            checks.append(Check("image-availability", Status.SKIPPED, "--no-probe: registries not asked"))
        return checks
    unavailable = [image for image in relevant if image.unavailable]
    if unavailable:
        evidence = [
            str(image.invalid)
            if image.invalid is not None or image.availability is None
            else f"{image.image}: {image.availability.describe()}"
            for image in unavailable
        ]
        checks.append(
            Check(
                "image-availability",
                Status.FAIL,
                "; ".join(f"{image.image} ({report.role(image)})" for image in unavailable) + " cannot be pulled",
                EXIT_UNAVAILABLE,
                evidence=evidence,
            )
        )
    unchecked = [image for image in relevant if image.unchecked]
    if unchecked:
        checks.append(
            Check(
                "image-availability-unchecked",
                Status.FAIL,
                "; ".join(f"{image.image} ({report.role(image)})" for image in unchecked)
                + " could not be checked: the registry did not answer",
                EXIT_UNCHECKED,
                evidence=[f"{i.image}: {i.availability.describe()}" for i in unchecked if i.availability],
            )
        )
    elif not unavailable:
        checks.append(Check("image-availability", Status.OK, f"all {len(relevant)} images can be pulled"))
    return checks
