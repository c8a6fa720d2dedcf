"""What every HTTP source needs, whatever it reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from affluent.core.clock import now_ms

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After: seconds, or an HTTP date (seconds from now, never negative)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, ((when - _EPOCH) // _MS - now_ms()) / 1000)
