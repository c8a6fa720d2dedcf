// Jobs: France Travail's offers on a map of France by département (the overseas ones as insets),
// filtered by grand domaine, contract and period (kept in the URL, to share a view); a département's
// communes, top titles, categories and daily trend; a live counter of new offers and the latest ones.
"use strict";

(async () => {
  const { el, clear, num, time, PALETTE: C } = A;
  const main = document.getElementById("main");

  const OVERSEAS = ["971", "972", "973", "974", "976"];
  const METRO = L.latLngBounds([41.3, -5.2], [51.1, 9.6]);
  // offers per département: a sequential scale (ColorBrewer YlGnBu, light to dark, read alike with every
  // common colour-vision deficiency; its palest step left out), so that no offer at all, white, stands apart
  const RAMP = ["#c7e9b4", "#7fcdbb", "#41b6c4", "#1d91c0", "#225ea8", "#0c2c84"];
  const ZERO = "#ffffff";
  const PERIODS = [["today", "today", 1], ["7d", "last 7 days", 7], ["30d", "last 30 days", 30], ["all", "all days", null], ["dates", "from… to…", null]];
  const CATEGORIES = [["grand_domaine", "Grand domaine"], ["contract", "Contract"], ["experience", "Experience"],
    ["qualification", "Qualification"], ["sector", "Sector"]];
  const parisToday = () => new Date().toLocaleDateString("en-CA", { timeZone: "Europe/Paris" });
  const dayFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", timeZone: "Europe/Paris" });
  const addDays = (day, n) => new Date(Date.parse(day + "T00:00:00Z") + n * 86400000).toISOString().slice(0, 10);

  // -- the state, from the URL (the filters and the chosen département) ------------------------------------
  const state = { grand_domaine: "", contract: "", period: "all", since: "", until: "", departement: "" };
  const params = new URLSearchParams(location.search);
  for (const k of Object.keys(state)) if (params.get(k)) state[k] = params.get(k);
  if (!PERIODS.some(([p]) => p === state.period)) state.period = "all";
  if ((params.get("since") || params.get("until")) && !params.get("period")) state.period = "dates";

  // -- the page ------------------------------------------------------------------------------------------
  const gdSelect = el("select", { id: "grand-domaine" }, el("option", { value: "" }, "all grand domaines"));
  const contractSelect = el("select", { id: "contract" }, el("option", { value: "" }, "all contracts"));
  const periodSelect = el("select", { id: "period" }, PERIODS.map(([v, label]) => el("option", { value: v, selected: v === state.period }, label)));
  const sinceInput = el("input", { type: "date", id: "since" });
  const untilInput = el("input", { type: "date", id: "until" });
  const depSelect = el("select", { id: "departement" }, el("option", { value: "" }, "all of France"));
  const notice = el("div", { class: "notice", hidden: true, role: "status" });
  const modeNote = el("div", { class: "notice", id: "jobs-mode", hidden: true, role: "status" });
  const mapNode = el("div", { class: "map jobs-map", id: "map", role: "region", "aria-label": "Map of metropolitan France by département" });
  const insetNodes = Object.fromEntries(OVERSEAS.map((c) => [c, el("div", { class: "jobs-inset-map", id: "inset-" + c })]));
  const captions = Object.fromEntries(OVERSEAS.map((c) => [c, el("figcaption", null, c)]));
  const insets = el("div", { class: "jobs-insets", role: "group", "aria-label": "Overseas départements, each at its own scale" },
    OVERSEAS.map((c) => el("figure", { class: "jobs-inset", "data-inset": c }, insetNodes[c], captions[c])));
  const mapTitle = el("p", { class: "reason", id: "jobs-view" });
  const legendBar = el("div", { class: "legend-bar", id: "jobs-legend" });
  const summary = el("p", { class: "reason", id: "jobs-summary" });
  const counterStats = el("div", { class: "stats", id: "jobs-counter" });
  const counterNote = el("p", { class: "reason" });
  const hoursNode = el("div", { class: "chart jobs-hours", id: "jobs-hours" });
  const latestList = el("ul", { class: "feed jobs-latest", id: "jobs-latest", "aria-live": "polite" }, el("li", { class: "empty" }, "No offer yet."));
  const panel = el("section", { class: "card jobs-panel", id: "jobs-panel", "aria-live": "polite" });
  const trendNode = el("div", { class: "chart jobs-trend", id: "dep-trend" });

  clear(main,
    el("div", { class: "controls jobs-controls" },
      el("h1", null, "Job offers"),
      el("label", null, "grand domaine", gdSelect),
      el("label", null, "contract", contractSelect),
      el("label", null, "period", periodSelect),
      el("label", null, "from", sinceInput),
      el("label", null, "to (included)", untilInput),
      el("label", null, "département", depSelect)),
    notice, modeNote,
    el("div", { class: "split jobs-layout" },
      el("div", { class: "stack" },
        el("section", { class: "card jobs-mapcard" },
          el("h2", null, "New offers by département"), mapTitle,
          el("div", { class: "jobs-maps" }, insets, mapNode),
          legendBar, summary),
        el("section", { class: "card jobs-latestcard" }, el("h2", null, "Latest offers"),
          el("p", { class: "reason" }, "As the jobs app reads them from France Travail, newest first."), latestList)),
      el("div", { class: "stack" },
        el("section", { class: "card jobs-countercard" }, el("h2", null, "New offers, live"), counterStats, counterNote,
          el("h3", { class: "jobs-chart-title" }, "Created per hour, the last 48 hours"), hoursNode),
        panel)));

  // -- maps: metropolitan France, and each overseas département in its own inset ------------------------
  const [geo, map] = await Promise.all([A.getJSON("/static/geo/departements.json"), A.map(mapNode)]);
  map.fitBounds(METRO);
  const names = new Map(geo.features.map((f) => [f.properties.code, f.properties.nom]));
  const paths = new Map(); // code -> Leaflet layer (one SVG path each)
  const bounds = new Map();
  const counts = new Map(); // code -> {code, name, offers} of the current view
  let ups = []; // the classes' upper bounds
  let view = null; // /api/jobs/departements for the filters
  let detail = null; // /api/jobs/departements/{code} of the chosen département
  let trendPlot = null;
  let hoursPlot = null;

  const Home = L.Control.extend({
    onAdd: () => {
      const b = el("button", { type: "button", class: "jobs-home", title: "Show all of metropolitan France" }, "France");
      L.DomEvent.disableClickPropagation(b);
      b.addEventListener("click", () => select(""));
      return b;
    },
  });
  new Home({ position: "topleft" }).addTo(map);

  function tip(code) {
    const d = counts.get(code);
    return el("div", { class: "jobs-tip" }, el("strong", null, (d ? d.name : names.get(code)) + " (" + code + ")"), el("br"),
      d ? num(d.offers) + (d.offers === 1 ? " offer" : " offers") : "…");
  }

  function shapes(m, features) {
    const layer = L.geoJSON({ type: "FeatureCollection", features }, {
      style: { color: "#5b6670", weight: 0.6, fillColor: ZERO, fillOpacity: 1 },
      onEachFeature: (f, lyr) => {
        const code = f.properties.code;
        paths.set(code, lyr);
        bounds.set(code, lyr.getBounds());
        lyr.bindTooltip(() => tip(code), { sticky: true, direction: "top", offset: [0, -6] });
        lyr.on("click", () => select(code));
      },
    }).addTo(m);
    layer.eachLayer((lyr) => {
      const p = lyr.getElement();
      p.classList.add("dep");
      p.setAttribute("data-code", lyr.feature.properties.code);
      p.setAttribute("data-offers", "");
    });
    return layer;
  }

  shapes(map, geo.features.filter((f) => !OVERSEAS.includes(f.properties.code)));
  // the communes over the départements, even over the chosen one brought to the front
  map.createPane("communes").style.zIndex = 450;
  const points = L.featureGroup().addTo(map);
  const insetMaps = {};
  for (const f of geo.features.filter((x) => OVERSEAS.includes(x.properties.code))) {
    const code = f.properties.code;
    const m = L.map(insetNodes[code], {
      zoomControl: false, attributionControl: false, dragging: false, scrollWheelZoom: false, doubleClickZoom: false,
      boxZoom: false, keyboard: false, touchZoom: false, zoomSnap: 0,
    });
    const fit = () => m.fitBounds(L.geoJSON(f).getBounds(), { padding: [4, 4], animate: false });
    fit(); // before its shape: a map draws nothing until it has a view
    shapes(m, [f]);
    new ResizeObserver(() => { m.invalidateSize(false); fit(); }).observe(insetNodes[code]);
    captions[code].textContent = f.properties.nom;
    insetMaps[code] = m;
  }
  clear(depSelect, el("option", { value: "" }, "all of France"),
    [...names].sort(([a], [b]) => (a < b ? -1 : 1)).map(([code, name]) => el("option", { value: code }, code + " " + name)));
  depSelect.value = state.departement;

  // -- the colour scale: quantiles of the départements with offers, rounded up to two significant digits
  // (or one class per count when there are few) ------------------------------------------------------------
  const nice = (x) => {
    if (x < 100) return x;
    const p = 10 ** (Math.floor(Math.log10(x)) - 1);
    return Math.ceil(x / p) * p;
  };

  function breaks(values) {
    const v = values.filter((x) => x > 0).sort((a, b) => a - b);
    const distinct = [...new Set(v)];
    if (distinct.length <= RAMP.length) return distinct; // few values: one class each
    const k = RAMP.length;
    const max = v[v.length - 1];
    const out = [];
    for (let i = 1; i <= k; i++) {
      const q = i === k ? max : Math.min(max, nice(v[Math.ceil((i * v.length) / k) - 1]));
      if (q > (out.length ? out[out.length - 1] : 0)) out.push(q);
    }
    return out;
  }

  // the class of a count: -1 for none, else the first class whose upper bound holds it
  const bucket = (n) => (n > 0 ? ups.findIndex((u) => n <= u) : -1);
  // classes spread over the ramp, the top one always the darkest
  const colour = (i) => (i < 0 ? ZERO : ups.length === 1 ? RAMP[3] : RAMP[Math.round((i * (RAMP.length - 1)) / (ups.length - 1))]);

  function styleOf(code) {
    const d = counts.get(code);
    const chosen = code === state.departement;
    return {
      color: chosen ? "#111" : "#5b6670", weight: chosen ? 2.5 : 0.6,
      fillColor: colour(bucket(d ? d.offers : 0)), fillOpacity: chosen && detail ? 0.45 : 1,
    };
  }

  function paint() {
    for (const [code, lyr] of paths) {
      const n = counts.has(code) ? counts.get(code).offers : 0;
      lyr.setStyle(styleOf(code));
      const p = lyr.getElement();
      p.setAttribute("data-offers", String(n));
      p.setAttribute("data-class", String(bucket(n)));
      p.classList.toggle("chosen", code === state.departement);
      if (code === state.departement) lyr.bringToFront();
    }
  }

  function drawLegend() {
    const items = [[ZERO, "0", 0, 0]];
    let lo = 1;
    ups.forEach((hi, i) => {
      items.push([colour(i), lo === hi ? num(hi) : num(lo) + "–" + num(hi), lo, hi]);
      lo = hi + 1;
    });
    clear(legendBar,
      el("div", { class: "legend jobs-legend", role: "note", "aria-label": "Offers per département" },
        el("span", { class: "title" }, "Offers per département"),
        items.map(([c, label, min, max]) => el("span", { class: "item", "data-min": min, "data-max": max, "data-colour": c },
          el("i", { style: "background:" + c }), label))),
      detail && detail.communes.length ? el("div", { class: "legend", role: "note", "aria-label": "Communes" },
        el("span", { class: "title" }, "Communes of " + (detail.name || detail.code)),
        el("span", { class: "item" }, el("i", { class: "commune", style: "background:" + C.orange }), "size: offers")) : null);
  }

  // -- the filters: options from the data, the period from the server's day in Paris ----------------------
  let filters = { grand_domaine: [], contract: [], first_day: null, last_day: null, today: parisToday() };

  function period() {
    const p = PERIODS.find(([v]) => v === state.period);
    if (state.period === "dates") return [state.since || null, state.until || null];
    if (!p || p[2] === null) return [null, null];
    return [addDays(filters.today, 1 - p[2]), filters.today];
  }

  function query() {
    const q = new URLSearchParams();
    if (state.grand_domaine) q.set("grand_domaine", state.grand_domaine);
    if (state.contract) q.set("contract", state.contract);
    const [since, until] = period();
    if (since) q.set("since", since);
    if (until) q.set("until", until);
    return q;
  }

  function saveURL() {
    const q = new URLSearchParams();
    if (state.grand_domaine) q.set("grand_domaine", state.grand_domaine);
    if (state.contract) q.set("contract", state.contract);
    if (state.period !== "all") q.set("period", state.period);
    if (state.period === "dates") {
      if (state.since) q.set("since", state.since);
      if (state.until) q.set("until", state.until);
    }
    if (state.departement) q.set("departement", state.departement);
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  }

  const labelOf = (dim, code) => {
    const o = filters[dim].find((r) => r.code === code);
    return o ? o.label || o.code : code;
  };

  function describe() {
    const [since, until] = period();
    const when = state.period === "today" ? "today (" + filters.today + ")"
      : since && until ? (since === until ? since : since + " to " + until)
        : since ? "from " + since : until ? "until " + until
          : "all days" + (filters.first_day ? " (" + filters.first_day + " to " + filters.last_day + ")" : "");
    return [state.grand_domaine ? labelOf("grand_domaine", state.grand_domaine) : "all grand domaines",
      state.contract ? labelOf("contract", state.contract) : "all contracts", when].join(" · ");
  }

  function drawFilters() {
    const options = (select, rows, all, current) => {
      clear(select, el("option", { value: "" }, all),
        rows.map((r) => el("option", { value: r.code }, r.label || r.code)),
        current && !rows.some((r) => r.code === current) ? el("option", { value: current }, current) : null);
      select.value = current;
    };
    options(gdSelect, filters.grand_domaine, "all grand domaines", state.grand_domaine);
    options(contractSelect, filters.contract, "all contracts", state.contract);
    periodSelect.value = state.period;
    const [since, until] = period();
    sinceInput.value = since || "";
    untilInput.value = until || "";
  }

  async function loadFilters() {
    try {
      filters = await A.getJSON("/api/jobs/filters");
    } catch (e) {
      console.warn("filters: " + e.message);
    }
    drawFilters();
  }

  // -- the map's counts --------------------------------------------------------------------------------------
  let mapSeq = 0;

  async function loadMap() {
    const mine = ++mapSeq;
    let got;
    try {
      got = await A.getJSON("/api/jobs/departements?" + query());
    } catch (e) {
      summary.textContent = "Could not read the offers: " + e.message;
      return;
    }
    if (mine !== mapSeq) return;
    view = got;
    counts.clear();
    for (const d of view.departements) counts.set(d.code, d);
    ups = breaks(view.departements.map((d) => d.offers));
    mapTitle.textContent = describe();
    paint();
    drawLegend();
    drawSummary();
    if (!state.departement) drawOverview();
  }

  function drawSummary() {
    const onMap = view.departements.reduce((t, d) => t + d.offers, 0);
    const parts = [num(view.total) + (view.total === 1 ? " offer" : " offers") + " in view"];
    if (view.elsewhere.length) {
      parts.push(num(onMap) + " on the map; " + view.elsewhere.map((e) => num(e.offers) + " " + (e.code ? "in " + (e.name || e.code) : "with no département given")).join(", "));
    }
    let text = parts.join(": ") + ".";
    if (!view.total && filters.first_day) text += " None in this view: the offers read run from " + filters.first_day + " to " + filters.last_day + ".";
    else if (!view.total) text += " No offer read yet: they appear as the jobs app reads them.";
    summary.textContent = text;
  }

  // -- the side panel: all of France, or one département --------------------------------------------------
  let detailSeq = 0;

  function stat(label, value, id) {
    return el("div", null, el("div", { class: "big", id }, num(value)), el("div", { class: "label" }, label));
  }

  // horizontal bars: [label, count, rest] rows, the longest bar the largest count; a "rest" row (the
  // others, summed up) has its count and no bar
  function hbars(id, rows, empty) {
    if (!rows.length) return el("p", { class: "empty", id }, empty || "None in this view.");
    const max = Math.max(...rows.filter((r) => !r[2]).map((r) => r[1]));
    return el("ol", { class: "hbars", id }, rows.map(([label, n, rest]) => el("li", { class: rest ? "rest" : null },
      el("span", { class: "label", title: label }, label),
      el("span", { class: "bar", "aria-hidden": "true" }, rest ? null : el("i", { style: "width:" + ((100 * n) / max).toFixed(1) + "%" })),
      el("span", { class: "n" }, num(n)))));
  }

  // a category's first rows, the rest summed up as one
  function top(rows, n) {
    const named = rows.map((r) => [r.code ? r.label || r.code : "not given", r.offers]);
    if (named.length <= n + 1) return named;
    const rest = named.slice(n).reduce((t, r) => t + r[1], 0);
    return [...named.slice(0, n), [(named.length - n) + " others", rest, true]];
  }

  function drawOverview() {
    const ranked = view ? [...view.departements].filter((d) => d.offers > 0).sort((a, b) => b.offers - a.offers).slice(0, 10) : [];
    clear(panel,
      el("h2", null, "All of France"),
      el("p", { class: "reason" }, "Choose a département on the map, in the insets or in the list above to see its communes, titles, categories and trend."),
      view ? el("div", { class: "stats" }, stat("offers in view", view.total, "france-offers"),
        stat("départements with offers", view.departements.filter((d) => d.offers > 0).length)) : null,
      el("h3", null, "Départements with the most offers"),
      ranked.length ? el("ol", { class: "hbars jobs-ranking", id: "top-departements" }, ranked.map((d) => el("li", null,
        el("button", { type: "button", class: "label link", onclick: () => select(d.code) }, d.name + " (" + d.code + ")"),
        el("span", { class: "bar", "aria-hidden": "true" }, el("i", { style: "width:" + ((100 * d.offers) / ranked[0].offers).toFixed(1) + "%" })),
        el("span", { class: "n" }, num(d.offers))))) : el("p", { class: "empty" }, "None in this view."));
  }

  function drawDetail() {
    const d = detail;
    const placed = d.communes.filter((c) => c.lat !== null && c.lon !== null).length;
    clear(panel,
      el("div", { class: "jobs-panel-head" },
        el("h2", { id: "dep-name" }, (d.name || d.code) + " (" + d.code + ")"),
        el("button", { type: "button", class: "jobs-close", title: "Back to all of France", "aria-label": "Back to all of France", onclick: () => select("") }, "×")),
      el("p", { class: "reason" }, describe()),
      el("div", { class: "stats" }, stat("offers", d.offers, "dep-offers"), stat("communes", d.communes.length, "dep-communes")),
      d.listed !== d.offers ? el("p", { class: "reason" }, "Titles, communes and categories count the " + num(d.listed) + " offers whose latest version is listed.") : null,
      placed < d.communes.length ? el("p", { class: "reason" }, d.communes.length - placed === 1 ? "1 commune has no coordinates and is not on the map."
        : num(d.communes.length - placed) + " communes have no coordinates and are not on the map.") : null,
      el("h3", null, "New offers per day"), trendNode,
      el("h3", null, "Top job titles"), hbars("dep-titles", d.titles.map((t) => [t.title, t.offers])),
      el("h3", null, "Communes with the most offers"), hbars("dep-cities", d.cities.map((c) => [c.code ? c.label || c.code : "no commune given", c.offers])),
      el("h3", null, "Categories"),
      el("div", { class: "jobs-cats" }, CATEGORIES.map(([k, title]) => el("div", { class: "jobs-cat" },
        el("h4", null, title), hbars("cat-" + k, top(d.categories[k] || [], 6))))));
    drawTrend();
    drawCommunes();
  }

  function drawTrend() {
    const t = detail.trend;
    const data = [t.map((r) => r.day_ms / 1000), t.map((r) => r.offers)];
    if (!trendPlot) {
      trendPlot = A.chart(trendNode, {
        height: 170,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Europe/Paris"),
        // one day only: uPlot would stretch the axis over years; show the days around it
        scales: { x: { time: true, range: (u, min, max) => (u.data[0].length < 2 ? [min - 86400, min + 86400] : [min - 43200, max + 43200]) } },
        series: [{ label: "day", value: (u, v) => (v === null ? "–" : dayFormat.format(new Date(v * 1000))) },
          { label: "new offers", stroke: C.blue, fill: "rgba(0, 114, 178, 0.55)", width: 1, paths: uPlot.paths.bars({ size: [0.8, 40] }), points: { show: false } }],
        // whole days only (at midnight in Paris), however few of them
        axes: [{ incrs: [1, 2, 7, 14, 28, 56].map((d) => d * 86400), values: (u, ticks) => ticks.map((t) => dayFormat.format(new Date(t * 1000))) }, { size: 46 }],
      }, data);
    } else {
      trendPlot.setData(data);
    }
  }

  function drawCommunes() {
    points.clearLayers();
    if (!detail) return;
    const placed = detail.communes.filter((c) => c.lat !== null && c.lon !== null);
    const max = Math.max(1, ...placed.map((c) => c.offers));
    for (const c of [...placed].reverse()) { // the largest last, over the small ones
      const m = L.circleMarker([c.lat, c.lon], {
        radius: 3 + 13 * Math.sqrt(c.offers / max), color: "#1b1f24", weight: 1, fillColor: C.orange, fillOpacity: 0.9, className: "commune", pane: "communes",
      }).bindPopup(() => el("div", { class: "popup" }, el("h3", null, c.name || c.code || "no commune given"),
        el("div", null, num(c.offers) + (c.offers === 1 ? " offer" : " offers"))))
        .bindTooltip(() => el("span", null, (c.name || c.code) + ": " + num(c.offers)), { direction: "top", offset: [0, -4] })
        .addTo(points);
      const p = m.getElement();
      p.setAttribute("data-commune", c.code);
      p.setAttribute("data-offers", String(c.offers));
    }
  }

  async function loadDetail() {
    const code = state.departement;
    const mine = ++detailSeq;
    if (!code) {
      detail = null;
      points.clearLayers();
      drawOverview();
      return;
    }
    let got;
    try {
      got = await A.getJSON("/api/jobs/departements/" + encodeURIComponent(code) + "?" + query());
    } catch (e) {
      if (mine === detailSeq) clear(panel, el("h2", null, names.get(code) || code), el("p", { class: "empty" }, "Could not read this département: " + e.message));
      return;
    }
    if (mine !== detailSeq) return;
    detail = got;
    drawDetail();
    paint();
    drawLegend();
  }

  function select(code) {
    if (code && !names.has(code)) code = "";
    state.departement = code;
    depSelect.value = code;
    saveURL();
    detail = null;
    paint();
    if (code) map.flyToBounds(bounds.get(code), { padding: [30, 30], maxZoom: 12, duration: 0.5 });
    else map.flyToBounds(METRO, { duration: 0.5 });
    loadDetail();
    drawLegend();
  }

  function reload() {
    saveURL();
    drawFilters();
    loadMap();
    loadDetail();
  }

  gdSelect.addEventListener("change", () => { state.grand_domaine = gdSelect.value; reload(); });
  contractSelect.addEventListener("change", () => { state.contract = contractSelect.value; reload(); });
  periodSelect.addEventListener("change", () => {
    if (periodSelect.value === "dates") [state.since, state.until] = period().map((d) => d || "");
    state.period = periodSelect.value;
    reload();
  });
  for (const input of [sinceInput, untilInput]) {
    input.addEventListener("change", () => {
      state.period = "dates";
      state.since = sinceInput.value;
      state.until = untilInput.value;
      reload();
    });
  }
  depSelect.addEventListener("change", () => select(depSelect.value));

  // -- live: the counter, the latest offers, and the map when the counts move -------------------------------
  function drawCounter(c) {
    if (!c) return;
    const hour = new Date(c.hour_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    clear(counterStats,
      el("div", null, el("div", { class: "big", "data-counter": "today" }, num(c.today)), el("div", { class: "label" }, "created today")),
      el("div", null, el("div", { class: "big", "data-counter": "hour" }, num(c.hour)), el("div", { class: "label" }, "since " + hour)),
      el("div", null, el("div", { class: "big", "data-counter": "updated" }, num(c.updated_today)), el("div", { class: "label" }, "updated today")));
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const notes = [];
    if (!c.today) notes.push(c.latest_hour_ms ? "None created today yet; the latest were created " + time(c.latest_hour_ms) + "." : "No offer read yet.");
    if (tz !== "Europe/Paris") notes.push("Days are days in Paris (" + c.day + ").");
    counterNote.textContent = notes.join(" ");
    const data = [c.hours.map((h) => h.hour_ms / 1000), c.hours.map((h) => h.offers)];
    if (!hoursPlot) {
      hoursPlot = A.chart(hoursNode, {
        height: 130,
        scales: { x: { time: true } },
        legend: { show: false },
        series: [{}, { label: "created per hour", stroke: C.sky, fill: "rgba(86, 180, 233, 0.6)", width: 1, paths: uPlot.paths.bars({ size: [0.85, 30] }), points: { show: false } }],
        axes: [{}, { size: 40 }],
      }, data);
    } else {
      hoursPlot.setData(data);
    }
  }

  function latestItem(i, fresh) {
    const title = i.title || "untitled offer";
    const when = "created " + time(i.created_ms) + (i.updated_ms && i.created_ms && i.updated_ms - i.created_ms > 60000 ? ", updated " + time(i.updated_ms) : "");
    return el("li", { class: "info" + (fresh ? " new" : ""), "data-id": i.id },
      el("div", null, i.url && /^https:\/\//.test(i.url)
        ? el("a", { class: "title", href: i.url, target: "_blank", rel: "noopener noreferrer" }, title)
        : el("strong", { class: "title" }, title)),
      el("div", { class: "detail" }, [i.company, i.place || i.departement_name].filter(Boolean).join(" · ") || "–"),
      el("div", { class: "when" }, when));
  }

  function onLatest(kind, data) {
    if (kind === "snapshot") clear(latestList);
    for (const i of data.items) {
      for (const old of latestList.querySelectorAll("li[data-id]")) if (old.dataset.id === i.id) old.remove();
      latestList.prepend(latestItem(i, kind === "delta"));
    }
    while (latestList.children.length > 30) latestList.lastChild.remove();
    if (!latestList.querySelector("li[data-id]")) clear(latestList, el("li", { class: "empty" }, "No offer yet."));
    else latestList.querySelectorAll("li.empty").forEach((n) => n.remove());
  }

  // the jobs app's counts moved (or the connection came back): read the map and the panel again, once
  let refresh = null;
  let seen = false;
  const days = new A.Keyed((rows, kind) => {
    if (kind === "snapshot" && !seen) { seen = true; return; }
    clearTimeout(refresh);
    refresh = setTimeout(() => { loadFilters(); loadMap(); loadDetail(); }, 800);
  });

  const appNotice = A.appNotice("jobs", notice);
  function onApps(kind, apps) {
    appNotice(kind, apps);
    const a = (apps || []).find((x) => x.app === "jobs");
    const offline = !!a && (a.state === "replaying" || a.state === "simulating");
    modeNote.hidden = !offline;
    if (offline) {
      modeNote.textContent = "Offline: these offers come from " + (a.state === "replaying" ? "a recording of France Travail's API, replayed" : "a simulator") +
        ", not from the live API" + (a.reason ? " (" + a.reason + ")" : "") + ".";
    }
  }

  await loadFilters();
  await loadMap();
  if (state.departement) select(state.departement);
  else drawOverview();
  A.live({
    apps: onApps,
    "jobs.counter": (kind, data) => drawCounter(data),
    "jobs.days": (kind, data) => days.apply(kind, data),
    "jobs.latest": onLatest,
  });
  window.affluentJobs = { paths, counts, bucket, colour, breaks: () => ups };
})();
