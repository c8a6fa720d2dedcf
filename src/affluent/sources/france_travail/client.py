"""The France Travail "Offres d'emploi v2" API: OAuth2 client credentials, a polite rate, one request at a time.

The client makes one attempt per call (after at most one token refresh on a 401) and says plainly
what went wrong; the source above it decides when to try again. Errors::

    SourceUnavailableError
    ├── FranceTravailError          a bad answer: HTTP 5xx, 429 (retry_after_s), an HTML page, a truncated body
    └── CredentialsError            the token endpoint refused the client id or secret: names the settings to fix

The secret never appears in a message, a log line or a repr.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from affluent.core.errors import ConfigError, SourceUnavailableError
from affluent.sources.http import json_body, parse_retry_after

log = logging.getLogger("affluent.sources.france_travail")

TOKEN_URL = "https://entreprise.francetravail.fr/connexion/oauth2/access_token?realm=%2Fpartenaire"
API_URL = "https://api.francetravail.io/partenaire/offresdemploi"
#: both are mandatory for the Offres d'emploi API
SCOPES = "api_offresdemploiv2 o2dsoffre"
#: results per request, and the furthest index `range` may reach (0-3149)
PAGE_SIZE = 150
REACHABLE = 3150
#: the settings that hold the credentials, named in every message about them
CREDENTIAL_SETTINGS = "FRANCE_TRAVAIL_CLIENT_ID and FRANCE_TRAVAIL_CLIENT_SECRET (in the environment or .env)"
_CONTENT_RANGE = re.compile(r"(?:\w+\s+)?(?:(\d+)-(\d+)|\*)/(\d+)")


class FranceTravailError(SourceUnavailableError):
    """The API answered, but not with what was asked: retried later."""


class CredentialsError(SourceUnavailableError):
    """The token endpoint refused the credentials. Retried slowly: they may be re-enabled upstream."""


@dataclass(slots=True)
class Page:
    """One search answer: the offers of `range` first..last, out of `total` matching."""

    offers: list[dict[str, Any]]
    first: int
    last: int
    total: int

    @property
    def more(self) -> bool:
        return self.last + 1 < self.total


class TokenBucket:
    """At most `rate_per_s` requests per second on average, `burst` at once; rate 0 turns it off."""

    def __init__(
        self, rate_per_s: float, burst: float = 1.0, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.rate = rate_per_s
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.clock, self.sleep = clock, sleep
        self.at = clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """Wait for a token; returns how long it waited."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            self.tokens -= 1
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)
        return wait


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """'offres 0-149/412' -> (0, 149, 412); '*/0' -> (0, -1, 0); None when absent or unreadable.

    >>> parse_content_range("offres 300-352/353"), parse_content_range("offres */0")
    ((300, 352, 353), (0, -1, 0))
    """
    m = _CONTENT_RANGE.search(value or "")
    if m is None:
        return None
    if m.group(1) is None:
        return 0, -1, int(m.group(3))
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


