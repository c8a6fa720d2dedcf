"""What every HTTP source needs, whatever it reads."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import SourceUnavailableError

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


def excerpt(resp: httpx.Response) -> str:
    """The start of a response's body, as text, for an error message."""
    return resp.content[:200].decode("utf-8", "replace")


def json_body(resp: httpx.Response, what: str, error: type[SourceUnavailableError], *, loads: Callable[[bytes], Any] = orjson.loads) -> Any:
    """The body as JSON, or `error` saying plainly what came instead: an HTML page, an error status, truncated JSON."""
    body = resp.content
    if body.lstrip()[:1] == b"<" or "html" in resp.headers.get("content-type", "").lower():
        raise error(f"{what} returned an HTML page (HTTP {resp.status_code}), not JSON: a maintenance or error page?")
    if resp.status_code >= 400:
        raise error(f"{what}: HTTP {resp.status_code}: {excerpt(resp)}")
    try:
        return loads(body)
    except ValueError as exc:  # orjson's and json's decode errors are ValueErrors
        raise error(f"{what} returned invalid or truncated JSON (HTTP {resp.status_code}, {len(body)} bytes: {exc})") from exc
