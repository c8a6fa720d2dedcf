"""ElasticsearchSink against a real HTTP server on loopback that answers as Elasticsearch 8 does.

The server records every request and keeps the documents it indexed, by index and id; tests script its
faults: a whole bulk request answered 429 or 503, or single documents refused (429, mapper_parsing_exception).
"""

from __future__ import annotations

import base64
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from affluent.core.errors import ConfigError, MissingDependencyError, SinkUnavailableError, TransientError
from affluent.core.records import Record
from affluent.sinks.elasticsearch import (
    MARKETS_TEMPLATE,
    BadDocumentError,
    DocumentRejectedError,
    ElasticsearchSink,
    market_doc_id,
    market_document,
)

INDEX = "crypto-markets"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeElasticsearch:
    """Enough of Elasticsearch 8 for the client: index templates, an index's mapping, `_bulk`."""

    requests: list[Request] = field(default_factory=list)
    #: HTTP statuses for the next bulk requests, as a whole (429, 503); then 200
    bulk_statuses: list[int] = field(default_factory=list)
    #: document id -> (status, error) to answer for that document in the next bulk request
    item_errors: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: index -> its mapping, as GET /<index>/_mapping answers; an index not here is answered 404
    mappings: dict[str, dict[str, Any]] = field(default_factory=dict)
    templates: dict[str, Any] = field(default_factory=dict)
    documents: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "PUT" and path.startswith("/_index_template/"):
            self.templates[path.removeprefix("/_index_template/")] = orjson.loads(body)
            return 200, {"acknowledged": True}
        if method == "GET" and path.endswith("/_mapping"):
            index = path.strip("/").split("/")[0]
            if index in self.mappings:
                return 200, {index: {"mappings": self.mappings[index]}}
            error = {"type": "index_not_found_exception", "reason": f"no such index [{index}]"}
            return 404, {"error": {**error, "root_cause": [error]}, "status": 404}
        if method in ("POST", "PUT") and path == "/_bulk":
            return self.bulk(body)
        return 400, {"error": {"type": "illegal_argument_exception", "reason": f"no handler for {method} {path}"}}

    def bulk(self, body: bytes) -> tuple[int, Any]:
        if self.bulk_statuses:
            status = self.bulk_statuses.pop(0)
            error = {"type": "es_rejected_execution_exception", "reason": "rejected execution of bulk"}
            return status, {"error": {**error, "root_cause": [error]}, "status": status}
        lines = [orjson.loads(line) for line in body.splitlines() if line]
        items = []
        for action, doc in zip(lines[::2], lines[1::2], strict=True):
            op = action["index"]
            status, error = self.item_errors.pop(op["_id"], (0, None))
            if error is not None:
                items.append({"index": {"_index": op["_index"], "_id": op["_id"], "status": status, "error": error}})
                continue
            created = (op["_index"], op["_id"]) not in self.documents
            self.documents[(op["_index"], op["_id"])] = doc
            items.append(
                {"index": {"_index": op["_index"], "_id": op["_id"], "status": 201 if created else 200, "result": "created" if created else "updated"}}
            )
        return 200, {"took": 1, "errors": any("error" in i["index"] for i in items), "items": items}

    def bulk_bodies(self) -> list[list[dict[str, Any]]]:
        return [[orjson.loads(line) for line in r.body.splitlines() if line] for r in self.requests if r.path == "/_bulk"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        es = self.server.es
        es.requests.append(Request(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, answer = es.answer(self.command, path, body)
        out = orjson.dumps(answer)
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_PUT = do_POST = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    es: FakeElasticsearch


@pytest.fixture
def es() -> Iterator[tuple[FakeElasticsearch, str]]:
    pytest.importorskip("elasticsearch", reason="the elasticsearch extra is not installed: pip install 'affluent[elasticsearch]'")
    server = _Server(("127.0.0.1", 0), _Handler)
    server.es = FakeElasticsearch()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.es, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def snapshot(coin: str, last_updated_ms: int, **changes: Any) -> Record:
    value = {
        "coin_id": coin,
        "symbol": coin[:3],
        "name": coin.title(),
        "vs_currency": "usd",
        "rank": 1,
        "price": 64_000.5,
        "market_cap": 1.26e12,
        "volume_24h": 3.1e10,
        "high_24h": 65_000.0,
        "low_24h": 63_000,  # an int: indexed as a number all the same
        "price_change_24h": -812.25,
        "change_1h_pct": 0.12,
        "change_24h_pct": -1.25,
        "change_7d_pct": -7.5,
        "circulating_supply": 19_700_000.0,
        "last_updated_ms": last_updated_ms,
        "snapshot_ms": last_updated_ms + 30_000,
        "in_top": 1,
    }
    value.update(changes)
    return Record(value=value, key=coin, timestamp_ms=last_updated_ms)


def markets_sink(url: str, **kw: Any) -> ElasticsearchSink:
    return ElasticsearchSink(url, INDEX, template=MARKETS_TEMPLATE, doc_id=market_doc_id, document=market_document, **kw)


@pytest.fixture
def make_sink() -> Iterator[Callable[..., ElasticsearchSink]]:
    """markets_sink, closed at the end of the test."""
    made: list[ElasticsearchSink] = []

    def make(url: str, **kw: Any) -> ElasticsearchSink:
        made.append(markets_sink(url, **kw))
        return made[-1]

    yield make
    for sink in made:
        sink.close()


T0 = 1_714_564_800_123  # 2024-05-01T12:00:00.123Z


def test_open_puts_a_template_with_typed_fields(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]) -> None:
    server, url = es
    sink = make_sink(url)
    sink.open()
    put = server.templates["affluent-crypto-markets"]
    assert put["index_patterns"] == [INDEX] and put["priority"] == 200
    props = put["template"]["mappings"]["properties"]
    types = {f: p["type"] for f, p in props.items()}
    assert types == {
        **dict.fromkeys(["coin_id", "symbol", "name", "vs_currency"], "keyword"),
        "rank": "integer",
        **dict.fromkeys(
            [
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
            ],
            "double",
        ),
        "last_updated": "date",
        "snapshot_time": "date",
        "in_top": "boolean",
    }
    assert put["template"]["mappings"]["dynamic"] == "strict"
    assert props["last_updated"]["format"] == "strict_date_optional_time"


def test_open_refuses_an_index_made_without_the_template(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]) -> None:
    server, url = es
    # what CryptoViz's dynamic mapping made of string-typed numbers
    server.mappings[INDEX] = {"properties": {"coin_id": {"type": "keyword"}, "price": {"type": "text"}, "change_24h_pct": {"type": "text"}}}
    sink = make_sink(url)
    with pytest.raises(ConfigError, match=r"price is text, not double; change_24h_pct is text, not double"):
        sink.open()
    server.mappings[INDEX] = {"properties": {"coin_id": {"type": "keyword"}, "price": {"type": "double"}}}
    sink.open()  # an index of the right types is fine
    assert [r.path for r in server.requests if r.method == "GET"] == [f"/{INDEX}/_mapping"] * 2


def test_flush_sends_one_bulk_of_typed_documents(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]) -> None:
    server, url = es
    sink = make_sink(url)
    sink.open()
    sink.write([snapshot("bitcoin", T0), snapshot("ethereum", T0 + 1, price=3_000.0, change_24h_pct=-0.5)])
    sink.write([snapshot("solana", T0 + 2, in_top=0)])
    assert server.bulk_bodies() == []  # buffered until flush
    sink.flush()
    [bulk] = server.bulk_bodies()
    [request] = [r for r in server.requests if r.path == "/_bulk"]
    assert request.method in ("POST", "PUT") and "ndjson" in request.headers["content-type"]
    actions, docs = bulk[::2], bulk[1::2]
    assert actions == [{"index": {"_index": INDEX, "_id": f"{c}:{T0 + i}"}} for i, c in enumerate(["bitcoin", "ethereum", "solana"])]
    btc = docs[0]
    assert set(btc) == set(MARKETS_TEMPLATE["mappings"]["properties"])
    assert btc["price"] == 64_000.5 and type(btc["price"]) is float
    assert btc["low_24h"] == 63_000.0 and type(btc["rank"]) is int
    assert btc["price_change_24h"] == -812.25 and btc["change_24h_pct"] == -1.25 and btc["change_7d_pct"] == -7.5  # signed
    assert docs[1]["change_24h_pct"] == -0.5
    assert btc["last_updated"] == "2024-05-01T12:00:00.123+00:00" and btc["snapshot_time"] == "2024-05-01T12:00:30.123+00:00"
    assert all(datetime.fromisoformat(d[f]).utcoffset() is not None for d in docs for f in ("last_updated", "snapshot_time"))
    assert (btc["in_top"], docs[2]["in_top"]) == (True, False)
    # the bytes on the wire: numbers are JSON numbers, not strings
    assert b'"price":64000.5' in request.body and b'"change_24h_pct":-1.25' in request.body and b'"rank":1' in request.body
    assert len(server.documents) == 3
    sink.flush()  # nothing buffered: no request
    assert len(server.bulk_bodies()) == 1


