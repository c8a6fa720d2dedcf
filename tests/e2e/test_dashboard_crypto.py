"""The crypto page in a real browser, over a serving store and a log filled here (not by the crypto app).

The dashboard runs in this process over the data of the integration tests (`tests/integration/test_web_crypto.py`)
built at the real now: ten coins (one named with markup, two that left the top 8), candles of four symbols
with their moving averages, anomalies (one whose reason carries markup) and forecasts. Chromium opens
/crypto with every non-loopback request failing. Screenshots land in tests/e2e/screenshots/crypto*.png.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.dashboard import Page
from tests.integration.test_web_crypto import ANOMALIES, CANDLES, COINS, HOURS, MARKETS, MIN, XSS, Data, dashboard, publish_anomalies, write

from affluent.core.clock import now_ms
from affluent.core.sqlite_log import SQLiteLog

pytestmark = pytest.mark.slow

Dash = tuple[str, Path, SQLiteLog, Data]
#: the colours of the change columns: Okabe-Ito's bluish green and vermillion, darkened for text
UP, DOWN = "rgb(0, 120, 90)", "rgb(184, 64, 0)"


@pytest.fixture(scope="module")
def crypto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    with dashboard(tmp_path_factory.mktemp("crypto"), now=now_ms()) as got:
        yield got


def signed(v: float) -> str:
    """A change as the page must show it: signed, two decimals, a fall negative."""
    return "0.00 %" if round(v, 2) == 0 else f"{v:+.2f} %"


def cells(p: Any, where: str) -> list[list[Any]]:
    """[coin, [text, class, colour] of the 1h, 24h and 7d cells] of each row of the market table's `where` body."""
    return p.eval_on_selector_all(
        f"#markets tbody.{where} tr[data-coin]",
        "rs => rs.map(r => [r.dataset.coin, ['1h', '24h', '7d'].map(k => { const s = r.querySelector('td.col-change_' + k + '_pct .change'); "
        "return [s.textContent.replace('\\u2212', '-'), s.className, getComputedStyle(s).color]; })])",
    )


def test_the_market_table_shows_each_coin_with_its_signed_changes(browser: Any, crypto: Dash) -> None:
    url, _, _, data = crypto
    page = Page(browser, block_network=True)
    try:
        p = page.open(url + "crypto", "#markets tbody.in-top tr[data-coin]")
        top = sorted((m for m in data.markets if m["in_top"]), key=lambda m: m["rank"])
        shown = cells(p, "in-top")
        assert [c for c, _ in shown] == [m["coin_id"] for m in top]  # by rank
        for (coin, got), m in zip(shown, top, strict=True):
            for (text, cls, colour), v in zip(got, (m["change_1h_pct"], m["change_24h_pct"], m["change_7d_pct"]), strict=True):
                if v is None:
                    assert text == "–", (coin, text)
                    continue
                assert text == signed(v), (coin, text, v)
                want = "up" if round(v, 2) > 0 else "down" if round(v, 2) < 0 else "flat"
                assert cls == "change " + want, (coin, cls)
                if want != "flat":
                    assert colour == (UP if want == "up" else DOWN), (coin, colour)
        assert shown[0][1][0][0] == "-0.12 %" and shown[1][1][1][0] == "-2.41 %"  # bitcoin's hour, ethereum's day: falls
        # the coins that left the top 8, apart and dimmed
        left = cells(p, "left-top")
        assert [c for c, _ in left] == ["cardano", "shiba-inu"]
        assert p.inner_text("#markets tbody.left-top tr.left-head") == "Left the top 8: their last values"
        assert float(p.eval_on_selector("#markets tbody.left-top tr[data-coin]", "r => getComputedStyle(r).opacity")) < 0.7
        # a name with markup is text
        assert p.inner_text("#markets tr[data-coin='xss-token'] button.coin") == XSS
        assert p.query_selector("#markets img, #markets script") is None
        # sorting by a column keeps the signs and puts the largest fall first
        p.click("#markets th[data-sort='change_24h_pct']")
        p.click("#markets th[data-sort='change_24h_pct']")
        assert p.eval_on_selector("#markets tbody.in-top tr[data-coin]", "r => r.dataset.coin") == "xss-token"
        p.wait_for_selector("#candles[data-drawn='300']")
        page.page.wait_for_timeout(500)
        page.screenshot("crypto-wide")
        assert page.errors == [] and page.dialogs == []
        assert [u for u in page.requests if not u.startswith(url.rstrip("/"))] == []
        # the app is not running here: the page says so
        assert p.inner_text(".notice:not([hidden])").startswith("crypto is not running")
    finally:
        page.close()


