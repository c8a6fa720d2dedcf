"""An Elasticsearch index as a sink: documents indexed by id, so that a replay overwrites them.

`ElasticsearchSink` puts a composable index template at `open` (so the index, when Elasticsearch makes
it, has the right field types), checks each document against that template in `write` and buffers it,
and sends the buffer in one `_bulk` request at `flush`. Every document has an id made from what it is
(a coin's snapshot at a time): replaying records after a crash indexes the same ids again, and the index
ends as if nothing had happened. Needs the extra: `pip install 'affluent[elasticsearch]'`.

Faults, at `flush`: a request that fails as a whole (connection refused, timeout, HTTP 429 or 5xx) or a
document refused for a reason that may go away (429, 5xx) raises `SinkUnavailableError`, and the runtime
retries from its checkpoint; the client does not retry on its own, so that there is one retry policy,
with back-off. A document that Elasticsearch refuses for good (a mapping error) raises
`DocumentRejectedError`, naming its id and Elasticsearch's reason. The buffer is kept until a flush
succeeds or `discard` is called.

`MARKETS_TEMPLATE`, `market_document` and `market_doc_id` index the crypto app's market snapshots.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson
from pydantic import SecretStr

from affluent.core.errors import ConfigError, MissingDependencyError, RecordError, SinkUnavailableError, TerminalError
from affluent.core.records import Record
from affluent.core.sinks import Sink

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

#: above Elasticsearch's built-in templates (priority 100): ours decides the types of its one index
TEMPLATE_PRIORITY = 200
#: lower case, no spaces nor `\/*?"<>|,#:`, not starting with `-_+.`: what Elasticsearch takes as an index name
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,254}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadDocumentError(RecordError, ValueError):
    """A record whose document does not fit the index template: it is dead-lettered, the others go on."""


class DocumentRejectedError(TerminalError):
    """Elasticsearch refused a document for good (a mapping error): the template and the documents disagree."""

    def __init__(self, message: str, *, doc_id: str, reason: str) -> None:
        super().__init__(message)
        self.doc_id = doc_id
        self.reason = reason


# -- the crypto market snapshots ---------------------------------------------------------------------------------
_MARKET_KEYWORDS = ("coin_id", "symbol", "name", "vs_currency")
_MARKET_DOUBLES = (
    "price",
    "market_cap",
    "volume_24h",
    "high_24h",
    "low_24h",
    "price_change_24h",
    "change_1h_pct",
    "change_24h_pct",
    "change_7d_pct",
    "circulating_supply",
)
#: `dynamic: strict`: a document with a field not named here is refused, never mapped by guessing (as text)
MARKETS_TEMPLATE: dict[str, Any] = {
    "mappings": {
        "dynamic": "strict",
        "properties": {
            **{f: {"type": "keyword"} for f in _MARKET_KEYWORDS},
            "rank": {"type": "integer"},
            **{f: {"type": "double"} for f in _MARKET_DOUBLES},
            "last_updated": {"type": "date", "format": "strict_date_optional_time"},
            "snapshot_time": {"type": "date", "format": "strict_date_optional_time"},
            "in_top": {"type": "boolean"},
        },
    }
}


def _iso(ms: Any, field: str) -> str | None:
    """UTC epoch ms as ISO-8601 with its offset: "2024-05-01T12:00:00.123+00:00"."""
    if ms is None:
        return None
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise BadDocumentError(f"{field} must be UTC epoch milliseconds (an integer), got {ms!r:.80}")
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def market_document(record: Record) -> dict[str, Any]:
    """The document of one market snapshot (a row of the crypto app's `MARKET_COLUMNS`). Numbers stay
    numbers, signed (a fall is negative); NaN becomes a missing value, as JSON has no NaN."""
    v = record.value
    if not isinstance(v, dict):
        raise BadDocumentError(f"a market snapshot is a dict, got {type(v).__name__}")
    doc = {f: v.get(f) for f in (*_MARKET_KEYWORDS, "rank", *_MARKET_DOUBLES)}
    for f in _MARKET_DOUBLES:
        x = doc[f]
        if isinstance(x, int | float) and not isinstance(x, bool):  # anything else is refused by the template check
            doc[f] = None if math.isnan(x) else float(x)
    doc["last_updated"] = _iso(v.get("last_updated_ms"), "last_updated_ms")
    doc["snapshot_time"] = _iso(v.get("snapshot_ms"), "snapshot_ms")
    in_top = v.get("in_top")
    if in_top not in (None, 0, 1):  # the serving store's 0/1, or a bool
        raise BadDocumentError(f"in_top must be 0, 1 or a bool, got {in_top!r:.80}")
    doc["in_top"] = None if in_top is None else bool(in_top)
    return doc


def market_doc_id(record: Record) -> str:
    """`coin_id:last_updated_ms`: a snapshot indexed again (a replay, a second poll) overwrites itself."""
    v = record.value
    coin, ms = (v.get("coin_id"), v.get("last_updated_ms")) if isinstance(v, dict) else (None, None)
    if not isinstance(coin, str) or not coin or isinstance(ms, bool) or not isinstance(ms, int):
        raise BadDocumentError(f"a market snapshot needs a coin_id and an integer last_updated_ms, got {coin!r:.40} and {ms!r:.40}")
    return f"{coin}:{ms}"


# -- checks of a document against the template's top-level fields -------------------------------------------------
def _is_text(v: Any) -> bool:
    return isinstance(v, str)


def _is_integer(bits: int) -> Callable[[Any], bool]:
    top = 1 << (bits - 1)
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and -top <= v < top


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_boolean(v: Any) -> bool:
    return isinstance(v, bool)


def _is_date(v: Any) -> bool:
    """An ISO-8601 string with its offset: a naive time would be read as UTC without saying so."""
    try:
        return isinstance(v, str) and datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


# other types (objects, geo points, ...) are left to Elasticsearch
_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **{t: ("a string", _is_text) for t in ("keyword", "text", "match_only_text", "wildcard", "constant_keyword")},
    "long": ("a 64-bit integer", _is_integer(64)),
    "integer": ("a 32-bit integer", _is_integer(32)),
    "short": ("a 16-bit integer", _is_integer(16)),
    "byte": ("an 8-bit integer", _is_integer(8)),
    **{t: ("a number", _is_number) for t in ("double", "float", "half_float", "scaled_float")},
    "boolean": ("true or false", _is_boolean),
    "date": ("an ISO-8601 time with its offset", _is_date),
}


def _redact(url: str) -> str:
    """The URL without the credentials it may hold: safe to log and show."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# -- the sink -------------------------------------------------------------------------------------------------------
class ElasticsearchSink(Sink):
    """Indexes one document per record into `index`, by id, in one `_bulk` request per flush.

    url: `http(s)://host:9200`, possibly with `user:password@`. template: the `template` part of a
    composable index template (`mappings`, `settings`), put at open for this index's name. doc_id: record
    -> the document's id (what the record is, so that a replay overwrites). document: record -> the
    document (default: the record's value). api_key, or username and password: the credentials, if the
    URL holds none. timeout_s: how long one request may take.
    """

    shared_writes = True  # documents indexed by id: workers writing the same one write the same thing

    def __init__(
        self,
        url: str,
        index: str,
        *,
        template: Mapping[str, Any],
        doc_id: Callable[[Record], str],
        document: Callable[[Record], dict[str, Any]] | None = None,
        api_key: SecretStr | str | None = None,
        username: str | None = None,
        password: SecretStr | str | None = None,
        name: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = _redact(url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"bad Elasticsearch URL {self.url!r}: expected http(s)://host:9200")
        if parts.username is not None:
            if username is not None or password is not None:
                raise ConfigError(f"Elasticsearch at {self.url}: credentials given both in the URL and as arguments")
            username, password = unquote(parts.username), unquote(parts.password or "")
        if api_key is not None and username is not None:
            raise ConfigError(f"Elasticsearch at {self.url}: give an API key or a user and password, not both")
        if (username is None) != (password is None):
            raise ConfigError(f"Elasticsearch at {self.url}: a user needs a password, and a password a user")
        if not _INDEX_NAME.match(index):
            raise ConfigError(f"bad Elasticsearch index name {index!r}: lower case letters, digits and ._+- (not first)")
        mappings = template.get("mappings")
        if not isinstance(mappings, Mapping):
            raise ConfigError(f"Elasticsearch index {index!r}: the template needs its mappings")
        self.index = index
        self.template = dict(template)
        self.template_name = f"affluent-{index}"
        self.doc_id = doc_id
        self.document = document
        self.name = name or f"elasticsearch-{index}"
        self.timeout_s = timeout_s
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self._username = username
        self._password = SecretStr(password) if isinstance(password, str) else password
        properties: Mapping[str, Any] = mappings.get("properties", {})
        self._checks = {f: _CHECKS[p["type"]] for f, p in properties.items() if p.get("type") in _CHECKS}
        self._strict = mappings.get("dynamic") == "strict"
        self._fields = set(properties)
        self._buffer: dict[str, tuple[bytes, bytes]] = {}  # id -> (action line, document line); the last one wins
        self._module = _require()
        self._client: Elasticsearch | None = None

    def __repr__(self) -> str:
        return f"ElasticsearchSink({self.url!r}, {self.index!r}, name={self.name!r})"

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def open(self) -> None:
        es = self._connect()
        with self._faults("take the index template"):
            es.indices.put_index_template(
                name=self.template_name,
                index_patterns=[self.index],
                template=self.template,
                priority=TEMPLATE_PRIORITY,
                meta={"managed_by": "affluent"},
            )
            try:
                current = es.indices.get_mapping(index=self.index).body
            except self._module.NotFoundError:
                return  # made from the template at the first flush
        self._check_mapping(current)

    def close(self) -> None:
        self._buffer.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connect(self) -> Elasticsearch:
        if self._client is None:
            auth: dict[str, Any] = {}
            if self._api_key is not None:
                auth["api_key"] = self._api_key.get_secret_value()
            elif self._username is not None and self._password is not None:
                auth["basic_auth"] = (self._username, self._password.get_secret_value())
            # no retries in the client: the runtime retries from its checkpoint, with back-off
            self._client = self._module.Elasticsearch(self.url, request_timeout=self.timeout_s, max_retries=0, retry_on_timeout=False, **auth)
        return self._client

    def _check_mapping(self, current: Mapping[str, Any]) -> None:
        """A template applies only to an index made after it: an index that exists must have its types already."""
        want = {f: p.get("type", "object") for f, p in self.template["mappings"].get("properties", {}).items()}
        for concrete, body in current.items():
            have = body.get("mappings", {}).get("properties", {})
            wrong = [f"{f} is {have[f].get('type', 'object')}, not {t}" for f, t in want.items() if f in have and have[f].get("type", "object") != t]
            if wrong:
                raise ConfigError(
                    f"Elasticsearch index {concrete!r} at {self.url} was made without this template ({'; '.join(wrong)}): "
                    "reindex it into a new index, or delete it, so that its fields take the template's types"
                )

    @contextlib.contextmanager
    def _faults(self, doing: str) -> Iterator[None]:
        """Faults that may go away become SinkUnavailableError; the others ConfigError. Messages hold no credentials:
        the client was given a URL without them."""
        es = self._module
        try:
            yield
        except es.ApiError as exc:
            status = exc.meta.status
            if status == 429 or status >= 500:
                raise SinkUnavailableError(f"Elasticsearch at {self.url} cannot {doing} for now: {exc}") from exc
            raise ConfigError(f"Elasticsearch at {self.url} refused to {doing}: {exc}") from exc
        except es.SSLError as exc:  # a certificate that does not verify: waiting will not change it
            raise ConfigError(f"Elasticsearch at {self.url}: TLS failed: {exc.message}") from exc
        except (es.ConnectionError, es.ConnectionTimeout) as exc:  # str(exc) would hide the cause when the client did not retry
            raise SinkUnavailableError(f"Elasticsearch at {self.url} cannot {doing} for now: {type(exc).__name__}: {exc.message}") from exc

    # -- writing --------------------------------------------------------------------------------------------------
    def write(self, records: list[Record]) -> None:
        lines: dict[str, tuple[bytes, bytes]] = {}
        for r in records:
            doc = self.document(r) if self.document is not None else r.value
            doc_id = self.doc_id(r)
            if not isinstance(doc, dict):
                raise BadDocumentError(f"Elasticsearch index {self.index!r} takes dict documents, got {type(doc).__name__}")
            if not isinstance(doc_id, str) or not doc_id or len(doc_id.encode()) > 512:
                raise BadDocumentError(f"Elasticsearch index {self.index!r}: a document id is a string of 1 to 512 bytes, got {doc_id!r:.80}")
            self._check(doc, doc_id)
            try:
                body = orjson.dumps(doc)
            except orjson.JSONEncodeError as exc:
                raise BadDocumentError(f"Elasticsearch index {self.index!r}: document {doc_id!r} is not JSON: {exc}") from exc
            lines[doc_id] = (orjson.dumps({"index": {"_index": self.index, "_id": doc_id}}), body)
        # all checked before any is buffered: a write that raises takes nothing (its records become dead letters)
        self._buffer.update(lines)

    def _check(self, doc: dict[str, Any], doc_id: str) -> None:
        """Refuse here what the index would refuse at flush (or store wrongly): a bad record is a dead letter, not a stop."""
        for f, v in doc.items():
            if self._strict and f not in self._fields:
                raise BadDocumentError(f"Elasticsearch index {self.index!r}: document {doc_id!r} has field {f!r}, which the template has not")
            if v is not None and f in self._checks:
                what, ok = self._checks[f]
                if not ok(v):
                    raise BadDocumentError(f"Elasticsearch index {self.index!r}: document {doc_id!r}: {f} must be {what}, got {v!r:.80}")

    def discard(self) -> None:
        self._buffer.clear()

    def flush(self) -> None:
        if not self._buffer:
            return
        # lines already encoded (and checked) at write; the client's NDJSON serializer sends bytes as they are
        lines: Any = [line for pair in self._buffer.values() for line in pair]
        with self._faults("index documents"):
            resp = self._connect().bulk(operations=lines).body
        if resp.get("errors"):
            self._raise_item_errors(resp["items"])
        self._buffer.clear()

    def _raise_item_errors(self, items: list[dict[str, Any]]) -> None:
        """A 200 bulk response may still refuse some documents: for good (4xx), or for now (429, 5xx)."""
        refused = [(op.get("_id", "?"), op.get("status", 0), op.get("error") or {}) for item in items for op in item.values() if "error" in op]
        for_good = [(i, s, e) for i, s, e in refused if s != 429 and s < 500]
        if for_good:
            doc_id, status, error = for_good[0]
            reason = f"{error.get('type', 'error')}: {error.get('reason', '')}"
            more = f" (and {len(for_good) - 1} more)" if len(for_good) > 1 else ""
            raise DocumentRejectedError(
                f"Elasticsearch index {self.index!r} at {self.url} refused document {doc_id!r} (HTTP {status}): {reason}{more}",
                doc_id=doc_id,
                reason=reason,
            )
        if refused:
            doc_id, status, error = refused[0]
            raise SinkUnavailableError(
                f"Elasticsearch index {self.index!r} at {self.url} cannot take {len(refused)} document(s) for now, "
                f"e.g. {doc_id!r} (HTTP {status}): {error.get('type', 'error')}: {error.get('reason', '')}"
            )


def _require() -> Any:
    try:
        import elasticsearch
    except ImportError as exc:
        raise MissingDependencyError("elasticsearch", "elasticsearch") from exc
    return elasticsearch


__all__ = [
    "MARKETS_TEMPLATE",
    "TEMPLATE_PRIORITY",
    "BadDocumentError",
    "DocumentRejectedError",
    "ElasticsearchSink",
    "market_doc_id",
    "market_document",
]
