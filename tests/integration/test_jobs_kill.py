"""`affluent run jobs`, SIGKILLed mid-backfill and restarted, ends with every offer exactly once.

The real command runs against the loopback API server, with its rate limited so that the backfill
takes a few seconds; it is killed three times at seeded random moments while the serving store fills,
then restarted until the backfill is done. The serving store must then hold each generated offer
once, the counts must equal a direct count over the generated offers, and the lake (written when
the last run stops) must hold each offer once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from tests.fixtures.jobs.offers import departement_of, generate_offers
from tests.fixtures.jobs.server import FranceTravailServer

from affluent.apps.jobs import tables
from affluent.core.clock import now_ms
from affluent.sinks.serving import read_serving

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")]
HOUR_MS = 3_600_000
AFFLUENT = str(Path(sys.executable).parent / "affluent")


def offers_in(folder: Path) -> int:
    db = folder / ".affluent" / "serving.db"
    if not db.exists():
        return 0
    try:
        return int(read_serving(db, f"SELECT count(*) AS n FROM {tables.OFFERS}")[0]["n"])
    except Exception:  # the table is not there yet
        return 0


def test_sigkill_mid_backfill_then_restart_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    end = now_ms() - 10 * 60_000
    offers = generate_offers(8000, start_ms=end - 30 * HOUR_MS, end_ms=end, seed=61)
    rng = random.Random(61)
    with FranceTravailServer(offers) as server:
        env = {
            **os.environ,
            "FRANCE_TRAVAIL_CLIENT_ID": server.client_id,
            "FRANCE_TRAVAIL_CLIENT_SECRET": server.client_secret,
            "AFFLUENT__JOBS__RATE_PER_S": "6",
            "AFFLUENT__JOBS__LAKE_COMMIT_S": "0.5",
        }
        cmd = [AFFLUENT, "run", "jobs", "--since", "31h", "--token-url", server.token_url, "--api-url", server.api_url, "--quiet"]
        stderr = tmp_path / "stderr.txt"
        kills = 0
        seen = 0
        while kills < 3:
            with stderr.open("ab") as err:
                proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + 60
            target = seen + rng.randint(200, 1200)
            while offers_in(tmp_path) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.01, 0.1))
            assert proc.poll() is None, f"affluent run jobs ended on its own: {stderr.read_text()[-2000:]}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            seen = offers_in(tmp_path)
            assert seen < len(offers), "the backfill ended before the kill: slow it down"
        with stderr.open("ab") as err:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while offers_in(tmp_path) < len(offers) and time.monotonic() < deadline:
            assert proc.poll() is None, stderr.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1.0)  # the counts follow the offers in the same commit; give the lake a commit too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, stderr.read_text()[-2000:]
    db = tmp_path / ".affluent" / "serving.db"
    ids = [r["offer_id"] for r in read_serving(db, f"SELECT offer_id FROM {tables.OFFERS}")]
    assert sorted(ids) == sorted(o["id"] for o in offers)
    got = Counter(
        {
            r["code"]: r["offers"]
            for r in read_serving(db, f"SELECT code, sum(offers) AS offers FROM {tables.COUNTS} WHERE dimension = 'departement' GROUP BY code")
        }
    )
    assert +got == Counter(departement_of(o) or "" for o in offers)
    hourly = read_serving(db, f"SELECT sum(offers) AS n FROM {tables.HOURLY} WHERE kind = 'created'")[0]["n"]
    assert hourly == len(offers)
    lake = (
        ds.dataset(tmp_path / ".affluent" / "lake" / "jobs_offers", format="parquet", partitioning="hive")
        .to_table(columns=["offer_id"])
        .column("offer_id")
        .to_pylist()
    )
    assert Counter(lake) == Counter(o["id"] for o in offers), "the lake lost or doubled offers"