def test_the_candle_chart_draws_the_series_with_its_anomalies_and_the_forecast(browser: Any, crypto: Dash) -> None:
    url, _, _, data = crypto
    btc = data.series("BTCUSDT", "1m")
    page = Page(browser, block_network=True)
    try:
        p = page.open(url + "crypto", "#candles[data-drawn='300']")
        # the first symbol is the top coin's; its last 300 candles are all drawn, on a canvas
        assert p.get_attribute("#candles", "data-symbol") == "BTCUSDT" and p.input_value("#symbol") == "BTCUSDT"
        assert p.get_attribute("#candles", "data-candles") == "300"
        assert p.get_attribute("#candles", "data-last-open") == str(btc[-1]["open_time"])
        assert p.query_selector("#candles canvas") is not None
        p.wait_for_selector("#candles[data-marks='1']")  # the anomaly 30 minutes ago (the one 400 minutes ago is out of view)
        legend = p.eval_on_selector_all("#candles .u-legend .u-series th", "ts => ts.map(t => t.textContent)")
        assert [x for x in legend if x.startswith("MA")] == ["MA 7", "MA 25", "MA 99"]
        # the forecast: the 24 hours of its latest run, after the last 48 hours' prices
        p.wait_for_selector("#forecast[data-points='24'] canvas")
        # 48 hourly closes and the market's price; one close fewer when the store was filled in the hour's last minute
        recent = httpx.get(url + "api/crypto/forecast/bitcoin", timeout=10).json()["recent"]
        assert len(recent) in (48, 49) and p.get_attribute("#forecast", "data-recent") == str(len(recent))
        assert p.inner_text("#forecast-title") == "Forecast: Bitcoin in USD"
        # one hour candles: the whole series, both of bitcoin's anomalies on it
        hours = len(data.series("BTCUSDT", "1h"))  # HOURS + 1, or HOURS when the data ends in a minute 59
        assert hours in (HOURS, HOURS + 1)
        p.select_option("#interval", "1h")
        p.wait_for_selector(f"#candles[data-interval='1h'][data-candles='{hours}'][data-drawn='{hours}'][data-marks='2']")
        assert "interval=1h" in p.url and "symbol=BTCUSDT" in p.url
        # the anomalies: newest first, their reason as text; choosing one shows its symbol
        first = p.query_selector("#anomalies li[data-symbol]")
        assert first is not None and first.get_attribute("data-symbol") == "SOLUSDT"
        assert first.inner_text().split("\n")[0].replace("\u2212", "-") == "SOLUSDT -4.02 % z -7.5"
        assert p.eval_on_selector("#anomalies li[data-symbol] .detail", "d => d.textContent").endswith(XSS)
        assert p.query_selector("#anomalies img") is None
        p.click("#anomalies li[data-symbol='SOLUSDT'] button.coin")
        p.wait_for_selector("#candles[data-symbol='SOLUSDT'][data-interval='1h']")
        p.wait_for_function("() => document.querySelector('#forecast-note').textContent === 'No forecast of Solana yet.'")
        assert p.input_value("#symbol") == "SOLUSDT"
        # a coin with no candles, chosen in the table: its forecast, after its market price
        p.click("#markets tr[data-coin='tether'] button.coin")
        p.wait_for_selector("#forecast[data-points='24'][data-recent='1']")
        assert p.inner_text("#forecast-title") == "Forecast: Tether in USD" and "coin=tether" in p.url
        page.page.wait_for_timeout(300)
        assert page.errors == [] and page.dialogs == []
    finally:
        page.close()


def test_the_url_is_the_view(browser: Any, crypto: Dash) -> None:
    url, _, _, data = crypto
    page = Page(browser, block_network=True)
    try:
        p = page.open(url + "crypto?symbol=ETHUSDT&interval=5m", "#candles[data-candles]:not([data-candles='0'])")
        eth = data.series("ETHUSDT", "5m")
        assert p.get_attribute("#candles", "data-candles") == str(min(300, len(eth)))
        assert p.get_attribute("#candles", "data-last-open") == str(eth[-1]["open_time"])
        p.wait_for_selector("#forecast[data-points='24']")
        assert p.inner_text("#forecast-title") == "Forecast: Ethereum in USD"
        assert p.eval_on_selector("#markets tr.chosen", "r => r.dataset.coin") == "ethereum"
    finally:
        page.close()