class FranceTravailClient:
    """Reads the Offres d'emploi API.

    The token is cached and renewed when four fifths of its life have passed (the API gives about 25
    minutes), and again on any 401. `rate_per_s` (default 3) spaces requests, token ones included.
    `reachable`: how far `range` may go (3,150 results today; older API versions stopped at 1,150).
    """

    def __init__(
        self,
        client_id: str,
        client_secret: SecretStr | str,
        *,
        token_url: str = TOKEN_URL,
        api_url: str = API_URL,
        rate_per_s: float = 3.0,
        timeout_s: float = 30.0,
        reachable: int = REACHABLE,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not client_id or not client_secret:
            raise ConfigError(f"France Travail credentials are missing: set {CREDENTIAL_SETTINGS}")
        self.client_id = client_id
        self._secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        self.token_url = token_url
        self.api_url = api_url.rstrip("/")
        self.clock = clock
        self.bucket = TokenBucket(rate_per_s, clock=clock, sleep=sleep)
        self.http = httpx.Client(timeout=timeout_s, transport=transport, headers={"Accept": "application/json"}, follow_redirects=True)
        self.timeout_s = timeout_s
        self.reachable = reachable
        self._token: str | None = None
        self._renew_at = 0.0
        self.requests = 0
        self.tokens = 0

    def __repr__(self) -> str:
        return f"FranceTravailClient(client_id={self.client_id!r}, api_url={self.api_url!r})"

    def close(self) -> None:
        self.http.close()

    # -- token -----------------------------------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None or self.clock() >= self._renew_at:
            self._new_token()
        assert self._token is not None
        return self._token

    def _new_token(self) -> None:
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._secret.get_secret_value(), "scope": SCOPES}
        resp = self._send("POST", self.token_url, data=form, what="the token endpoint")
        if resp.status_code in (400, 401, 403):
            reason = ""
            try:
                doc = orjson.loads(resp.content)
                reason = str(doc.get("error") or "") if isinstance(doc, dict) else ""
            except orjson.JSONDecodeError:
                pass
            if reason == "invalid_scope":
                raise CredentialsError(
                    f"France Travail refused the scopes {SCOPES!r} (invalid_scope): give the application access to "
                    "the API 'Offres d'emploi v2' on francetravail.io",
                    retry_after_s=600.0,
                )
            raise CredentialsError(
                f"France Travail refused the client id {self.client_id!r} and its secret (HTTP {resp.status_code}"
                f"{', ' + reason if reason else ''}): check {CREDENTIAL_SETTINGS}",
                retry_after_s=600.0,
            )
        self._raise_for_status(resp, "the token endpoint")
        doc = json_body(resp, "the token endpoint", FranceTravailError)
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise FranceTravailError("the token endpoint answered without an access_token")
        life = float(doc.get("expires_in") or 0) or 1499.0
        self._token = token
        self._renew_at = self.clock() + life * 0.8
        self.tokens += 1

    # -- requests ------------------------------------------------------------------------------------------------
    def _send(self, method: str, url: str, *, what: str, **kw: Any) -> httpx.Response:
        self.bucket.take()
        self.requests += 1
        try:
            return self.http.request(method, url, **kw)
        except httpx.TimeoutException as exc:
            raise FranceTravailError(f"{what}: no answer within {self.timeout_s:g} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise FranceTravailError(f"{what}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _raise_for_status(resp: httpx.Response, what: str) -> None:
        code = resp.status_code
        if code == 429 or code >= 500:
            raise FranceTravailError(f"{what}: HTTP {code}", retry_after_s=parse_retry_after(resp.headers.get("retry-after")))
        if code >= 400:
            message = ""
            try:
                doc = orjson.loads(resp.content)
                message = str(doc.get("message") or doc.get("error_description") or "") if isinstance(doc, dict) else ""
            except orjson.JSONDecodeError:
                pass
            raise FranceTravailError(f"{what}: HTTP {code}{': ' + message if message else ''}", retry_after_s=60.0)

    def get(self, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        """GET an API path with the token; one fresh token and one more try after a 401."""
        url = f"{self.api_url}{path}"
        for attempt in (1, 2):
            resp = self._send("GET", url, params=params, headers={"Authorization": f"Bearer {self.token()}"}, what=path)
            if resp.status_code == 401 and attempt == 1:
                log.info("France Travail answered 401 (the token expired or was revoked): asking for a new one")
                self._token = None
                continue
            if resp.status_code == 401:
                raise FranceTravailError(f"{path}: HTTP 401 even with a fresh token: check {CREDENTIAL_SETTINGS}", retry_after_s=60.0)
            self._raise_for_status(resp, path)
            return resp
        raise AssertionError("unreachable")

    def search(self, params: Mapping[str, str], first: int) -> Page:
        """One page of /v2/offres/search from index `first` (206: more, 200: the last, 204: none)."""
        last = min(first + PAGE_SIZE, self.reachable) - 1
        resp = self.get("/v2/offres/search", {**params, "range": f"{first}-{last}"})
        if resp.status_code == 204:
            return Page([], first, first - 1, 0)
        doc = json_body(resp, "/v2/offres/search", FranceTravailError)
        offers = doc.get("resultats") if isinstance(doc, dict) else None
        if not isinstance(offers, list):
            raise FranceTravailError("/v2/offres/search answered without a 'resultats' list")
        span = parse_content_range(resp.headers.get("content-range"))
        if span is None:  # no Content-Range: only this page is known
            total = first + len(offers) + (1 if resp.status_code == 206 else 0)
            span = (first, first + len(offers) - 1, total)
        return Page(offers, span[0], span[1], span[2])

    def referential(self, name: str) -> list[dict[str, Any]]:
        resp = self.get(f"/v2/referentiel/{name}")
        if resp.status_code == 204:
            return []
        doc = json_body(resp, f"/v2/referentiel/{name}", FranceTravailError)
        if not isinstance(doc, list):
            raise FranceTravailError(f"/v2/referentiel/{name} is not a list")
        return [d for d in doc if isinstance(d, dict)]
