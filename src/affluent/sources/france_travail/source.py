"""Every France Travail offer, exactly once: a backfill from `since`, then incremental polls.

The source walks creation-date windows in time order. A window is searched with `minCreationDate` /
`maxCreationDate` (whole seconds, `sort=1`), one page of 150 per poll. When page 0 says more match than
`range` can reach (3,150), the window is split: in equal parts sized from the total, down to windows of
one second (sent as `[t, t+1]`, which covers second `t` whether the API's bounds are inclusive or not);
a second that still holds more is split by département. Only offers of such a second that name no
département, or more than 3,150 in one département and second, are out of reach: such windows are
logged and counted (`affluent_france_travail_capped_windows_total`).

The position saved with each poll's records holds the cursor (every offer created before it is
captured), the windows still to fetch and the next page: a restart resumes at that page, so nothing
is skipped, and the pipeline drops what comes twice (an offer is keyed by id and versioned by
`dateActualisation`). Once the backfill is done, a window `[cursor - overlap, now]` is searched every
`interval_s`: the overlap catches offers the API indexes some minutes after their creation. A search
by creation date does not bring an offer back when it is updated: between polls, every
`refresh_interval_s` (1 h), the offers created in the last `refresh_s` (2 days) are searched again, and
those whose `dateActualisation` moved are sent again. Updates of older offers are not seen: the API
has no "updated since" search.

Faults heal on their own: the poll raises `SourceUnavailableError` with the wait before the next try
(a 429's Retry-After exactly; 5xx, timeouts, HTML and truncated bodies 1 s, 2 s, 4 s… with jitter, up
to `max_backoff_s`), and the next poll goes on from the same page.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import SourceUnavailableError
from affluent.core.metrics import METRICS, Metrics
from affluent.core.records import Record
from affluent.core.sources import Source, SourcePoll
from affluent.sources.france_travail.client import FranceTravailClient
from affluent.sources.france_travail.offers import offer_time_ms, parse_api_time_ms
from affluent.sources.replay import ReplaySource

log = logging.getLogger("affluent.sources.france_travail")

#: a window is split in parts expected to hold this many offers each (well under the 3,150 reachable, as offers bunch)
SPLIT_TARGET = 2000
MAX_PARTS = 64


def api_time(s: int) -> str:
    """Epoch seconds -> the API's `yyyy-MM-dd'T'HH:mm:ss'Z'`."""
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Crawl:
    """Windows still to search, in time order, [start_s, end_s, département or None, capped], and the next page."""

    def __init__(self, plan: list[list[Any]] | None = None, next_: int = 0) -> None:
        self.plan = plan or []
        self.next = next_

    def saved(self) -> dict[str, Any]:
        return {"plan": self.plan, "next": self.next}

    @classmethod
    def load(cls, doc: Any) -> _Crawl:
        return cls([list(w) for w in doc.get("plan", [])], int(doc.get("next", 0))) if doc else cls()


