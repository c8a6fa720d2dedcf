// Crypto: the top coins' markets (changes signed and coloured), a symbol's candlesticks with their moving
// averages and anomalies, the latest anomalies, and a coin's forecast band for the next 24 hours. Times are
// shown in the browser's time zone; the API speaks UTC epoch milliseconds.
"use strict";

(async () => {
  const { el, clear, time, ago, PALETTE: C } = A;
  const main = document.getElementById("main");

  const INTERVALS = { "1m": 60000, "5m": 300000, "1h": 3600000 };
  const LIMIT = 300; // candles read for a chart
  const KEEP = 1000; // candles kept while the chart runs live
  // rises and falls: Okabe-Ito's bluish green and vermillion, told apart with every common colour-vision deficiency
  const RISE = C.green;
  const FALL = C.vermillion;
  const MAS = [["ma_7", "MA 7", C.orange], ["ma_25", "MA 25", C.sky], ["ma_99", "MA 99", C.purple]];
  const MARK = C.yellow;
  const dpr = () => window.devicePixelRatio || 1;

  // -- the view, from the URL (so that a link opens the same one) ----------------------------------------------
  const params = new URLSearchParams(location.search);
  const state = {
    symbol: /^[A-Z0-9]{2,20}$/.test(params.get("symbol") || "") ? params.get("symbol") : "",
    interval: Object.hasOwn(INTERVALS, params.get("interval") || "") ? params.get("interval") : "1m",
    coin: /^[a-z0-9-]{1,64}$/.test(params.get("coin") || "") ? params.get("coin") : "", // a coin with no symbol, chosen in the table
  };

  // -- numbers: prices with the digits they need, changes always signed ------------------------------------------
  const formats = new Map();
  const format = (opts) => {
    const k = JSON.stringify(opts);
    if (!formats.has(k)) formats.set(k, new Intl.NumberFormat(undefined, opts));
    return formats.get(k);
  };
  const missing = (v) => v === null || v === undefined || Number.isNaN(v);
  function price(v) {
    if (missing(v)) return "–";
    const a = Math.abs(v);
    return format(a >= 1000 ? { minimumFractionDigits: 2, maximumFractionDigits: 2 }
      : a >= 1 ? { minimumFractionDigits: 2, maximumFractionDigits: 4 } : { maximumSignificantDigits: 4 }).format(v);
  }
  // an axis's ticks with the decimals their step needs
  const ticks = (u, splits, axis, space, incr) => {
    const digits = Math.min(12, Math.max(0, -Math.floor(Math.log10(incr || 1))));
    return splits.map((v) => format({ minimumFractionDigits: digits, maximumFractionDigits: digits }).format(v));
  };
  const compact = (v) => (missing(v) ? "–" : format({ notation: "compact", maximumFractionDigits: 2 }).format(v));
  // a change as the data has it: a fall is negative (the original dropped the sign) and red, a rise green
  function change(v) {
    if (missing(v)) return el("span", { class: "change" }, "–");
    const shown = Math.round(v * 100) / 100;
    const dir = shown > 0 ? "up" : shown < 0 ? "down" : "flat";
    return el("span", { class: "change " + dir, "data-value": v }, format({ signDisplay: "exceptZero", minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(shown) + " %");
  }
  const when = (ms, withDate) => new Date(ms).toLocaleString(undefined, withDate
    ? { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" } : { hour: "2-digit", minute: "2-digit" });

  // -- the page ------------------------------------------------------------------------------------------------
  const symbolSelect = el("select", { id: "symbol" });
  const intervalSelect = el("select", { id: "interval" }, Object.keys(INTERVALS).map((i) => el("option", { value: i }, i)));
  const notice = el("div", { class: "notice", hidden: true, role: "status" });
  const modeNote = el("div", { class: "notice", id: "crypto-mode", hidden: true, role: "status" });
  const chartTitle = el("h2", { id: "candles-title" }, "Candles");
  const chartNode = el("div", { class: "chart crypto-candles", id: "candles", "data-candles": "0", role: "img", "aria-label": "Candlestick chart" });
  const chartNote = el("p", { class: "reason", id: "candles-note" });
  const swatch = (colour, label, cls) => el("span", { class: "item" }, el("i", { class: cls || null, style: (cls === "mark" ? "border-bottom-color:" : "background:") + colour }), label);
  const key = el("div", { class: "legend crypto-key", role: "note", "aria-label": "Candles" },
    swatch(RISE, "close ≥ open"), swatch(FALL, "close < open"), MAS.map(([, label, c]) => swatch(c, label, "line")),
    swatch(MARK, "anomaly", "mark"), el("span", { class: "item" }, "bars: volume"));
  const forecastTitle = el("h2", { id: "forecast-title" }, "Forecast");
  const forecastNode = el("div", { class: "chart crypto-forecast", id: "forecast", hidden: true });
  const forecastNote = el("p", { class: "reason", id: "forecast-note" });
  const anomalyList = el("ul", { class: "feed crypto-anomalies", id: "anomalies", "aria-live": "polite" }, el("li", { class: "empty" }, "No anomaly yet."));
  const marketNote = el("p", { class: "reason", id: "markets-note" });
  const marketTable = el("table", { class: "crypto-markets", id: "markets" });

  clear(main,
    el("div", { class: "controls crypto-controls" },
      el("h1", null, "Crypto markets"),
      el("label", null, "symbol", symbolSelect),
      el("label", null, "interval", intervalSelect)),
    notice, modeNote,
    el("div", { class: "split crypto-layout" },
      el("section", { class: "card" }, chartTitle, chartNode, el("div", { class: "legend-bar" }, key), chartNote),
      el("div", { class: "stack" },
        el("section", { class: "card" }, forecastTitle, forecastNode, forecastNote),
        el("section", { class: "card" }, el("h2", null, "Anomalies"),
          el("p", { class: "reason" }, "A candle whose move is far outside its symbol's recent volatility; newest first."), anomalyList))),
    el("section", { class: "card crypto-marketcard" }, el("h2", null, "Top coins"), marketNote, el("div", { class: "crypto-table" }, marketTable)));

  // -- symbols, and the chosen coin ----------------------------------------------------------------------------
  let symbols = []; // /api/crypto/symbols: the symbols with candles, with their coin
  let coins = []; // the crypto.markets rows
  const coinOf = (symbol) => (symbols.find((s) => s.symbol === symbol) || {}).coin_id || "";
  const coinId = () => state.coin || coinOf(state.symbol);

  async function loadSymbols() {
    try {
      symbols = await A.getJSON("/api/crypto/symbols");
    } catch (e) {
      console.warn("symbols: " + e.message);
    }
    if (!state.symbol && symbols.length) {
      state.symbol = symbols[0].symbol;
      loadCandles();
      loadForecast();
    }
    drawSymbols();
  }

  function drawSymbols() {
    const opts = symbols.map((s) => el("option", { value: s.symbol }, s.name ? s.symbol + " · " + s.name : s.symbol));
    if (state.symbol && !symbols.some((s) => s.symbol === state.symbol)) opts.push(el("option", { value: state.symbol }, state.symbol));
    clear(symbolSelect, opts.length ? opts : el("option", { value: "" }, "no candles yet"));
    symbolSelect.value = state.symbol;
    intervalSelect.value = state.interval;
  }

  function saveURL() {
    const q = new URLSearchParams();
    if (state.symbol) q.set("symbol", state.symbol);
    if (state.interval !== "1m") q.set("interval", state.interval);
    if (state.coin) q.set("coin", state.coin);
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  }

  function choose(symbol, coin) {
    const forecastMoves = (coin || coinOf(symbol)) !== coinId();
    const candlesMove = symbol !== state.symbol;
    state.symbol = symbol;
    state.coin = coin && coin !== coinOf(symbol) ? coin : "";
    saveURL();
    drawSymbols();
    drawMarkets();
    drawAnomalies();
    if (candlesMove) loadCandles();
    if (forecastMoves) loadForecast();
  }

  // a coin chosen in the table: its symbol's candles when it has some, its forecast anyway
  function chooseCoin(coin) {
    const s = symbols.find((x) => x.coin_id === coin);
    choose(s ? s.symbol : state.symbol, coin);
  }

  symbolSelect.addEventListener("change", () => choose(symbolSelect.value, ""));
  intervalSelect.addEventListener("change", () => { state.interval = intervalSelect.value; saveURL(); loadCandles(); });

  // -- the market table -----------------------------------------------------------------------------------------
  const COLS = [
    ["rank", "#", true, (r) => (missing(r.rank) ? "–" : String(r.rank))],
    ["name", "coin", false, (r) => [el("button", { type: "button", class: "coin", onclick: () => chooseCoin(r.coin_id) }, r.name || r.coin_id),
      el("span", { class: "sym" }, (r.symbol || "").toUpperCase())]],
    ["price", "price", true, (r) => price(r.price)],
    ["change_1h_pct", "1 h", true, (r) => change(r.change_1h_pct)],
    ["change_24h_pct", "24 h", true, (r) => change(r.change_24h_pct)],
    ["change_7d_pct", "7 d", true, (r) => change(r.change_7d_pct)],
    ["market_cap", "market cap", true, (r) => compact(r.market_cap)],
    ["volume_24h", "volume 24 h", true, (r) => compact(r.volume_24h)],
  ];
  const sort = { key: "rank", desc: false };
  const lastPrice = new Map(); // coin -> the price shown before, to flash a move

  function sorted(rows) {
    const k = sort.key;
    return [...rows].sort((a, b) => {
      const nulls = missing(a[k]) - missing(b[k]); // missing values last, whichever the order
      if (nulls) return nulls;
      const c = a[k] < b[k] ? -1 : a[k] > b[k] ? 1 : 0;
      return (sort.desc ? -c : c) || (a.rank ?? Infinity) - (b.rank ?? Infinity);
    });
  }

  function marketRow(r) {
    const before = lastPrice.get(r.coin_id);
    const tick = missing(before) || missing(r.price) || before === r.price ? "" : r.price > before ? " tick-up" : " tick-down";
    lastPrice.set(r.coin_id, r.price);
    return el("tr", { "data-coin": r.coin_id, class: r.coin_id === coinId() ? "chosen" : null },
      COLS.map(([k, , isNum, cell]) => el("td", { class: (isNum ? "num " : "") + "col-" + k + (k === "price" ? tick : "") }, cell(r))));
  }

  function drawMarkets() {
    const top = coins.filter((r) => r.in_top);
    const left = coins.filter((r) => !r.in_top);
    const head = el("tr", null, COLS.map(([k, label, isNum]) => el("th", {
      class: isNum ? "num" : null, scope: "col", "data-sort": k, "aria-sort": sort.key === k ? (sort.desc ? "descending" : "ascending") : null,
      onclick: () => { sort.desc = sort.key === k ? !sort.desc : isNum && k !== "rank"; sort.key = k; drawMarkets(); },
    }, label)));
    clear(marketTable, el("thead", null, head), el("tbody", { class: "in-top" }, sorted(top).map(marketRow)),
      left.length ? el("tbody", { class: "left-top" },
        el("tr", { class: "left-head" }, el("th", { colspan: COLS.length, scope: "rowgroup" }, "Left the top " + top.length + ": their last values")),
        sorted(left).map(marketRow)) : null);
    const newest = Math.max(0, ...coins.map((r) => r.snapshot_ms || 0));
    const currency = [...new Set(coins.map((r) => (r.vs_currency || "").toUpperCase()).filter(Boolean))].join(", ");
    marketNote.textContent = coins.length
      ? "The top " + top.length + " coins by market capitalisation" + (currency ? ", in " + currency : "") + "; as of " + time(newest) + " (" + ago(newest) +
        "). Changes are signed: a fall is negative. Choose a coin for its candles and forecast."
      : "No market snapshot yet: the coins appear as the crypto app reads them.";
  }

  // -- candles ----------------------------------------------------------------------------------------------------
  let rows = []; // the chosen symbol and interval's candles, oldest first
  let loaded = ""; // "symbol|interval" of `rows`, once read
  let anomalyRows = []; // the crypto.anomalies rows
  let plot = null;
  let candleSeq = 0;

  // uPlot draws no candlestick: the open, high, low, close and volume series draw nothing themselves (they set
  // the scales and fill the legend); this hook draws each candle's volume bar, wick and body, over the grid and
  // under the averages' lines
  function drawBodies(u) {
    const [xs, o, h, l, c, , , , vol] = u.data;
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    const px = dpr();
    const step = INTERVALS[state.interval] / 1000;
    const slot = xs.length ? Math.abs(u.valToPos(xs[0] + step, "x", true) - u.valToPos(xs[0], "x", true)) : 0;
    const w = Math.max(px, Math.min(Math.round(slot * 0.7), 16 * px));
    const base = u.valToPos(0, "vol", true);
    let drawn = 0;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.lineWidth = px;
    for (let i = 0; i < xs.length; i++) {
      if (missing(o[i]) || missing(h[i]) || missing(l[i]) || missing(c[i])) continue;
      const x = Math.round(u.valToPos(xs[i], "x", true));
      if (x < left - w || x > left + width + w) continue; // out of a zoomed view
      const x0 = x - Math.floor(w / 2);
      ctx.fillStyle = ctx.strokeStyle = c[i] >= o[i] ? RISE : FALL;
      if (vol[i] > 0) {
        const y = u.valToPos(vol[i], "vol", true);
        ctx.globalAlpha = 0.22;
        ctx.fillRect(x0, y, w, base - y);
        ctx.globalAlpha = 1;
      }
      const mid = x + (px % 2) / 2; // a one-pixel line sits on a pixel, not across two
      ctx.beginPath();
      ctx.moveTo(mid, u.valToPos(h[i], "y", true));
      ctx.lineTo(mid, u.valToPos(l[i], "y", true));
      ctx.stroke();
      const y0 = Math.round(u.valToPos(Math.max(o[i], c[i]), "y", true));
      const y1 = Math.round(u.valToPos(Math.min(o[i], c[i]), "y", true));
      ctx.fillRect(x0, y0, w, Math.max(px, y1 - y0)); // an unchanged price still shows as a line
      drawn++;
    }
    ctx.restore();
    chartNode.dataset.drawn = String(drawn);
  }

  // each anomaly of the symbol on its candle: ▲ over a rise, ▼ under a fall (on a longer interval, on the candle that holds it)
  function drawMarks(u) {
    const xs = u.data[0];
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    const px = dpr();
    const size = 5 * px;
    const step = INTERVALS[state.interval];
    const at = new Map(rows.map((r, i) => [r.open_time, i]));
    let marks = 0;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.fillStyle = MARK;
    ctx.strokeStyle = "#1b1f24";
    ctx.lineWidth = px;
    for (const a of anomalyRows) {
      const i = a.symbol === state.symbol ? at.get(Math.floor(a.open_time / step) * step) : undefined;
      if (i === undefined || i >= xs.length || missing(u.data[2][i]) || missing(u.data[3][i])) continue;
      const x = u.valToPos(xs[i], "x", true);
      const up = a.direction ? a.direction === "up" : a.return_pct > 0;
      const y = up ? u.valToPos(u.data[2][i], "y", true) - 3 * px : u.valToPos(u.data[3][i], "y", true) + 3 * px;
      const tip = up ? y - 1.7 * size : y + 1.7 * size;
      ctx.beginPath();
      ctx.moveTo(x - size, y);
      ctx.lineTo(x + size, y);
      ctx.lineTo(x, tip);
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
      marks++;
    }
    ctx.restore();
    chartNode.dataset.marks = String(marks);
  }

  function candleOptions() {
    const none = { paths: () => null, points: { show: false } };
    const pv = (u, v) => price(v);
    return {
      height: window.innerWidth < 480 ? 300 : 380,
      cursor: { drag: { x: true, y: false } },
      scales: {
        // half a candle on each side, so that the first and last bodies are whole
        x: { time: true, range: (u, min, max) => (missing(min) ? [min, max] : [min - INTERVALS[state.interval] / 2000, max + INTERVALS[state.interval] / 2000]) },
        // room under the candles for the volume bars
        y: { range: (u, min, max) => {
          if (missing(min)) return [min, max];
          const span = max - min || Math.abs(max) * 0.02 || 1;
          return [min - span * 0.35, max + span * 0.08];
        } },
        vol: { range: (u, min, max) => [0, (max || 1) * 4] },
      },
      series: [
        { label: "time", value: (u, v) => (missing(v) ? "–" : when(v * 1000, state.interval === "1h")) },
        { label: "open", stroke: "#57606a", ...none, value: pv },
        { label: "high", stroke: "#57606a", ...none, value: pv },
        { label: "low", stroke: "#57606a", ...none, value: pv },
        { label: "close", stroke: "#1b1f24", ...none, value: pv },
        ...MAS.map(([, label, colour]) => ({ label, stroke: colour, width: 1.5, points: { show: false }, value: pv })),
        { label: "volume", stroke: "#8c959f", scale: "vol", ...none, value: (u, v) => compact(v) },
      ],
      axes: [{}, { size: 76, values: ticks }],
      hooks: { drawAxes: [drawBodies], draw: [drawMarks] },
    };
  }

  function drawCandles() {
    const d = [[], [], [], [], [], [], [], [], []];
    for (const r of rows) {
      d[0].push(r.open_time / 1000);
      ["open", "high", "low", "close", "ma_7", "ma_25", "ma_99", "volume"].forEach((k, i) => d[i + 1].push(missing(r[k]) ? null : r[k]));
    }
    const last = rows[rows.length - 1];
    chartNode.dataset.candles = String(rows.length);
    chartNode.dataset.symbol = state.symbol;
    chartNode.dataset.interval = state.interval;
    chartNode.dataset.lastOpen = last ? String(last.open_time) : "";
    chartTitle.textContent = state.symbol ? state.symbol + " · " + state.interval + " candles" : "Candles";
    if (!plot) {
      plot = A.chart(chartNode, candleOptions(), d);
    } else {
      // a view the reader zoomed into stays put while candles come in
      const xs = plot.data[0];
      const whole = !xs.length || (plot.scales.x.min <= xs[0] && plot.scales.x.max >= xs[xs.length - 1]);
      plot.setData(d, whole);
    }
    if (!state.symbol) chartNote.textContent = "No candles yet: they appear as the crypto app builds them from the exchange's trades.";
    else if (!rows.length) chartNote.textContent = loaded ? "No " + state.interval + " candles of " + state.symbol + " yet." : "Reading the candles…";
    else {
      const first = rows[0];
      chartNote.textContent = rows.length + " candles, " + when(first.open_time, true) + " to " + when(last.open_time, true) +
        " (your time). Last: " + price(last.close) + ", " + (last.trades ?? "–") + " trades in the candle. Drag to zoom, double-click to see all.";
    }
  }

  // several answers for one open time (a read, live updates): a candle only gains trades, so the one with more is the later
  function merge(got) {
    const by = new Map(rows.map((r) => [r.open_time, r]));
    for (const r of got) {
      const old = by.get(r.open_time);
      if (!old || (r.trades || 0) >= (old.trades || 0)) by.set(r.open_time, r);
    }
    rows = [...by.values()].sort((a, b) => a.open_time - b.open_time).slice(-KEEP);
  }

  const candlesURL = (extra) => "/api/crypto/candles?" + new URLSearchParams({ symbol: state.symbol, interval: state.interval, limit: LIMIT, ...extra });

  async function loadCandles() {
    const mine = ++candleSeq;
    const want = state.symbol + "|" + state.interval;
    rows = [];
    loaded = "";
    drawCandles(); // empty: the next series is fitted whole
    if (!state.symbol) return;
    let got;
    try {
      got = await A.getJSON(candlesURL({}));
    } catch (e) {
      if (mine === candleSeq) chartNote.textContent = "Could not read the candles: " + e.message;
      return;
    }
    if (mine !== candleSeq) return;
    rows = got;
    loaded = want;
    const newest = liveCandles.rows.get(want); // what the live channel said meanwhile
    if (newest) merge([newest]);
    drawCandles();
  }

  // the newest candle of a series, live: the one building is replaced, a new one appended; the candles since the
  // previous newest are read again, for the last trades of the one that closed
  function onNewest(r) {
    if (r.symbol + "|" + r.interval !== loaded) return;
    const last = rows[rows.length - 1];
    merge([r]);
    drawCandles();
    if (last && r.open_time > last.open_time) refill(last.open_time);
  }

  async function refill(since) {
    const want = loaded;
    try {
      const got = await A.getJSON(candlesURL({ since }));
      if (want === loaded) { merge(got); drawCandles(); }
    } catch (e) {
      console.warn("candles: " + e.message);
    }
  }

  // -- the forecast -------------------------------------------------------------------------------------------------
  let fplot = null;
  let forecastSeq = 0;
  let shownRun = null; // made_ms of the forecast on screen

  async function loadForecast() {
    const coin = coinId();
    const mine = ++forecastSeq;
    if (!coin) {
      forecastTitle.textContent = "Forecast";
      forecastNote.textContent = "Choose a coin in the table for its forecast.";
      forecastNode.hidden = true;
      return;
    }
    let f;
    try {
      f = await A.getJSON("/api/crypto/forecast/" + encodeURIComponent(coin));
    } catch (e) {
      if (mine === forecastSeq) { forecastNote.textContent = "Could not read the forecast: " + e.message; forecastNode.hidden = true; }
      return;
    }
    if (mine === forecastSeq) drawForecast(f);
  }

  function drawForecast(f) {
    shownRun = f.made_ms;
    const name = f.name || f.coin_id;
    forecastTitle.textContent = "Forecast: " + name + (f.vs_currency ? " in " + f.vs_currency.toUpperCase() : "");
    const times = [...new Set([...f.recent.map((p) => p.time_ms), ...f.points.map((p) => p.at_ms)])].sort((a, b) => a - b);
    const recent = new Map(f.recent.map((p) => [p.time_ms, p.price]));
    const points = new Map(f.points.map((p) => [p.at_ms, p]));
    const pick = (k) => times.map((t) => (points.has(t) ? points.get(t)[k] : null));
    const d = [times.map((t) => t / 1000), times.map((t) => recent.get(t) ?? null), pick("price"), pick("low"), pick("high")];
    forecastNode.dataset.points = String(f.points.length);
    forecastNode.dataset.recent = String(f.recent.length);
    forecastNode.hidden = !times.length;
    const pv = (u, v) => price(v);
    if (!fplot) {
      fplot = A.chart(forecastNode, {
        height: 220,
        series: [
          { label: "time", value: (u, v) => (missing(v) ? "–" : when(v * 1000, true)) },
          { label: "price", stroke: C.blue, width: 2, value: pv },
          { label: "forecast", stroke: C.orange, width: 2, dash: [6, 4], value: pv },
          { label: "low", stroke: "rgba(230, 159, 0, 0.55)", width: 1, value: pv },
          { label: "high", stroke: "rgba(230, 159, 0, 0.55)", width: 1, value: pv },
        ],
        bands: [{ series: [4, 3], fill: "rgba(230, 159, 0, 0.18)" }],
        axes: [{}, { size: 76, values: ticks }],
      }, d);
    } else {
      fplot.setData(d);
    }
    // say only what is drawn: hourly closes exist once the app has run for an hour
    const closes = f.recent.length - (f.recent.length ? 1 : 0);
    const before = closes > 0 ? " after its prices of the last 48 hours (" + closes + " " + f.symbol + " hourly closes, then the market's price)"
      : f.recent.length ? " after the market's latest price" : "";
    forecastNote.textContent = f.points.length
      ? "Made " + time(f.made_ms) + " (" + ago(f.made_ms) + ")" + (f.model ? " by " + f.model : "") + ": the price hour by hour with its low–high band" + before + "."
      : "No forecast of " + name + " yet.";
  }

  // -- anomalies ------------------------------------------------------------------------------------------------------
  let newKeys = new Set();

  function drawAnomalies() {
    const list = [...anomalyRows].sort((a, b) => b.open_time - a.open_time || (a.symbol < b.symbol ? -1 : 1));
    clear(anomalyList, list.length ? list.map((a) => el("li", {
      class: (a.return_pct < 0 ? "down" : "up") + (a.symbol === state.symbol ? " mine" : "") + (newKeys.has(a.symbol + "|" + a.open_time) ? " new" : ""),
      "data-symbol": a.symbol, "data-open-time": a.open_time,
    },
    el("div", null, el("button", { type: "button", class: "coin", title: "Show its candles", onclick: () => choose(a.symbol, "") }, a.symbol), " ", change(a.return_pct),
      missing(a.z) ? null : el("span", { class: "z" }, " z " + format({ signDisplay: "exceptZero", maximumFractionDigits: 1 }).format(a.z))),
    el("div", { class: "detail" }, a.reason || "–"),
    el("div", { class: "when" }, time(a.open_time) + " · close " + price(a.close)))) : el("li", { class: "empty" }, "No anomaly yet."));
    if (plot) plot.redraw(false, false);
  }

  // -- live ----------------------------------------------------------------------------------------------------------
  let symbolsAsked = null;
  function symbolsLater() { // a new symbol or coin: read the symbols again, once for a burst
    clearTimeout(symbolsAsked);
    symbolsAsked = setTimeout(loadSymbols, 500);
  }

  const liveCandles = new A.Keyed((all, kind, data) => {
    for (const r of kind === "snapshot" ? all : data.upsert) onNewest(r);
    if (all.some((r) => !symbols.some((s) => s.symbol === r.symbol))) symbolsLater();
  });
  let coinIds = "";
  const liveMarkets = new A.Keyed((all) => {
    coins = all;
    drawMarkets();
    const ids = all.map((r) => r.coin_id).sort().join(",");
    if (coinIds && ids !== coinIds) symbolsLater(); // a coin came: a symbol may be its
    coinIds = ids;
  });
  const liveAnomalies = new A.Keyed((all, kind, data) => {
    anomalyRows = all;
    newKeys = new Set(kind === "delta" ? data.upsert.map((a) => a.symbol + "|" + a.open_time) : []);
    drawAnomalies();
  });
  const liveForecasts = new A.Keyed((all) => {
    const mine = all.find((r) => r.coin_id === coinId());
    if (mine && mine.made_ms !== shownRun) loadForecast();
  });

  const appNotice = A.appNotice("crypto", notice);
  function onApps(kind, apps) {
    appNotice(kind, apps);
    const a = (apps || []).find((x) => x.app === "crypto");
    const offline = !!a && (a.state === "replaying" || a.state === "simulating");
    modeNote.hidden = !offline;
    if (offline) {
      modeNote.textContent = "Offline: these prices come from " + (a.state === "replaying" ? "a recording of the markets and trades, replayed" : "a simulator") +
        ", not from the live markets" + (a.reason ? " (" + a.reason + ")" : "") + ".";
    }
  }

  drawSymbols();
  drawMarkets();
  const named = state.symbol;
  await loadSymbols(); // with no symbol in the URL, it chooses the first one and reads it
  if (named || !state.symbol) { loadCandles(); loadForecast(); }
  A.live({
    apps: onApps,
    "crypto.markets": (kind, data) => liveMarkets.apply(kind, data),
    "crypto.candles": (kind, data) => liveCandles.apply(kind, data),
    "crypto.anomalies": (kind, data) => liveAnomalies.apply(kind, data),
    "crypto.forecasts": (kind, data) => liveForecasts.apply(kind, data),
  });
  window.affluentCrypto = { rows: () => rows, plot: () => plot, forecast: () => fplot };
})();
