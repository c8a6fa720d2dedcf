"""A real HTTP server on loopback that serves GBFS files from memory, scriptable per path.

Each path serves, in this order of precedence:
- scripted replies queued with `script(path, ...)`, one per request (errors, 429 with Retry-After, HTML...);
- faults injected with `flaky(paths, rate=..., seed=...)` on about `rate` of the requests (drawn from a
  seeded generator per path, the kinds taken in turn): the same seed gives the same faults, in the same
  order of requests, in every run;
- a sequence set with `sequence(path, items)`, advancing one item per request and repeating the last;
- a static body set with `put(path, doc)` or a function of the server set with `route(path, fn)`.
200 replies carry an ETag (or a Last-Modified) and conditional requests get 304 when nothing changed.
`{{base}}` in bodies becomes the server's base URL, so gbfs.json can list absolute feed URLs.
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

#: recorded GBFS files, one folder per system and version
HTTP = Path(__file__).resolve().parents[1] / "fixtures" / "bikes" / "http"


def doc(system: str, name: str) -> dict[str, Any]:
    """One recorded GBFS document."""
    return orjson.loads((HTTP / system / name).read_bytes())


class Clock:
    """A monotonic clock the test moves by hand (a source's `clock=`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    #: announce the whole body's length but send only half of it, then close the connection
    cut_connection: bool = False


def as_body(doc: Any) -> bytes:
    if isinstance(doc, bytes):
        return doc
    if isinstance(doc, str):
        return doc.encode()
    return orjson.dumps(doc)


def error_reply(kind: str) -> Reply:
    """Replies a broken feed gives: '503', '500', '404', '429', 'html', 'truncated', 'cut'."""
    if kind.isdigit():
        headers = {"Retry-After": "0"} if kind == "429" else {}
        return Reply(int(kind), b'{"error": "unavailable"}', headers)
    if kind == "html":
        return Reply(200, b"<!DOCTYPE html><html><body><h1>Maintenance</h1></body></html>", content_type="text/html; charset=utf-8")
    if kind == "truncated":
        return Reply(200, b'{"last_updated": 1773136800, "ttl": 60, "version": "2.2", "data": {"stations": [{"station_id": "62')
    if kind == "cut":
        return Reply(200, b'{"last_updated": 1773136800, "ttl": 60, "version": "2.2", "data": {"stations": []}}', cut_connection=True)
    raise ValueError(kind)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that gave up (a timeout test): nothing to report
        super().handle_error(request, client_address)


class GBFSServer:
    def __init__(self, *, validators: str | None = "etag") -> None:
        self.files: dict[str, Callable[[GBFSServer], Reply | bytes | None]] = {}
        self.scripts: dict[str, deque[Reply]] = {}
        self.sequences: dict[str, list[Any]] = {}
        self.counts: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.validators = validators
        self.lock = threading.Lock()
        #: path -> (fault rate, fault kinds, the path's own seeded generator)
        self.fault_plans: dict[str, tuple[float, tuple[str, ...], random.Random]] = {}
        #: (path, kind) -> faults served
        self.faults: Counter[tuple[str, str]] = Counter()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # -- content -----------------------------------------------------------------------------------------
    def put(self, path: str, doc: Any) -> None:
        body = as_body(doc)
        self.files[path] = lambda _s: body

    def route(self, path: str, fn: Callable[[GBFSServer], Reply | bytes | None]) -> None:
        self.files[path] = fn

    def script(self, path: str, *replies: Reply | str) -> None:
        q = self.scripts.setdefault(path, deque())
        q.extend(r if isinstance(r, Reply) else error_reply(r) for r in replies)

    def flaky(self, paths: Iterable[str], *, rate: float, seed: int, kinds: Iterable[str] = ("html", "truncated", "500", "503")) -> None:
        """Answer about `rate` of the requests for each path with a fault: `kinds` in turn (see `error_reply`).

        Each path draws from its own generator seeded with (seed, path), so the n-th request for a path
        gets the same answer in every run, whatever the other paths and threads do; taking the kinds in
        turn gives every kind its share even in a short run.
        """
        with self.lock:
            for path in paths:
                self.fault_plans[path] = (rate, tuple(kinds), random.Random(f"{seed}:{path}"))

    def faults_served(self, path: str | None = None) -> int:
        return sum(n for (p, _), n in self.faults.items() if path is None or p == path)

    def sequence(self, path: str, items: Iterable[Any]) -> None:
        """Items: documents, bytes, Reply, or an error kind string ('503', 'html', ...)."""
        self.sequences[path] = list(items)
        self.counts[path] = 0

    def served(self, path: str) -> int:
        return self.counts.get(path, 0)

    def load_folder(self, folder: Path, prefix: str = "/") -> None:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                self.put(prefix + f.name, f.read_bytes())

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p == path]

    # -- serving -----------------------------------------------------------------------------------------
    def _reply(self, path: str) -> Reply:
        with self.lock:
            q = self.scripts.get(path)
            if q:
                return q.popleft()
            plan = self.fault_plans.get(path)
            if plan is not None:
                rate, kinds, rng = plan
                if rng.random() < rate:
                    kind = kinds[sum(n for (p, _), n in self.faults.items() if p == path) % len(kinds)]
                    self.faults[path, kind] += 1
                    return error_reply(kind)
            if path in self.sequences:
                items = self.sequences[path]
                i = min(self.counts[path], len(items) - 1)
                self.counts[path] += 1
                item = items[i]
                if isinstance(item, str) and not item.lstrip().startswith(("{", "<")):
                    return error_reply(item)
                return item if isinstance(item, Reply) else Reply(body=as_body(item))
            fn = self.files.get(path)
        if fn is None:
            return Reply(404, b'{"error": "not found"}')
        got = fn(self)
        if got is None:
            return Reply(404, b'{"error": "not found"}')
        return got if isinstance(got, Reply) else Reply(body=got)

    def start(self) -> GBFSServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server.lock:
                    server.requests.append((path, headers))
                reply = server._reply(path)
                body = reply.body.replace(b"{{base}}", server.base_url.encode())
                out_headers = dict(reply.headers)
                if reply.status == 200 and not reply.cut_connection and server.validators:
                    tag = hashlib.sha1(body).hexdigest()[:16]
                    if server.validators == "etag":
                        out_headers["ETag"] = f'"{tag}"'
                        if headers.get("if-none-match") == f'"{tag}"':
                            self._send(304, b"", out_headers, reply.content_type)
                            return
                    else:  # Last-Modified: a date derived from the content, so that a change moves it
                        stamp = formatdate(1_700_000_000 + int(tag[:6], 16), usegmt=True)
                        out_headers["Last-Modified"] = stamp
                        if headers.get("if-modified-since") == stamp:
                            self._send(304, b"", out_headers, reply.content_type)
                            return
                if reply.cut_connection:
                    self.send_response(200)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(reply.status, body, out_headers, reply.content_type)

            def _send(self, status: int, body: bytes, headers: dict[str, str], content_type: str) -> None:
                self.send_response(status)
                if status != 304:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(body)

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self._base_url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="gbfs-test-server", daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        # kept once stopped: a request still being answered as the server stops must not fail on it
        assert self._base_url is not None, "the server was never started"
        return self._base_url

    def url(self, path: str) -> str:
        return self.base_url + path

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> GBFSServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- waiting for pipelines ------------------------------------------------------------------------------------
def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, errors: list[BaseException] | None = None) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        if errors:
            raise errors[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def pipelines_drained(log: Any, pipelines: Iterable[Any]) -> bool:
    """Every pipeline committed every record its input topics hold."""
    for p in pipelines:
        for topic in p.inputs:
            if not log.topic_exists(topic):
                return False
            committed = log.committed(p.name, topic)
            for part in log.describe_topic(topic).partitions:
                if committed.get(part.partition, part.start_offset) < part.end_offset:
                    return False
    return True
