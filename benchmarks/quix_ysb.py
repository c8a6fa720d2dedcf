"""The YSB query in Quix Streams (a peer), on the same Kafka topic; run by benchmarks/ysb_kafka.py.

    <python with quixstreams 3.x> benchmarks/quix_ysb.py BOOTSTRAP ADS_JSON EVENTS VIEWS GUARANTEE

Reads `ad-events`, keeps views, re-keys by campaign (Quix's group_by: a repartition topic), counts
in 10 s tumbling event-time windows with 2.5 s grace, and prints one JSON line: the seconds from the
first record read to the last view counted, the seconds spent joining the consumer group, and the
windows it closed.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from quixstreams import Application


def main() -> int:
    bootstrap, ads_path, n_events, n_views, guarantee = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with open(ads_path) as f:
        ads = json.load(f)
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-ysb-{guarantee}",
        auto_offset_reset="earliest",
        processing_guarantee=guarantee,
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        loglevel="WARNING",
    )
    topic = app.topic("ad-events", value_deserializer="json", timestamp_extractor=lambda value, headers, ts, kind: value["event_time"])
    started = time.monotonic()
    seen = {"events": 0, "views": 0, "first": 0.0, "last": 0.0}
    windows: list[list[object]] = []

    def read(_: object) -> None:
        if seen["events"] == 0:
            seen["first"] = time.monotonic()
        seen["events"] += 1

    def counted(_: object) -> None:
        seen["views"] += 1
        if seen["views"] >= n_views:
            seen["last"] = time.monotonic()
            app.stop()

    sdf = app.dataframe(topic)
    sdf = sdf.update(read)
    sdf = sdf.filter(lambda e: e["event_type"] == "view")
    sdf = sdf.group_by(lambda e: ads[e["ad_id"]], name="campaign")
    sdf = sdf.update(counted)
    sdf = sdf.tumbling_window(duration_ms=10_000, grace_ms=2_500).count().final()
    sdf = sdf.update(lambda w, key, ts, headers: windows.append([key.decode() if isinstance(key, bytes) else key, w["start"], w["value"]]), metadata=True)
    app.run()
    if seen["events"] < n_events:
        print(f"read {seen['events']} of {n_events} events", file=sys.stderr)
        return 1
    result = {"seconds": seen["last"] - seen["first"], "join_seconds": seen["first"] - started, "views": seen["views"], "windows": windows}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
