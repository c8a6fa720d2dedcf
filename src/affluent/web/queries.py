"""The dashboard's query layer: what pages read, from the log and the serving store only.

Nothing here touches a runtime: the same calls answer whether the apps run in the dashboard's own
process (`affluent up`) or in another one (`affluent web` beside `affluent run bikes`). The log
holds topics and each pipeline's published status; the serving store holds the live tables (SQLite
in WAL mode, which other processes read while a pipeline writes it).
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affluent.config import Settings, lake_path, serving_path
from affluent.core.clock import now_ms
from affluent.core.errors import AffluentError
from affluent.core.log import Log
from affluent.core.records import Record
from affluent.core.runtime import LEASE_RENEW_MS
from affluent.sinks.serving import serving_connection, serving_rows

#: a status older than this comes from a process that is gone
STALE_MS = 3 * LEASE_RENEW_MS + 1_000


class Queries:
    """Read-only access to one affluent folder's log and serving store, safe from any thread."""

    def __init__(self, settings: Settings, log: Log) -> None:
        self.settings = settings
        self.log = log
        self.serving_file = Path(serving_path(settings))
        self.lake_root = Path(lake_path(settings))
        self._local = threading.local()

    # -- serving store ----------------------------------------------------------------------------------------
    def _serving(self) -> sqlite3.Connection | None:
        con: sqlite3.Connection | None = getattr(self._local, "serving", None)
        if con is None:
            if not self.serving_file.exists():
                return None  # no app has written it yet
            con = serving_connection(self.serving_file, read_only=True)
            self._local.serving = con
        return con

    def serving_version(self) -> int:
        """Changes whenever any connection, in any process, commits to the serving store."""
        con = self._serving()
        if con is None:
            return -1
        return int(con.execute("PRAGMA data_version").fetchone()[0])

    def serving(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a query on the serving store; none while the table does not exist yet."""
        con = self._serving()
        if con is None:
            return []
        try:
            return serving_rows(con, sql, params)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    # -- log --------------------------------------------------------------------------------------------------
    def ends(self, topics: Sequence[str]) -> dict[str, int]:
        """The total end offset of each topic (0 for a topic that does not exist yet)."""
        out = {}
        for t in topics:
            try:
                out[t] = sum(self.log.end_offsets(t).values()) if self.log.topic_exists(t) else 0
            except AffluentError:
                out[t] = 0
        return out

    def tail(self, topic: str, n: int) -> list[Record]:
        """The last `n` records of `topic`, oldest first, across its partitions by time."""
        if n <= 0 or not self.log.topic_exists(topic):
            return []
        parts = []
        starts = self.log.start_offsets(topic)
        for part, end in self.log.end_offsets(topic).items():
            first = max(starts.get(part, 0), end - n)
            parts.append(list(self.log.iter_records(topic, part, first, max_records=end - first)))
        merged = list(heapq.merge(*parts, key=lambda r: (r.timestamp_ms, r.partition, r.offset)))
        return merged[-n:]

    def since(self, topic: str, offsets: dict[int, int], limit: int = 1_000) -> tuple[list[Record], dict[int, int]]:
        """Records of `topic` after `offsets` (per partition), and the offsets after them."""
        if not self.log.topic_exists(topic):
            return [], offsets
        out: list[Record] = []
        new = dict(offsets)
        starts = self.log.start_offsets(topic)
        for part, end in self.log.end_offsets(topic).items():
            first = max(offsets.get(part, 0), starts.get(part, 0))  # a partition seen for the first time: from its start
            if first >= end:
                new[part] = end
                continue
            first = max(first, end - limit)
            out.extend(self.log.iter_records(topic, part, first, max_records=end - first))
            new[part] = end
        out.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
        return out, new

    # -- pipelines ----------------------------------------------------------------------------------------------
    def pipelines(self) -> dict[str, dict[str, Any]]:
        """Each pipeline's last published status; one whose process is gone says so."""
        now = now_ms()
        out = self.log.statuses()
        for st in out.values():
            age = now - st["updated_ms"]
            st["age_ms"] = age
            if st["status"] in ("created", "running", "restarting") and age > STALE_MS:
                st["status"] = "gone"
                st["error"] = st.get("error") or f"no news from pid {st['pid']} on {st['host']} for {age / 1000:.0f} s"
        return out


__all__ = ["STALE_MS", "Queries"]