def test_writing_the_same_records_twice_gives_the_same_ids(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]) -> None:
    server, url = es
    sink = make_sink(url)
    records = [snapshot("bitcoin", T0), snapshot("ethereum", T0)]
    sink.write(records)
    sink.flush()
    sink.write(records)  # a replay after a crash
    sink.write(records)  # twice in one batch: one document per id
    sink.flush()
    first, second = server.bulk_bodies()
    assert first[::2] == second[::2] == [{"index": {"_index": INDEX, "_id": f"{c}:{T0}"}} for c in ("bitcoin", "ethereum")]
    assert first[1::2] == second[1::2]
    assert sorted(server.documents) == [(INDEX, f"bitcoin:{T0}"), (INDEX, f"ethereum:{T0}")]


def test_discard_drops_the_buffer(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]) -> None:
    server, url = es
    sink = make_sink(url)
    sink.write([snapshot("bitcoin", T0)])
    sink.discard()
    sink.flush()
    assert server.bulk_bodies() == []
    sink.write([snapshot("ethereum", T0)])
    sink.flush()
    assert [a["index"]["_id"] for a in server.bulk_bodies()[0][::2]] == [f"ethereum:{T0}"]


@pytest.mark.parametrize("status", [429, 503])
def test_a_refused_bulk_is_transient_and_loses_nothing(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink], status: int) -> None:
    server, url = es
    sink = make_sink(url)
    sink.write([snapshot("bitcoin", T0), snapshot("ethereum", T0)])
    server.bulk_statuses.append(status)
    with pytest.raises(TransientError, match=rf"cannot index documents for now: .*{status}"):
        sink.flush()
    assert server.documents == {}
    sink.flush()  # the runtime's retry
    refused, sent = server.bulk_bodies()
    assert refused == sent  # the client did not retry on its own; the second flush sent everything again
    assert sorted(i for _, i in server.documents) == [f"bitcoin:{T0}", f"ethereum:{T0}"]


