"""The hourly price forecast: it follows a trend, its band widens and holds the truth about as often as it says."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from affluent.apps.crypto.forecast import HOUR_MS, MIN_POINTS, MODEL, forecast
from affluent.core.errors import ConfigError

LAST_MS = 1_741_003_200_000


def walk(rng: random.Random, n: int, *, sigma: float = 0.01, drift: float = 0.0, start: float = 100.0) -> list[float]:
    """A geometric random walk: log price steps ~ N(drift, sigma²)."""
    out, log_p = [], math.log(start)
    for _ in range(n):
        log_p += rng.gauss(drift, sigma)
        out.append(math.exp(log_p))
    return out


def test_the_next_24_hours_come_hour_by_hour_after_the_last_price() -> None:
    out = forecast(walk(random.Random(1), 168), LAST_MS)
    assert [p["at_ms"] for p in out] == [LAST_MS + h * HOUR_MS for h in range(1, 25)]
    assert all(p["low"] < p["price"] < p["high"] for p in out)
    assert MODEL and forecast(walk(random.Random(1), 168), LAST_MS) == out  # deterministic


def test_a_known_trend_is_followed() -> None:
    rate = 0.002  # +0.2 % an hour, with a little noise
    rng = random.Random(7)
    prices = [100.0 * math.exp(rate * t + rng.gauss(0, 0.001)) for t in range(168 + 24)]
    out = forecast(prices[:168], LAST_MS)
    future = prices[168:]
    assert all(a["price"] < b["price"] for a, b in itertools.pairwise(out))  # it keeps rising
    # damped (φ <= 0.98): after a day it has gained most of what the straight line gains, never more
    line = 100.0 * math.exp(rate * (167 + 24))
    gained, line_gained = math.log(out[-1]["price"] / prices[167]), math.log(line / prices[167])
    assert 0.6 * line_gained < gained < line_gained
    assert out[0]["price"] == pytest.approx(100.0 * math.exp(rate * 168), rel=0.002)
    assert sum(p["low"] <= y <= p["high"] for p, y in zip(out, future, strict=True)) >= 20  # a 90 % band


def test_the_band_widens_with_the_horizon() -> None:
    out = forecast(walk(random.Random(3), 168, sigma=0.02), LAST_MS)
    widths = [math.log(p["high"] / p["low"]) for p in out]
    assert all(a < b for a, b in itertools.pairwise(widths))
    # on a random walk the band grows about as the square root of the horizon
    assert widths[23] / widths[0] == pytest.approx(math.sqrt(24), rel=0.35)
    narrow = forecast(walk(random.Random(3), 168, sigma=0.02), LAST_MS, level=0.5)
    assert all(n["high"] < w["high"] and n["low"] > w["low"] for n, w in zip(narrow, out, strict=True))


@pytest.mark.parametrize("level", [0.8, 0.9])
def test_the_band_holds_the_truth_about_as_often_as_its_level_on_random_walks(level: float) -> None:
    rng = random.Random(2024)
    inside = total = 0
    for i in range(150):
        prices = walk(rng, 168 + 24, sigma=(0.005, 0.01, 0.03)[i % 3])
        out = forecast(prices[:168], LAST_MS, level=level)
        inside += sum(p["low"] <= y <= p["high"] for p, y in zip(out, prices[168:], strict=True))
        total += len(out)
    assert total == 150 * 24
    assert level - 0.06 < inside / total < level + 0.04


def test_bad_values_are_skipped() -> None:
    clean = walk(random.Random(5), 168)
    dirty: list[float | None] = list(clean)
    for i, bad in [(0, None), (10, math.nan), (50, 0.0), (51, -3.0), (100, math.inf), (167, None)]:
        dirty.insert(i, bad)
    assert forecast(dirty, LAST_MS) == forecast(clean, LAST_MS)


def test_too_short_a_series_has_no_forecast() -> None:
    assert forecast(walk(random.Random(6), MIN_POINTS - 1), LAST_MS) == []
    assert forecast([None, math.nan] * 100, LAST_MS) == []
    assert len(forecast(walk(random.Random(6), MIN_POINTS), LAST_MS, hours=6)) == 6


def test_a_flat_series_forecasts_itself() -> None:
    out = forecast([42.0] * 168, LAST_MS)
    assert all(p["price"] == pytest.approx(42.0) and p["low"] == pytest.approx(42.0) and p["high"] == pytest.approx(42.0) for p in out)


@pytest.mark.parametrize(("hours", "level"), [(0, 0.9), (24, 0.0), (24, 1.0), (24, 90)])
def test_bad_arguments_are_refused(hours: int, level: float) -> None:
    with pytest.raises(ConfigError):
        forecast([1.0] * 168, LAST_MS, hours=hours, level=level)
