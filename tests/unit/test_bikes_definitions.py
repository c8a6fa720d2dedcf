"""Days in the system's time zone, the SQL's use of the one definition of empty/full, and the systems catalogue."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from affluent.analytics.bikes import STATION_DAY, STATION_HOUR, day_bounds_ms, hour_label, station_flags
from affluent.apps.bikes import commands
from affluent.apps.bikes.app import resolve_feed
from affluent.apps.bikes.catalog import find_system, load_systems, search_systems
from affluent.core.errors import ConfigError

HOUR = 3_600_000


def test_days_are_local_days() -> None:
    start, end = day_bounds_ms(date(2026, 3, 10), "Europe/Paris")
    assert start == 1773097200000  # 2026-03-09T23:00:00Z
    assert end - start == 24 * HOUR
    spring = day_bounds_ms(date(2026, 3, 29), "Europe/Paris")
    autumn = day_bounds_ms(date(2026, 10, 25), "Europe/Paris")
    assert spring[1] - spring[0] == 23 * HOUR
    assert autumn[1] - autumn[0] == 25 * HOUR
    assert [hour_label(autumn[0] + h * HOUR, "Europe/Paris") for h in (1, 2, 3)] == ["01:00+0200", "02:00+0200", "02:00+0100"]
    assert day_bounds_ms(date(2026, 3, 10), "America/New_York")[0] == 1773115200000


def test_the_analysis_uses_the_stored_flags_not_a_second_definition() -> None:
    for q in (STATION_DAY, STATION_HOUR):
        assert "is_empty" in q.sql and "is_full" in q.sql
        assert "capacity" not in q.sql and "num_docks_available = 0" not in q.sql
    assert station_flags(0, 0) == (True, True, True)


def test_the_bundled_catalogue() -> None:
    systems = load_systems()
    assert len(systems) >= 1500  # MobilityData's whole catalogue
    velozef = find_system("VELOZEF", systems)
    assert velozef is not None
    assert velozef.discovery_url == "https://gbfs.partners.fifteen.eu/gbfs/2.2/brest/en/gbfs.json"
    assert (velozef.country, velozef.versions, velozef.needs_auth) == ("FR", ("2.2",), False)
    french = search_systems(systems, country="fr")
    assert len(french) >= 20 and all(s.country == "FR" for s in french)
    assert [s.system_id for s in search_systems(systems, text="vélib'")] == ["Paris"]
    assert find_system("lyon", systems).versions == ("2.3", "3.0")  # type: ignore[union-attr]
    assert resolve_feed("velozef") == (velozef.discovery_url, "velozef")
    assert resolve_feed("https://example.org/gbfs.json") == ("https://example.org/gbfs.json", None)
    with pytest.raises(ConfigError):
        resolve_feed("not-a-system")


def test_systems_command(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(commands, ["systems", "--country", "FR"], env={"AFFLUENT__OFFLINE": "true", "AFFLUENT__DATA_DIR": str(tmp_path / "data")})
    assert out.exit_code == 0, out.output
    assert "catalogue: bundled copy of 2026-11-29; offline" in out.output
    assert "velozef  VéloZef (Brest), GBFS 2.2\n    https://gbfs.partners.fifteen.eu/gbfs/2.2/brest/en/gbfs.json\n" in out.output
    assert "Citi Bike" not in out.output
    mine = tmp_path / "systems.csv"
    mine.write_text(
        "Country Code,Name,Location,System ID,URL,Auto-Discovery URL,Supported Versions,Authentication Info URL,"
        "Authentication Type,Authentication Parameter Name\n"
        "DE,DB Call a Bike,Germany,callabike,https://x,https://api.example/gbfs.json,2.3,https://dev,2,DB-Api-Key\n",
        encoding="utf-8",
    )
    out = runner.invoke(commands, ["systems", "--catalog", str(mine)])
    assert out.exit_code == 0 and "callabike  DB Call a Bike (Germany), GBFS 2.3, needs a key" in out.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    out = runner.invoke(commands, ["systems", "--catalog", str(bad)])
    assert out.exit_code == 1


def test_an_unreachable_feed_falls_back_to_the_recording_only_when_allowed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from affluent.apps.bikes.app import choose_source
    from affluent.config import BikesSettings
    from affluent.sources.gbfs import GBFSReplaySource, GBFSSource

    b = BikesSettings(feed="http://127.0.0.1:9/gbfs.json", probe_timeout_s=1.0)
    with caplog.at_level("WARNING"):
        src = choose_source(b, offline=False, data_dir=tmp_path)
    assert isinstance(src, GBFSReplaySource) and src.offline
    assert "cannot be reached" in caplog.text and "replaying the bundled VéloZef recording instead (offline)" in caplog.text
    assert len(src.polls) == 120  # two recorded hours, unpacked into the data folder
    assert (tmp_path / "recordings" / "velozef-brest.recording.jsonl").exists()
    live = choose_source(b, offline=False, data_dir=tmp_path, fallback=False)
    assert isinstance(live, GBFSSource) and not live.offline and "polling it anyway" in caplog.text
    assert isinstance(choose_source(b, offline=True, data_dir=tmp_path), GBFSReplaySource)


def test_a_replay_moves_the_times_inside_values_too(tmp_path: Path) -> None:
    from affluent.apps.bikes.app import recording_path
    from affluent.sources.gbfs import GBFSReplaySource

    src = GBFSReplaySource(recording_path(tmp_path), speed=float("inf"), shift_to_now=True)
    src.open(None)
    first = src.poll().records
    assert src.shift_ms > 0
    for r in first:
        assert r.value["snapshot_ms"] == r.timestamp_ms
        if "last_reported_ms" in r.value:
            assert r.value["last_reported_ms"] <= r.timestamp_ms
