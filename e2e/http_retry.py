"""How long a server asks a client to wait before trying again (HTTP ``Retry-After``).

One reading for every HTTP client of the harness (the registry probe, release downloads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds (RFC 9110 10.2.3): either delay-seconds or an HTTP date.

    None when absent or unreadable (the caller's own backoff applies); a date in the past is 0.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())