class FranceTravailSource(Source):
    """Polls /v2/offres/search; emits each raw offer (key: its id, event time: its creation).

    since_ms: the backfill start on a first run (a stored position wins: a restart resumes).
    departements: the codes a one-second window is split by (the referentials' départements).
    refresh_s, refresh_interval_s: every refresh_interval_s, the offers created in the last refresh_s
    are searched again, so that their updates (a later dateActualisation) are seen: a search by
    creation date does not bring an offer back when it changes. 0 turns it off.
    first_backoff_s: the wait after a first failure without Retry-After; it doubles at each next one.
    """

    mode = "live"

    def __init__(
        self,
        client: FranceTravailClient,
        *,
        since_ms: int,
        departements: Iterable[str],
        interval_s: float = 60.0,
        overlap_s: float = 300.0,
        refresh_s: float = 2 * 86400.0,
        refresh_interval_s: float = 3600.0,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        name: str = "france-travail",
        metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.client = client
        self.name = name
        self.since_s = since_ms // 1000
        self.departements = sorted(departements)
        self.interval_s = interval_s
        self.overlap_s = int(overlap_s)
        self.refresh_s = int(refresh_s)
        self.refresh_interval_s = refresh_interval_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.metrics = metrics or METRICS
        self.clock_ms = clock_ms
        # the position
        self.cursor_s = self.since_s
        self.main = _Crawl()
        self.sweep = _Crawl()
        self.backfilled = False
        self.backfill_end_s: int | None = None
        self.backfill_total: int | None = None
        self.refresh_due_s: int | None = None
        # this run's progress, for the CLI's progress bar
        self.windows_done = 0
        self.offers = 0
        self.updates = 0
        self.sweeps = 0
        self.started = time.monotonic()
        self._requests_before = client.requests
        #: when the last requests left, for the request rate the progress bar shows
        self._request_times: deque[float] = deque(maxlen=256)
        self.failures = 0
        self.error: str | None = None
        #: id -> (dateActualisation, created ms) of offers emitted lately: overlapping windows and refreshes re-send them
        self._sent: dict[str, tuple[Any, int]] = {}

    # -- position ------------------------------------------------------------------------------------------
    def open(self, position: Any | None) -> None:
        if position:
            self.cursor_s = int(position["cursor_s"])
            self.main = _Crawl.load(position.get("main"))
            self.sweep = _Crawl.load(position.get("sweep"))
            self.backfilled = bool(position.get("backfilled"))
            self.backfill_end_s = position.get("backfill_end_s")
            self.backfill_total = position.get("backfill_total")
            due = position.get("refresh_due_s")
            # a shorter interval than the one that set it takes effect now
            self.refresh_due_s = None if due is None else min(int(due), self.clock_ms() // 1000 + int(self.refresh_interval_s))
            self.since_s = int(position.get("since_s", self.since_s))
            log.info("source %s: resuming at %s (%d windows to search)", self.name, api_time(self.cursor_s), len(self.main.plan))

    def _position(self) -> dict[str, Any]:
        return {
            "cursor_s": self.cursor_s,
            "main": self.main.saved(),
            "sweep": self.sweep.saved(),
            "backfilled": self.backfilled,
            "since_s": self.since_s,
            "backfill_end_s": self.backfill_end_s,
            "backfill_total": self.backfill_total,
            "refresh_due_s": self.refresh_due_s,
        }

    # -- progress ------------------------------------------------------------------------------------------------
    @property
    def requests(self) -> int:
        """Requests this source made (the referentials, fetched before, are not among them)."""
        return self.client.requests - self._requests_before

    def request_rate(self, over_s: float = 10.0) -> float:
        """Requests per second over the last `over_s` seconds."""
        now = time.monotonic()
        recent = [t for t in self._request_times if t > now - over_s]
        return len(recent) / min(over_s, max(now - self.started, 1.0))

    @property
    def windows_left(self) -> int:
        return len(self.main.plan)

    @property
    def backfill_progress(self) -> float:
        """How much of the backfill's time span is done, 0..1."""
        if self.backfilled:
            return 1.0
        end = self.backfill_end_s or self.clock_ms() // 1000
        span = max(1, end - self.since_s)
        return min(1.0, max(0.0, (self.cursor_s - self.since_s) / span))

    def describe(self) -> str:
        return f"France Travail API {self.client.api_url}"

    # -- polling -----------------------------------------------------------------------------------------------
    def poll(self) -> SourcePoll:
        now_s = self.clock_ms() // 1000
        crawl = self.main
        if not crawl.plan:
            due = self.cursor_s + self.interval_s
            if self.backfilled and now_s < due:
                crawl = self.sweep
                if not crawl.plan and self.refresh_s > 0 and now_s >= (self.refresh_due_s or 0):
                    crawl.plan = [[max(self.since_s, self.cursor_s - self.refresh_s), self.cursor_s, None, False]]
                    crawl.next = 0
                    self.refresh_due_s = now_s + int(self.refresh_interval_s)
                if not crawl.plan:
                    wait = min(due, self.refresh_due_s or due) - now_s if self.refresh_s > 0 else due - now_s
                    return SourcePoll(wait_s=max(0.0, wait), position=self._position())
            else:
                start = self.cursor_s - self.overlap_s if self.backfilled else self.cursor_s
                crawl.plan = [[start, max(now_s, start + 1), None, False]]
                crawl.next = 0
                if not self.backfilled:
                    self.backfill_end_s = crawl.plan[0][1]
        window = crawl.plan[0]
        try:
            self._request_times.append(time.monotonic())
            page = self.client.search(self._params(window), crawl.next)
        except SourceUnavailableError as exc:
            raise self._failed(exc) from exc
        if self.failures:
            log.warning("source %s: the API answers again after %d failed attempts", self.name, self.failures)
            self.failures, self.error = 0, None
        if crawl.next == 0 and crawl is self.main and not self.backfilled and self.backfill_total is None:
            self.backfill_total = page.total
        if crawl.next == 0 and page.total > self.client.reachable and not window[3]:
            self._split(crawl, page.total)
            return SourcePoll(position=self._position())
        records = self._records(page.offers, refresh=crawl is self.sweep)
        crawl.next = page.last + 1
        if not page.more or not page.offers or crawl.next >= self.client.reachable:
            self._window_done(crawl)
        return SourcePoll(records=records, wait_s=0.0, position=self._position())

    def _params(self, window: list[Any]) -> dict[str, str]:
        params = {"minCreationDate": api_time(window[0]), "maxCreationDate": api_time(window[1]), "sort": "1"}
        if window[2]:
            params["departement"] = window[2]
        return params

    def _records(self, offers: list[Any], *, refresh: bool = False) -> list[Record]:
        out = []
        sent = self._sent
        for o in offers:
            oid = o.get("id") if isinstance(o, dict) else None
            # an offer without an id is remembered by its content: it is a dead letter once, not at every poll
            seen_as = oid if isinstance(oid, str) else "\x00" + hashlib.blake2b(orjson.dumps(o), digest_size=12).hexdigest()
            version = o.get("dateActualisation") if isinstance(o, dict) else None
            if seen_as in sent and sent[seen_as][0] == version:
                continue  # the same version, seen again through an overlapping window or a refresh
            if refresh and seen_as in sent:
                self.updates += 1
            sent[seen_as] = (version, offer_time_ms(o))
            out.append(Record(value=o, key=oid if isinstance(oid, str) else None, timestamp_ms=offer_time_ms(o)))
        self.offers += len(out)
        self.metrics.inc("affluent_france_travail_offers_total", len(out), source=self.name)
        return out

    def _split(self, crawl: _Crawl, total: int) -> None:
        start, end, dept, _ = crawl.plan[0]
        if dept is None and end - start > 1:
            parts = min(max(2, math.ceil(total / SPLIT_TARGET)), MAX_PARTS, end - start)
            bounds = [start + (end - start) * i // parts for i in range(parts + 1)]
            subs = [[bounds[i], bounds[i + 1], None, False] for i in range(parts)]
        elif dept is None:
            log.warning(
                "source %s: %d offers created in the second %s: searched département by département (offers naming none are out of reach)",
                self.name,
                total,
                api_time(start),
            )
            subs = [[start, end, d, False] for d in self.departements]
        else:
            reach = self.client.reachable
            log.error(
                "source %s: %d offers created in %s..%s in département %s: the API reaches %d, up to %d are out of reach",
                *(self.name, total, api_time(start), api_time(end), dept, reach, total - reach),
            )
            self.metrics.inc("affluent_france_travail_capped_windows_total", source=self.name)
            subs = [[start, end, dept, True]]
        crawl.plan[0:1] = subs
        crawl.next = 0

    def _window_done(self, crawl: _Crawl) -> None:
        done = crawl.plan.pop(0)
        crawl.next = 0
        self.windows_done += 1
        if crawl is not self.main:
            self.sweeps += 0 if crawl.plan else 1
            return
        if crawl.plan:
            self.cursor_s = max(self.cursor_s, min(w[0] for w in crawl.plan))
            return
        self.cursor_s = max(self.cursor_s, done[1])
        if not self.backfilled:
            self.backfilled = True
            self.refresh_due_s = self.cursor_s + int(self.refresh_interval_s)
            log.info(
                "source %s: backfill done up to %s (%d windows, %d offers): polling every %g s",
                *(self.name, api_time(self.cursor_s), self.windows_done, self.offers, self.interval_s),
            )
        horizon = (self.cursor_s - max(self.overlap_s, self.refresh_s) - 3600) * 1000
        if len(self._sent) > 10_000:
            self._sent = {k: v for k, v in self._sent.items() if v[1] >= horizon}

    def _failed(self, exc: SourceUnavailableError) -> SourceUnavailableError:
        """The same error, with the wait before the next try: a server's Retry-After, else backoff with jitter."""
        self.failures += 1
        wait = exc.retry_after_s
        if wait is None:
            wait = min(self.max_backoff_s, self.first_backoff_s * 2.0 ** min(self.failures - 1, 20)) * random.uniform(0.5, 1.5)
        wait = min(max(wait, self.first_backoff_s), self.max_backoff_s)
        self.error = str(exc)
        self.metrics.inc("affluent_france_travail_errors_total", source=self.name, kind=type(exc).__name__)
        return type(exc)(f"{exc} (attempt {self.failures}; the search resumes from the same page)", retry_after_s=wait)

    def close(self) -> None:
        self.client.close()


class FranceTravailReplaySource(ReplaySource):
    """Plays back a recording of `FranceTravailSource`, moving each offer's dates along with its event time.

    Looped, each round's offers are new ones: their ids get the round's number (`204BRZQ~2`).
    """

    def open(self, position: Any | None) -> None:
        super().open(position)
        if self.shift_to_now and self.polls and "shift_ms" not in (position or {}):
            # a backfill's first page holds the oldest offers: the recording's clock, not its first offer, becomes now
            self.shift_ms = now_ms() - self.polls[0][0]

    def describe(self) -> str:
        pace = "as fast as possible" if math.isinf(self.speed) else f"{self.speed:g}x"
        return f"OFFLINE replay of the recording {self.path.name} ({pace}, times moved to now), not live data"

    def poll(self) -> SourcePoll:
        result = super().poll()
        shift, round_ = self.shift_ms, self.loops
        if (shift or round_) and result.records:
            for r in result.records:
                v = r.value
                if isinstance(v, dict):
                    v = {**v, **{f: _shifted(v[f], shift) for f in ("dateCreation", "dateActualisation") if f in v}}
                    if round_ and isinstance(v.get("id"), str):
                        v["id"] = r.key = f"{v['id']}~{round_ + 1}"
                    r.value = v
        return result


def _shifted(value: Any, shift_ms: int) -> Any:
    ms = parse_api_time_ms(value)
    if ms is None:
        return value  # a malformed date stays malformed: the pipeline dead-letters it
    dt = datetime.fromtimestamp((ms + shift_ms) / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
