// Stock: the live alert feed, open restock requests by priority and store, stores on a map, and the
// five answers over the lake for a chosen period.
"use strict";

(async () => {
  const { el, clear, num, time, ago, PALETTE: C } = A;
  const main = document.getElementById("main");
  const feed = el("ul", { class: "feed", id: "stock-alerts", "aria-live": "polite" });
  const requests = el("div", { id: "restock" });
  const byStore = el("div", { id: "restock-by-store" });
  const mapNode = el("div", { class: "map small", id: "map", role: "region", "aria-label": "Map of stores" });
  const since = el("input", { type: "date", id: "since" });
  const until = el("input", { type: "date", id: "until" });
  const answersNote = el("p", { class: "reason", id: "answers-note" });
  const charts = el("div", { class: "charts", id: "answers" });
  const day = (d) => d.toLocaleDateString("en-CA");
  const preset = (days) => () => {
    const now = new Date();
    until.value = day(now);
    since.value = days === null ? "" : day(new Date(now.getTime() - (days - 1) * 86400000));
    if (days === null) until.value = "";
    loadAnswers();
  };
  const notice = el("div", { class: "notice", hidden: true, role: "status" });
  clear(main,
    el("h1", null, "Warehouse stock"),
    notice,
    el("div", { class: "split" },
      el("div", { class: "stack" },
        el("section", { class: "card" }, el("h2", null, "Stores"), mapNode),
        el("section", { class: "card" }, el("h2", null, "Open restock requests"), byStore, el("div", { class: "scroll" }, requests))),
      el("section", { class: "card" }, el("h2", null, "Live alerts"),
        el("p", { class: "reason" }, "A shelf alerts when its stock falls below its threshold; simulated stores sell during their opening hours."),
        feed)),
    el("section", { class: "card", style: "margin-top:1rem" },
      el("h2", null, "Answers over the lake"),
      el("div", { class: "controls" },
        el("label", null, "from", since), el("label", null, "to (included)", until),
        el("button", { type: "button", onclick: () => loadAnswers() }, "Answer"),
        el("button", { type: "button", onclick: preset(1) }, "today"),
        el("button", { type: "button", onclick: preset(7) }, "7 days"),
        el("button", { type: "button", onclick: preset(null) }, "all")),
      answersNote, charts));

  const map = await A.map(mapNode);
  const STORE = [[C.blue, "no open request"], [C.yellow, "open requests"], [C.vermillion, "a third of shelves or more in alert"]];
  A.legend(map, "Stores", STORE.map(([c, l]) => [c, l]));
  const layer = L.featureGroup().addTo(map);
  let fitted = false;

  function storeColour(s) {
    if (s.shelves && s.alerts / s.shelves >= 1 / 3) return STORE[2][0];
    return s.open_requests ? STORE[1][0] : STORE[0][0];
  }

  function drawStores(rows) {
    layer.clearLayers();
    for (const s of rows) {
      if (s.lat === null || s.lon === null) continue;
      L.circleMarker([s.lat, s.lon], { radius: 7 + Math.sqrt(s.shelves || 1) * 2, color: "#1b1f24", weight: 1, fillColor: storeColour(s), fillOpacity: 0.9, className: "store" })
        .bindPopup(() => el("div", { class: "popup" }, el("h3", null, s.store_id), A.dl([
          ["shelves", num(s.shelves)], ["in alert", num(s.alerts)], ["open requests", num(s.open_requests)],
          ["last reading", time(s.last_ms) + " (" + ago(s.last_ms) + ")"]])))
        .addTo(layer);
    }
    if (!fitted && rows.length) { map.fitBounds(layer.getBounds().pad(0.3), { maxZoom: 11 }); fitted = true; }
  }

  function drawRequests(rows) {
    const stores = {};
    for (const r of rows) {
      const s = (stores[r.store_id] = stores[r.store_id] || { store_id: r.store_id, high: 0, normal: 0, missing: 0 });
      s[r.high_priority ? "high" : "normal"] += 1;
      s.missing += r.missing_quantity || 0;
    }
    clear(byStore, rows.length ? A.table([
      { key: "store_id", label: "store" },
      { key: "high", label: "high priority", num: true },
      { key: "normal", label: "normal", num: true },
      { key: "missing", label: "units missing", num: true },
    ], Object.values(stores), { sort: "high", desc: true }) : null);
    clear(requests, rows.length ? A.table([
      { key: "high_priority", label: "priority", fmt: (v) => (v ? "high" : "normal") },
      { key: "store_id", label: "store" },
      { key: "product_id", label: "product" },
      { key: "missing_quantity", label: "missing", num: true },
      { key: "quantity", label: "left", num: true },
      { key: "opened_ms", label: "opened", fmt: (v) => ago(v) },
    ], rows) : el("p", { class: "empty" }, "No open request: every shelf is stocked."));
  }

  async function loadAnswers() {
    const params = new URLSearchParams();
    if (since.value) params.set("since", since.value);
    if (until.value) params.set("until", until.value);
    answersNote.textContent = "Reading the lake…";
    let got;
    try {
      got = await A.getJSON("/api/stock/answers?" + params);
    } catch (e) {
      answersNote.textContent = "Could not answer: " + e.message;
      return;
    }
    if (!got.readings) {
      answersNote.textContent = got.note || "No reading in this period.";
      clear(charts);
      return;
    }
    const wv = got.weekend_vs_weekday;
    answersNote.textContent = num(got.readings) + " readings, " + num(got.alerts) + " alerts, " + got.stores + " stores, from " +
      got.first_reading + " to " + got.last_reading + " (" + got.timezone + "). More alerts per day on: " + wv.more_alerts_per_day_on + ".";
    const box = (h, id, empty) => {
      const n = el("div", { class: "chart", id });
      charts.append(el("figure", { class: "card", style: "margin:0" }, el("h2", null, h), empty ? el("p", { class: "empty" }, empty) : n));
      return n;
    };
    const noAlert = got.alerts ? null : "No alert in this period.";
    clear(charts);
    A.bars(box("Alerts per day: weekdays or weekends?", "chart-weekend"), ["weekdays", "weekends"],
      [{ label: "alerts per day", colour: C.blue, values: [wv.weekday.alerts_per_day, wv.weekend.alerts_per_day], digits: 1 }]);
    A.bars(box("Products with the most alerts", "chart-products", noAlert), got.top_products.map((p) => p.product_id),
      [{ label: "alerts", colour: C.vermillion, values: got.top_products.map((p) => p.alerts) }]);
    A.bars(box("Hours with the most alerts (local)", "chart-hours", noAlert), got.top_hours.map((h) => String(h.hour).padStart(2, "0") + ":00"),
      [{ label: "alerts", colour: C.orange, values: got.top_hours.map((h) => h.alerts) }]);
    A.bars(box("Mean stock per product", "chart-stock"), got.stock_per_product.map((p) => p.product_id), [
      { label: "mean quantity", colour: C.sky, values: got.stock_per_product.map((p) => p.mean_quantity), digits: 1 },
      { label: "mean threshold", colour: C.vermillion, values: got.stock_per_product.map((p) => p.mean_threshold), digits: 1, line: true },
    ]);
    const trend = got.hourly_trend;
    A.bars(box("Stock hour by hour (local)", "chart-trend"), trend.map((h) => h.hour.slice(5, 16)), [
      { label: "mean quantity", colour: C.blue, values: trend.map((h) => h.mean_quantity), digits: 1, line: true },
    ]);
  }

  A.live({
    apps: A.appNotice("stock", notice),
    "stock.stores": (() => { const k = new A.Keyed(drawStores); return (kind, data) => k.apply(kind, data); })(),
    "stock.restock": (() => {
      const k = new A.Keyed((rows) => drawRequests(rows.sort((a, b) => (b.high_priority - a.high_priority) || (b.missing_quantity - a.missing_quantity))));
      return (kind, data) => k.apply(kind, data);
    })(),
    alerts: A.alertFeed(feed, "stock"),
  });
  preset(7)();
})();
