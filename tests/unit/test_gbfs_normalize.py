"""GBFS 1.x (Vélib'-like), 2.2 (VéloZef), 2.3 and 3.0 files normalised to one schema."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from affluent.sources.gbfs import (
    Context,
    GBFSFeedError,
    GBFSVersionError,
    as_bool,
    as_count,
    as_id,
    envelope,
    localized,
    normalize_station_information,
    normalize_station_status,
    normalize_system_information,
    normalize_vehicles,
    parse_discovery,
    parse_document,
    parse_retry_after,
    parse_timestamp_ms,
    slug_for_url,
    version_family,
)

HTTP = Path(__file__).resolve().parents[1] / "fixtures" / "bikes" / "http"


def load(system: str, name: str) -> dict[str, Any]:
    return orjson.loads((HTTP / system / name).read_bytes())


def ctx_for(doc: dict[str, Any], system_id: str = "sys", language: str | None = None, tz: str | None = "Europe/Paris") -> Context:
    env = envelope(doc)
    assert env.last_updated_ms is not None
    return Context(system_id, env.last_updated_ms, language, tz)


def test_timestamps_from_every_version() -> None:
    assert parse_timestamp_ms(1773136800) == 1773136800000  # v2 POSIX seconds
    assert parse_timestamp_ms(1773136800123) == 1773136800123  # milliseconds by mistake
    assert parse_timestamp_ms("1773136800") == 1773136800000
    assert parse_timestamp_ms("2026-03-10T11:00:00+01:00") == 1773136800000  # v3 RFC 3339
    assert parse_timestamp_ms("2026-03-10T10:00:00Z") == 1773136800000
    assert parse_timestamp_ms("2026-03-10T10:00:00") == 1773136800000  # no offset: read as UTC
    for bad in (None, 0, -5, "", "soon", True, float("nan")):
        assert parse_timestamp_ms(bad) is None


def test_coercions() -> None:
    assert [as_bool(x) for x in (1, 0, "true", "0", True, None)] == [True, False, True, False, True, None]
    assert [as_count(x) for x in (3, 3.0, "4", -1, 2.5, "x", None, True)] == [3, 3, 4, None, None, None, None, None]
    assert [as_id(x) for x in (213688169, 42.0, " a1 ", "", None)] == ["213688169", "42", "a1", None, None]
    names = [{"text": "Place Bellecour", "language": "fr"}, {"text": "Bellecour Square", "language": "en-GB"}]
    assert localized(names, "en") == "Bellecour Square"
    assert localized(names, "de") == "Place Bellecour"
    assert localized("Gare", "fr") == "Gare"
    assert localized([{"text": "Gare", "language": 5}, {"no": "text"}], "fr") == "Gare"
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_versions() -> None:
    assert [version_family(v) for v in (None, "1.0", "1.1", "2.2", "2.3", "3.0", "3.1-RC2")] == [1, 1, 1, 2, 2, 3, 3]
    for bad in ("4.0", "banana", "2"):
        with pytest.raises(GBFSVersionError):
            version_family(bad)


def test_discovery_v2_language_keyed_and_v3_flat() -> None:
    v2 = parse_discovery(load("citybike_2.3", "gbfs.json"), url="http://x/gbfs.json")
    assert (v2.version, v2.family, v2.language) == ("2.3", 2, "en")
    assert v2.feed_url("vehicle_status").endswith("/citybike_2.3/free_bike_status.json")  # v2 calls it free_bike_status
    assert parse_discovery(load("citybike_2.3", "gbfs.json"), url="http://x/gbfs.json", language="fr").language == "fr"
    v3 = parse_discovery(load("lyon_3.0", "gbfs.json"), url="http://x/gbfs.json")
    assert (v3.version, v3.family, v3.language) == ("3.0", 3, None)
    assert v3.feed_url("vehicle_status").endswith("/vehicle_status.json")
    velib = parse_discovery(load("velib_1.0", "gbfs.json"), url="http://x/gbfs.json")
    assert (velib.version, velib.family) == (None, 1)
    assert velib.feed_url("vehicle_status") is None
    relative = {"version": "2.2", "data": {"en": {"feeds": [{"name": "station_status", "url": "station_status.json"}]}}}
    assert parse_discovery(relative, url="https://h/brest/en/gbfs.json").files["station_status"] == "https://h/brest/en/station_status.json"


def test_velozef_2_2() -> None:
    info_doc, status_doc, bikes_doc = (load("velozef_2.2", n) for n in ("station_information.json", "station_status.json", "free_bike_status.json"))
    ctx = ctx_for(status_doc, "velozef", "en")
    info, problems = normalize_station_information(info_doc["data"], ctx)
    assert not problems
    assert len(info) == 28
    first = info[0]
    assert first["name"] == "Place de la Liberté" and first["capacity"] == 12
    assert (first["lat"], first["lon"]) == (48.390107, -4.485871)
    status, problems = normalize_station_status(status_doc["data"], ctx)
    assert not problems and len(status) == 28
    raw = status_doc["data"]["stations"][0]
    s = status[0]
    assert s["station_id"] == raw["station_id"]
    assert s["num_bikes_available"] == raw["num_bikes_available"] and s["num_docks_available"] == raw["num_docks_available"]
    assert s["last_reported_ms"] == raw["last_reported"] * 1000 == s["snapshot_ms"]
    assert s["is_renting"] is True and s["bikes_by_type"] == {"ebike": raw["num_bikes_available"]}
    assert s["timezone"] == "Europe/Paris" and s["system_id"] == "velozef"
    bikes, problems = normalize_vehicles(bikes_doc["data"], ctx)
    assert not problems
    free = [b for b in bikes if b["station_id"] is None]
    assert len(free) == 4  # station_id "" means free floating
    assert sum(b["is_disabled"] for b in free) == 1
    assert all(isinstance(b["current_range_meters"], float) for b in bikes)


def test_citybike_2_3() -> None:
    doc = load("citybike_2.3", "station_status.json")
    status, _ = normalize_station_status(doc["data"], ctx_for(doc))
    assert status[0]["bikes_by_type"] == {"bike": 5, "cargo": 2}
    assert status[0]["last_reported_ms"] == (1773136800 - 40) * 1000
    bikes, _ = normalize_vehicles(load("citybike_2.3", "free_bike_status.json")["data"], ctx_for(doc))
    assert bikes[0]["vehicle_id"] == "f3a1" and bikes[0]["current_range_meters"] == 31000.0


def test_gbfs_3_0() -> None:
    sysinfo = load("lyon_3.0", "system_information.json")
    ctx = ctx_for(sysinfo, "lyon", "fr")
    assert ctx.snapshot_ms == 1773136800000
    si = normalize_system_information(sysinfo["data"], ctx, gbfs_version="3.0")
    assert (si["name"], si["operator"], si["language"], si["timezone"]) == ("Vélo'v", "JCDecaux", "fr", "Europe/Paris")
    info, _ = normalize_station_information(load("lyon_3.0", "station_information.json")["data"], Context("lyon", 1, "en"))
    assert [i["name"] for i in info] == ["Bellecour Square", "Part-Dieu"]
    status, problems = normalize_station_status(load("lyon_3.0", "station_status.json")["data"], ctx)
    assert not problems
    a, b = status
    assert (a["num_bikes_available"], a["num_bikes_disabled"], a["num_docks_available"]) == (7, 1, 11)  # num_vehicles_* renamed
    assert a["last_reported_ms"] == parse_timestamp_ms("2026-03-10T10:59:41+01:00")
    assert a["bikes_by_type"] == {"mechanical": 4, "electrical": 3}
    assert (b["num_docks_available"], b["is_returning"]) == (0, False)
    vehicles, _ = normalize_vehicles(load("lyon_3.0", "vehicle_status.json")["data"], ctx)
    assert [v["vehicle_id"] for v in vehicles] == ["e3a4c1", "e3a4c2"]
    assert vehicles[1]["station_id"] == "lyon-10063" and vehicles[1]["lat"] is None and vehicles[1]["is_reserved"] is True


def test_velib_like_non_standard() -> None:
    doc = load("velib_1.0", "station_status.json")
    env = envelope(doc)
    assert (env.version, env.family, env.last_updated_ms, env.ttl_s) == (None, 1, 1773136800000, 3600)  # lastUpdatedOther
    status, problems = normalize_station_status(doc["data"], ctx_for(doc, "Paris"))
    assert not problems
    a, b = status
    assert a["station_id"] == "213688169" and isinstance(a["station_id"], str)
    assert (a["is_installed"], a["is_renting"], a["is_returning"]) == (True, True, True)
    assert (b["is_renting"], b["is_returning"]) == (False, False)
    assert a["bikes_by_type"] == {"mechanical": 4, "ebike": 2}
    info, _ = normalize_station_information(load("velib_1.0", "station_information.json")["data"], ctx_for(doc, "Paris"))
    assert [i["station_id"] for i in info] == ["213688169", "36255"]


def test_bad_rows_are_counted_and_dropped_not_fatal() -> None:
    doc = load("bad", "station_status_bad_rows.json")
    status, problems = normalize_station_status(doc["data"], ctx_for(doc))
    assert len(status) == 3
    assert problems == Counter({"missing_station_id": 1, "bad_num_bikes_available": 2, "not_an_object": 1})
    info_doc = load("bad", "station_information_no_coordinates.json")
    info, problems = normalize_station_information(info_doc["data"], ctx_for(info_doc))
    assert problems == Counter({"missing_coordinates": 1})
    assert len(info) == 28 and (info[2]["lat"], info[2]["lon"]) == (None, None)  # kept: its status still counts


def test_bad_documents() -> None:
    with pytest.raises(GBFSFeedError, match="HTML"):
        parse_document((HTTP / "bad" / "maintenance.html").read_bytes(), url="u")
    with pytest.raises(GBFSFeedError, match="truncated"):
        parse_document((HTTP / "bad" / "station_status_truncated.json").read_bytes(), url="u")
    with pytest.raises(GBFSFeedError, match="no 'data'"):
        parse_document(b"[1, 2]", url="u")
    with pytest.raises(GBFSVersionError):
        envelope(load("bad", "station_status_unknown_version.json"))


def test_slugs_for_feeds_without_an_id() -> None:
    assert slug_for_url("https://gbfs.partners.fifteen.eu/gbfs/2.2/brest/en/gbfs.json") == "partners-fifteen-brest"
    assert slug_for_url("https://api.cyclocity.fr/contracts/lyon/gbfs/v3/gbfs.json") == "cyclocity-contracts-lyon"