def test_a_document_refused_for_now_is_transient(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]) -> None:
    server, url = es
    sink = make_sink(url)
    sink.write([snapshot("bitcoin", T0), snapshot("ethereum", T0)])
    server.item_errors[f"ethereum:{T0}"] = (429, {"type": "es_rejected_execution_exception", "reason": "queue full"})
    with pytest.raises(SinkUnavailableError, match=rf"'ethereum:{T0}' \(HTTP 429\): es_rejected_execution_exception: queue full"):
        sink.flush()
    sink.flush()
    assert sorted(i for _, i in server.documents) == [f"bitcoin:{T0}", f"ethereum:{T0}"]


def test_a_mapping_error_names_the_document_and_the_reason(es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]) -> None:
    server, url = es
    sink = make_sink(url)
    sink.write([snapshot("bitcoin", T0)])
    reason = "failed to parse field [price] of type [double] in document with id 'bitcoin:1714564800123'"
    server.item_errors[f"bitcoin:{T0}"] = (400, {"type": "mapper_parsing_exception", "reason": reason})
    with pytest.raises(DocumentRejectedError) as caught:
        sink.flush()
    assert not isinstance(caught.value, TransientError)
    assert caught.value.doc_id == f"bitcoin:{T0}" and caught.value.reason == f"mapper_parsing_exception: {reason}"
    assert f"refused document 'bitcoin:{T0}' (HTTP 400): mapper_parsing_exception: {reason}" in str(caught.value)


