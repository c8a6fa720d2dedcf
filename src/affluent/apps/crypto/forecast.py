"""A light forecast of a coin's next 24 hourly prices, with a band: exponential smoothing on log prices.

Two state-space exponential smoothing models (ETS) of the log price y (log: a trend is a rate, and
the band is multiplicative, never below zero), with level l and trend b:

    forecast one hour ahead   ŷ_t = l_{t-1} + φ b_{t-1},   error e_t = y_t - ŷ_t
    update                    l_t = ŷ_t + α e_t,           b_t = φ b_{t-1} + α β e_t
    forecast h hours ahead    ŷ_{n+h} = l_n + (φ + φ² + … + φ^h) b_n

- ETS(A,N,N), the local level (simple exponential smoothing): no trend (β = 0, b = 0); α = 1 is the
  naive "last value" forecast;
- ETS(A,Ad,N), the additive damped trend (Holt, damped): β > 0, and φ < 1 (at most 0.98) keeps a
  trend from running on for the whole horizon, the usual cure for Holt's over-shooting.

Each starts at l_0 = y_0 with a flat trend b_0 = 0 (the data must earn a trend). Each model's (α, β, φ)
is the grid point with the least sum of squared one-step errors over the series (ties: the first in
grid order, so the result is deterministic), and the model with the lower AICc is kept (Hyndman,
Koehler, Ord & Snyder 2008; the default of R's forecast::ets): the trend must pay for its two extra
parameters. On real hourly bitcoin prices the damped trend alone, always used, was 2.7 % worse than
the naive forecast at 1..24 h (MAPE; benchmarks/forecast.py); chosen by AICc, 1.2 %: hourly prices
are close to a random walk, and a week's trend rarely lasts another day.

The band is the state-space model's forecast variance (Hyndman et al. 2008, class 1 models):

    σ_h² = σ² (1 + Σ_{j=1}^{h-1} c_j²),   c_j = α (1 + β (φ + φ² + … + φ^j))

with σ the root mean square of the in-sample one-step errors, and a normal quantile for `level`:
log low/high = ŷ_{n+h} ∓ z σ_h. `price` is exp(ŷ_{n+h}), the median of that log-normal forecast.

Input: the last ~168 hourly prices (CoinGecko's sparkline_in_7d.price), the last one at `last_ms`.
None, NaN, infinite and non-positive values are skipped (the series closes up around them). With
fewer than MIN_POINTS usable values there is too little to fit or to size a band: no forecast ([]).

A rise of 0.1 % an hour, the next three hours being 118.30, 118.42 and 118.54 (damping: a little below):

>>> out = forecast([100.0 * 1.001**t for t in range(168)], last_ms=0, hours=3)
>>> [(p["at_ms"], round(p["price"], 2)) for p in out]
[(3600000, 118.27), (7200000, 118.38), (10800000, 118.48)]
>>> forecast([1.0] * 10, last_ms=0)
[]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any, NamedTuple

from affluent.core.errors import ConfigError

MODEL = "ets-log-level-or-damped-trend-v1"
HOUR_MS = 3_600_000
#: fewer usable prices than this (a day): no forecast
MIN_POINTS = 24
ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
#: the damped trend's grid (the local level has β = 0 and no φ)
BETAS = (0.01, 0.05, 0.1, 0.2)
PHIS = (0.8, 0.9, 0.95, 0.98)


class Fit(NamedTuple):
    alpha: float
    beta: float
    phi: float
    level: float
    trend: float
    #: root mean square of the one-step errors, in log price
    sigma: float


def _run(y: Sequence[float], alpha: float, beta: float, phi: float, stop_above: float) -> tuple[float, float, float]:
    """(sum of squared one-step errors, last level, last trend); gives up past `stop_above` (a worse fit)."""
    level, trend, sse = y[0], 0.0, 0.0
    ab = alpha * beta
    for t in range(1, len(y)):
        guess = level + phi * trend
        e = y[t] - guess
        sse += e * e
        if sse > stop_above:
            break
        level = guess + alpha * e
        trend = phi * trend + ab * e
    return sse, level, trend


def _best(y: Sequence[float], betas: Sequence[float], phis: Sequence[float]) -> tuple[float, float, float, float, float, float]:
    """(sse, α, β, φ, last level, last trend) of the grid point with the least one-step squared error."""
    best: tuple[float, float, float, float, float, float] | None = None
    for alpha in ALPHAS:
        for beta in betas:
            for phi in phis:
                sse, level, trend = _run(y, alpha, beta, phi, math.inf if best is None else best[0])
                if best is None or sse < best[0]:
                    best = (sse, alpha, beta, phi, level, trend)
    assert best is not None
    return best


def _aicc(sse: float, n: int, k: int) -> float:
    """For n one-step errors and k parameters (smoothing parameters, initial level, σ)."""
    return n * math.log(max(sse, 1e-300) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def fit(log_prices: Sequence[float]) -> Fit:
    """The local level or the damped trend, whichever has the lower AICc, over at least 8 log prices."""
    n = len(log_prices) - 1
    level_only = _best(log_prices, (0.0,), (1.0,))
    damped = _best(log_prices, BETAS, PHIS)
    chosen = damped if _aicc(damped[0], n, 5) < _aicc(level_only[0], n, 3) else level_only
    sse, alpha, beta, phi, level, trend = chosen
    return Fit(alpha, beta, phi, level, trend, math.sqrt(sse / n))


def usable(prices: Sequence[float | None]) -> list[float]:
    """The positive finite prices, in order."""
    return [float(p) for p in prices if p is not None and math.isfinite(p) and p > 0]


def forecast(prices: Sequence[float | None], last_ms: int, *, hours: int = 24, level: float = 0.9) -> list[dict[str, Any]]:
    """The next `hours` hourly prices after `last_ms` (the time of the last price), each with a `level` band."""
    if hours < 1:
        raise ConfigError(f"forecast hours must be at least 1, not {hours}")
    if not 0 < level < 1:
        raise ConfigError(f"a forecast band's level is between 0 and 1 (0.9 for 90 %), not {level}")
    clean = usable(prices)
    if len(clean) < MIN_POINTS:
        return []
    f = fit([math.log(p) for p in clean])
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out = []
    damp = 0.0  # φ + φ² + … + φ^h
    spread = 0.0  # Σ_{j=1}^{h-1} c_j²
    for h in range(1, hours + 1):
        damp += f.phi**h
        mid = f.level + damp * f.trend
        half = z * f.sigma * math.sqrt(1 + spread)
        out.append({"at_ms": int(last_ms) + h * HOUR_MS, "price": math.exp(mid), "low": math.exp(mid - half), "high": math.exp(mid + half)})
        spread += (f.alpha * (1 + f.beta * damp)) ** 2  # c_h, for the horizons after this one
    return out