def test_what_the_app_writes_shows_live(browser: Any, tmp_path: Path) -> None:
    """A new candle, the building one's next trades, a coin's new snapshot and an anomaly show without a reload."""
    with dashboard(tmp_path, now=now_ms()) as (url, serving, log, data):
        page, home = Page(browser, block_network=True), Page(browser, block_network=True)
        try:
            p = page.open(url + "crypto", "#candles[data-drawn='300']")
            h = home.open(url, "#alerts li[data-id]")
            last = data.series("BTCUSDT", "1m")[-1]
            new = {
                **last,
                "open_time": last["open_time"] + MIN,
                "close_time": last["close_time"] + MIN,
                "open": last["close"],
                "close": last["close"] * 1.001,
                "trades": 2,
            }
            write(serving, CANDLES, [new])
            p.wait_for_selector(f"#candles[data-last-open='{new['open_time']}'][data-candles='301'][data-drawn='301']", timeout=5_000)
            # the candle builds: its next trades replace it
            write(serving, CANDLES, [{**new, "close": new["close"] * 1.002, "high": new["close"] * 1.003, "trades": 9}])
            p.wait_for_function(
                "n => { const r = window.affluentCrypto.rows(); return r[r.length - 1].trades === n && r.length === 301; }", arg=9, timeout=5_000
            )
            # a coin's new snapshot: its price and a fall, signed
            bitcoin = next(m for m in data.markets if m["coin_id"] == "bitcoin")
            write(serving, MARKETS, [{**bitcoin, "price": 70001.5, "change_1h_pct": -0.77, "snapshot_ms": now_ms()}])
            p.wait_for_function(
                "() => document.querySelector(\"#markets tr[data-coin='bitcoin'] td.col-change_1h_pct\").textContent.replace('\\u2212', '-') === '-0.77 %'",
                timeout=5_000,
            )
            assert "70,001.50" in p.inner_text("#markets tr[data-coin='bitcoin'] td.col-price")
            # an anomaly: first in the list, on the chart, and in the home page's alert feed, as text
            anomaly = {
                "symbol": "BTCUSDT",
                "open_time": new["open_time"],
                "close": new["close"],
                "return_pct": -3.05,
                "z": -6.2,
                "direction": "down",
                "reason": "BTCUSDT fell 3.05% <script>alert(3)</script>",
            }
            write(serving, ANOMALIES, [anomaly])
            publish_anomalies(log, [anomaly])
            p.wait_for_selector(f"#anomalies li[data-open-time='{new['open_time']}']:first-child", timeout=5_000)
            p.wait_for_selector("#candles[data-marks='2']")
            h.wait_for_function("() => document.querySelector('#alerts').innerText.includes('BTCUSDT down -3.05 %')", timeout=5_000)
            assert "BTCUSDT fell 3.05% <script>alert(3)</script>" in h.inner_text("#alerts")
            assert p.query_selector("#anomalies script") is None and h.query_selector("#alerts script") is None
            assert page.errors == [] and page.dialogs == [] and home.dialogs == []
        finally:
            page.close()
            home.close()


def test_the_page_says_when_the_app_replays_a_recording(browser: Any, tmp_path: Path) -> None:
    with dashboard(tmp_path, now=now_ms()) as (url, _, log, _):
        stop = threading.Event()
        note = "offline: replays the bundled recording of Binance trades"

        def publish() -> None:
            status = {"status": "running", "error": None, "records": 3, "rate": 1.0, "lag": 0, "dead_letters": 0, "late": 0}
            source = {"name": "binance", "status": "running", "mode": "replay", "describe": "recording", "records": 3, "rate": 1.0, "error": None}
            while not stop.is_set():
                log.put_statuses({"crypto-trades": {**status, "sources": [{**source, "note": note, "last_event_ms": now_ms()}]}})
                stop.wait(1.0)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        page = Page(browser, block_network=True)
        try:
            p = page.open(url + "crypto", "#crypto-mode:not([hidden])")
            text = p.inner_text("#crypto-mode")
            assert (
                text.startswith("Offline: these prices come from a recording of the markets and trades, replayed, not from the live markets") and note in text
            )
            assert p.is_hidden(".notice:not(#crypto-mode)")
            p.wait_for_selector("#candles[data-drawn='300']")
            page.page.wait_for_timeout(300)
            page.screenshot("crypto-offline")
        finally:
            stop.set()
            thread.join(5)
            page.close()


def test_on_a_phone_nothing_overflows(browser: Any, crypto: Dash) -> None:
    url, _, _, _ = crypto
    page = Page(browser, width=390, height=844, block_network=True)
    try:
        p = page.open(url + "crypto", "#candles[data-drawn='300']")
        p.wait_for_selector("#forecast[data-points='24']")
        page.page.wait_for_timeout(500)
        page.screenshot("crypto-phone")
        assert p.evaluate("document.documentElement.scrollWidth") <= 390
        assert p.eval_on_selector_all("#markets tr[data-coin]", "rs => rs.length") == len(COINS)
        assert page.errors == []
    finally:
        page.close()