def test_write_refuses_documents_that_do_not_fit_and_takes_none_of_the_batch(
    es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink]
) -> None:
    server, url = es
    sink = make_sink(url)
    bad = [
        (snapshot("bitcoin", T0, price="64000.5"), r"price must be a number, got '64000.5'"),  # CryptoViz's numbers as text
        (snapshot("bitcoin", T0, rank=True), r"rank must be a 32-bit integer"),
        (snapshot("bitcoin", T0, snapshot_ms="2024-05-01"), r"snapshot_ms must be UTC epoch milliseconds"),
        (snapshot("bitcoin", T0, in_top=2), r"in_top must be 0, 1 or a bool"),
        (snapshot("", T0), r"needs a coin_id"),
    ]
    for record, message in bad:
        with pytest.raises(BadDocumentError, match=message):
            sink.write([snapshot("ethereum", T0), record])
    generic = ElasticsearchSink(url, INDEX, template=MARKETS_TEMPLATE, doc_id=lambda r: r.key or "")
    with pytest.raises(BadDocumentError, match=r"has field 'volume', which the template has not"):
        generic.write([Record(value={"coin_id": "x", "volume": 1.0}, key="x")])
    with pytest.raises(BadDocumentError, match=r"last_updated must be an ISO-8601 time with its offset"):
        generic.write([Record(value={"coin_id": "x", "last_updated": "2024-05-01T12:00:00"}, key="x")])  # naive
    sink.flush()
    generic.flush()
    assert server.bulk_bodies() == []  # nothing of those batches was buffered


def test_nan_is_a_missing_value() -> None:
    doc = market_document(snapshot("bitcoin", T0, change_1h_pct=float("nan"), high_24h=None))
    assert doc["change_1h_pct"] is None and doc["high_24h"] is None and doc["change_24h_pct"] == -1.25


def test_credentials_from_the_url_or_arguments_are_sent_but_never_shown(
    es: tuple[FakeElasticsearch, str], make_sink: Callable[..., ElasticsearchSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the client logs requests and their headers at DEBUG
    server, url = es
    password = "s3cr3t-pa%ss"  # percent-encoded in the URL
    with_user = url.replace("http://", "http://elastic:s3cr3t-pa%25ss@")
    sink = make_sink(with_user)
    sink.open()
    sink.write([snapshot("bitcoin", T0)])
    sink.flush()
    basic = base64.b64encode(f"elastic:{password}".encode()).decode()
    assert {r.headers["authorization"] for r in server.requests} == {f"Basic {basic}"}
    keyed = make_sink(url, api_key="a-p1-key")
    keyed.open()
    assert server.requests[-1].headers["authorization"] == "ApiKey a-p1-key"
    assert sink.url == url and password not in repr(sink) and "a-p1-key" not in repr(keyed)

    # an unreachable store: the error and the logs name the store, never the credentials
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    gone = make_sink(f"http://elastic:s3cr3t-pa%25ss@127.0.0.1:{closed}")
    gone.write([snapshot("bitcoin", T0)])
    with pytest.raises(TransientError) as caught:
        gone.flush()
    assert f"127.0.0.1:{closed}" in str(caught.value) and "Connection refused" in str(caught.value)
    with pytest.raises(ConfigError) as bad_url:
        markets_sink("ftp://elastic:s3cr3t-pa%25ss@127.0.0.1")
    with pytest.raises(ConfigError) as twice:
        markets_sink(with_user, api_key="a-p1-key")
    shown = [str(caught.value), repr(caught.value.__cause__), str(bad_url.value), str(twice.value), caplog.text]
    assert "> Authorization: Basic <hidden>" in caplog.text and "> Authorization: ApiKey <hidden>" in caplog.text  # logged, hidden
    for text in shown:
        for secret in (password, "s3cr3t-pa%25ss", basic, "a-p1-key"):
            assert secret not in text


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "elasticsearch", None)  # as when the extra is not installed: import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'affluent\[elasticsearch\]'"):
        markets_sink("http://127.0.0.1:9200")
