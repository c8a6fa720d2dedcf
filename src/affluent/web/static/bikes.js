// Bikes: stations on a map (size: capacity, colour: fill ratio), system totals over time, problem
// bikes, the top 3 by range, and each station's day from the lake.
"use strict";

(async () => {
  const { el, clear, num, time, ago, PALETTE: C } = A;
  const main = document.getElementById("main");

  // fill classes, in legend order; the colour is told apart by every common colour-vision deficiency
  const CLASSES = [
    ["empty", C.vermillion, "empty (no bike)"],
    ["low", C.yellow, "1–33 % full"],
    ["mid", "#b9e0f5", "34–66 % full"],
    ["high", C.sky, "67–99 % full"],
    ["full", C.blue, "full (no dock)"],
    ["closed", C.grey, "not renting"],
  ];
  const COLOUR = Object.fromEntries(CLASSES.map(([k, c]) => [k, c]));

  function fillClass(s) {
    if (!s.is_installed || !s.is_renting) return "closed";
    const bikes = s.num_bikes_available || 0;
    const docks = s.num_docks_available || 0;
    if (bikes === 0) return "empty";
    if (docks === 0) return "full";
    const ratio = bikes / (s.capacity || bikes + docks);
    return ratio <= 1 / 3 ? "low" : ratio <= 2 / 3 ? "mid" : "high";
  }

  const systemSelect = el("select", { id: "system", "aria-label": "System" });
  const title = el("h1", null, "Bike share");
  const mapNode = el("div", { class: "map", id: "map", role: "region", "aria-label": "Map of stations" });
  const totals = el("div", { class: "stats", id: "totals" });
  const chartNode = el("div", { class: "chart", id: "totals-chart" });
  const chartNote = el("p", { class: "empty" });
  const problems = el("div", { id: "problems" });
  const topRange = el("div", { id: "top-range" });
  const dayInput = el("input", { type: "date", id: "day", value: new Date().toLocaleDateString("en-CA") });
  const dayOut = el("div", { id: "day-table", class: "scroll" });
  const notice = el("div", { class: "notice", hidden: true, role: "status" });
  clear(main,
    el("div", { class: "controls" }, title, el("label", null, "system", systemSelect)),
    notice,
    el("div", { class: "split" },
      el("section", { class: "card" }, mapNode),
      el("div", { class: "stack" },
        el("section", { class: "card" }, el("h2", null, "System now"), totals, chartNode, chartNote),
        el("section", { class: "card" }, el("h2", null, "Abandoned, reserved and disabled bikes"), problems),
        el("section", { class: "card" }, el("h2", null, "Top 3 by range"), topRange))),
    el("section", { class: "card", style: "margin-top:1rem" },
      el("h2", null, "Each station's day"),
      el("div", { class: "controls" }, el("label", null, "day", dayInput),
        el("button", { type: "button", onclick: () => loadDay() }, "Show")),
      dayOut));

  const map = await A.map(mapNode);
  A.legend(map, "Stations: fill", CLASSES.map(([, c, label]) => [c, label]));
  A.legend(map, "Size: capacity", [["#fff", "few docks"], ["#fff", "many docks", ";width:18px;height:18px"]]);
  const layer = L.featureGroup().addTo(map);
  const markers = new Map();
  let system = null;
  let fitted = false;
  let systems = [];
  let stations = [];
  let minutes = [];
  let fleet = [];
  let bikes = [];
  let plot = null;

  function popup(s) {
    return el("div", { class: "popup" },
      el("h3", null, s.name || s.station_id),
      A.dl([
        ["bikes", num(s.num_bikes_available)],
        ["docks", num(s.num_docks_available)],
        ["capacity", num(s.capacity)],
        ["state", s.is_installed && s.is_renting ? (s.is_returning ? "renting and returning" : "renting only") : "not renting"],
        ["disabled", num(s.num_bikes_disabled) + " bikes, " + num(s.num_docks_disabled) + " docks"],
        ["last report", time(s.last_reported_ms) + " (" + ago(s.last_reported_ms) + ")"],
      ]));
  }

  function drawStations() {
    const shown = stations.filter((s) => s.system_id === system && s.lat !== null && s.lon !== null);
    const keep = new Set();
    for (const s of shown) {
      const id = s.station_id;
      keep.add(id);
      const cls = fillClass(s);
      const style = {
        radius: 4 + Math.sqrt(s.capacity || (s.num_bikes_available || 0) + (s.num_docks_available || 0)) * 1.5,
        color: "#1b1f24", weight: 1, fillColor: COLOUR[cls], fillOpacity: 0.9,
        className: "station station-" + cls,
      };
      let m = markers.get(id);
      if (!m) {
        m = L.circleMarker([s.lat, s.lon], style).addTo(layer);
        markers.set(id, m);
      } else {
        m.setLatLng([s.lat, s.lon]);
        m.setStyle(style);
        m.setRadius(style.radius);
      }
      const path = m.getElement && m.getElement();
      if (path) { path.setAttribute("data-station", id); path.setAttribute("data-fill", cls); path.classList.remove(...CLASSES.map(([k]) => "station-" + k)); path.classList.add("station-" + cls); }
      m.bindPopup(() => popup(s));
      m.station = s;
    }
    for (const [id, m] of markers) if (!keep.has(id)) { layer.removeLayer(m); markers.delete(id); }
    if (!fitted && shown.length) { map.fitBounds(layer.getBounds().pad(0.1)); fitted = true; }
  }

  function drawTotals() {
    const rows = minutes.filter((r) => r.system_id === system).sort((a, b) => a.window_start_ms - b.window_start_ms);
    const last = rows[rows.length - 1];
    const here = stations.filter((s) => s.system_id === system);
    const sum = (k) => here.reduce((t, s) => t + (s[k] || 0), 0);
    clear(totals,
      [["stations", here.length], ["bikes", sum("num_bikes_available")], ["docks", sum("num_docks_available")],
        ["empty", here.filter((s) => fillClass(s) === "empty").length], ["full", here.filter((s) => fillClass(s) === "full").length]]
        .map(([label, v]) => el("div", null, el("div", { class: "big", "data-total": label }, num(v)), el("div", { class: "label" }, label))));
    const data = [rows.map((r) => r.window_start_ms / 1000), rows.map((r) => r.total_bikes_available), rows.map((r) => r.total_docks_available),
      rows.map((r) => r.empty_count), rows.map((r) => r.full_count)];
    if (!plot) {
      plot = A.chart(chartNode, {
        height: 230,
        // one minute only: uPlot would stretch the axis over years; show ten minutes around it
        scales: { x: { time: true, range: (u, min, max) => (u.data[0].length === 1 ? [min - 300, min + 300] : [min, max]) } },
        series: [{}, { label: "bikes", stroke: C.blue, width: 2 }, { label: "docks", stroke: C.orange, width: 2, dash: [6, 3] },
          { label: "empty stations", stroke: C.vermillion, scale: "n", width: 1.5 }, { label: "full stations", stroke: C.sky, scale: "n", width: 1.5, dash: [2, 2] }],
        axes: [{}, { label: "bikes, docks" }, { side: 1, scale: "n", label: "stations", grid: { show: false } }],
      }, data);
    } else {
      plot.setData(data);
    }
    chartNote.textContent = last ? "" : "No per-minute totals in the last 24 hours yet: they appear as snapshots come in.";
    chartNode.hidden = !last;
  }

  function drawProblems() {
    const here = bikes.filter((b) => b.system_id === system);
    const count = (f) => here.filter(f).length;
    clear(problems,
      el("div", { class: "stats" }, [["abandoned", count((b) => b.is_abandoned)], ["reserved", count((b) => b.is_reserved)], ["disabled", count((b) => b.is_disabled)]]
        .map(([label, v]) => el("div", null, el("div", { class: "big", "data-problem": label }, num(v)), el("div", { class: "label" }, label)))),
      here.length ? el("div", { class: "scroll" }, A.table([
        { key: "vehicle_id", label: "bike" },
        { key: "situation", label: "problem", fmt: (v, b) => [b.is_abandoned ? "abandoned" : null, v].filter(Boolean).join(", ") },
        { key: "station_name", label: "where", fmt: (v, b) => v || (b.lat !== null ? b.lat.toFixed(4) + ", " + b.lon.toFixed(4) : "–") },
        { key: "current_range_meters", label: "range km", num: true, fmt: (v) => (v === null ? "–" : num(v / 1000, 1)) },
      ], here, { sort: "vehicle_id" })) : el("p", { class: "empty" }, "None in the latest snapshot."));
  }

  function drawTopRange() {
    const rows = fleet.filter((r) => r.system_id === system).sort((a, b) => a.window_start_ms - b.window_start_ms);
    const top = rows.length ? rows[rows.length - 1].top_range || [] : [];
    clear(topRange, top.length ? A.table([
      { key: "vehicle_id", label: "bike" },
      { key: "current_range_meters", label: "range km", num: true, fmt: (v) => num(v / 1000, 1) },
      { key: "station_name", label: "station", fmt: (v) => v || "outside a station" },
    ], top) : el("p", { class: "empty" }, "No vehicle feed, or no range reported."));
  }

  async function loadDay() {
    if (!system) return;
    clear(dayOut, el("p", { class: "empty" }, "Reading the lake…"));
    try {
      const got = await A.getJSON("/api/bikes/day?day=" + encodeURIComponent(dayInput.value) + "&system_id=" + encodeURIComponent(system));
      clear(dayOut, got.stations.length ? A.table([
        { key: "name", label: "station" },
        { key: "minutes_observed", label: "minutes seen", num: true, fmt: (v) => num(v, 0) },
        { key: "mean_bikes", label: "mean bikes", num: true, fmt: (v) => num(v, 1) },
        { key: "mean_docks", label: "mean docks", num: true, fmt: (v) => num(v, 1) },
        { key: "minutes_empty", label: "minutes empty", num: true, fmt: (v) => num(v, 0) },
        { key: "minutes_full", label: "minutes full", num: true, fmt: (v) => num(v, 0) },
      ], got.stations, { sort: "minutes_empty", desc: true }) : el("p", { class: "empty" }, got.note || "No data for this day."));
    } catch (e) {
      clear(dayOut, el("p", { class: "empty" }, "Could not read the lake: " + e.message));
    }
  }

  function drawSystems() {
    const ids = [...new Set([...systems.map((s) => s.system_id), ...stations.map((s) => s.system_id)])].sort();
    if (!system || !ids.includes(system)) system = ids[0] || null;
    const names = Object.fromEntries(systems.map((s) => [s.system_id, s.name]));
    clear(systemSelect, ids.map((id) => el("option", { value: id, selected: id === system }, names[id] || id)));
    systemSelect.disabled = ids.length < 2;
    title.textContent = names[system] ? "Bike share: " + names[system] : "Bike share";
  }

  function redraw() { drawSystems(); drawStations(); drawTotals(); drawProblems(); drawTopRange(); }
  systemSelect.addEventListener("change", () => { system = systemSelect.value; fitted = false; markers.forEach((m) => layer.removeLayer(m)); markers.clear(); redraw(); loadDay(); });

  // the first rows of any channel may come before the system is known: a change of system redraws every card
  const k = (set, draw) => new A.Keyed((rows) => {
    set(rows);
    const before = system;
    drawSystems();
    if (before !== system) { redraw(); loadDay(); } else draw();
  });
  const chans = {
    "bikes.systems": k((r) => { systems = r; }, () => {}),
    "bikes.stations": k((r) => { stations = r; }, () => { drawStations(); drawTotals(); }),
    "bikes.minutes": k((r) => { minutes = r; }, drawTotals),
    "bikes.fleet": k((r) => { fleet = r; }, drawTopRange),
    "bikes.problems": k((r) => { bikes = r; }, drawProblems),
  };
  A.live({
    ...Object.fromEntries(Object.entries(chans).map(([name, keyed]) => [name, (kind, data) => keyed.apply(kind, data)])),
    apps: A.appNotice("bikes", notice),
  });
  window.affluentBikes = { markers, fillClass };
})();
