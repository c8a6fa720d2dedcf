"""A reader that follows the end of a partition while a writer appends never skips a batch."""

from __future__ import annotations

import threading
from pathlib import Path

from affluent.core.log import OutgoingBatch, TopicConfig
from affluent.core.sqlite_log import MAX_BATCH_RECORDS, SQLiteLog


def test_a_reader_at_the_end_sees_every_batch_of_multi_batch_appends(tmp_path: Path) -> None:
    writer = SQLiteLog(tmp_path / "log.db")
    writer.create_topic("t", TopicConfig(retention_ms=None))
    per_append = 2 * MAX_BATCH_RECORDS + 7  # three stored batches committed in one transaction
    appends = 12
    done = threading.Event()

    def write() -> None:
        for a in range(appends):
            n = per_append
            writer.append("t", OutgoingBatch([None] * n, list(range(a * n, (a + 1) * n)), [0] * n))
        done.set()

    reader = SQLiteLog(tmp_path / "log.db")
    seen: list[int] = []
    offset = 0
    thread = threading.Thread(target=write)
    thread.start()
    while True:
        finished = done.is_set()
        for b in reader.iter_batches("t", 0, offset, max_records=1_000_000):
            assert b.base_offset == offset, f"skipped offsets {offset}..{b.base_offset}"
            seen.extend(b.values)
            offset = b.next_offset
        if finished:
            break
    thread.join()
    assert seen == list(range(appends * per_append))
