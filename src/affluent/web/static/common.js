// Shared by every page: DOM building (text is always set as text, never parsed as HTML), the live
// connection, keyed tables fed by snapshots and deltas, maps and charts.
"use strict";

const A = (() => {
  const PALETTE = {
    blue: "#0072B2", sky: "#56B4E9", green: "#009E73", yellow: "#F0E442",
    orange: "#E69F00", vermillion: "#D55E00", purple: "#CC79A7", grey: "#8c959f",
  };

  // el("td", {class: "num"}, "text", otherNode): strings become text nodes
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function clear(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
    return node;
  }

  const nf = new Intl.NumberFormat();
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (digits !== undefined) return Number(v).toFixed(digits);
    return nf.format(v);
  }

  function time(ms) {
    if (!ms) return "–";
    const d = new Date(ms);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function ago(ms) {
    if (!ms) return "never";
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 0) return "in " + (-s) + " s";
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return r.json();
  }

  // rows keyed like the server's KeyedRows channel; onChange(rows) after each snapshot or delta
  class Keyed {
    constructor(onChange) { this.rows = new Map(); this.onChange = onChange; }
    key(row, key) { return key.map((k) => String(row[k])).join("|"); }
    apply(kind, data) {
      if (kind === "snapshot") {
        this.rows = new Map(data.rows.map((r) => [this.key(r, data.key), r]));
      } else {
        for (const k of data.delete) this.rows.delete(k);
        for (const r of data.upsert) this.rows.set(this.key(r, data.key), r);
      }
      this.onChange([...this.rows.values()], kind, data);
    }
  }

  // one EventSource for the page; handlers: {channel: (kind, data) => ...}
  function live(handlers) {
    const names = Object.keys(handlers);
    const badge = document.getElementById("live");
    const es = new EventSource("/api/events?channels=" + encodeURIComponent(names.join(",")));
    for (const name of names) {
      es.addEventListener(name, (e) => {
        const msg = JSON.parse(e.data);
        try { handlers[name](msg.kind, msg.data); } catch (err) { console.warn("channel " + name + ": " + err); }
      });
    }
    es.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
    es.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "live off"; };
    window.addEventListener("pagehide", () => es.close());
    return es;
  }

  // on an app's page: a notice when the app is not running, so that old figures do not pass for live ones
  function appNotice(app, node) {
    return (kind, apps) => {
      const a = (apps || []).find((x) => x.app === app);
      const live = a && ["running", "replaying", "simulating"].includes(a.state);
      node.hidden = !!live;
      if (!live) {
        const state = a ? a.state : "not running";
        node.textContent = app + " is " + state + (a && a.reason ? ": " + a.reason : "") +
          ". What this page shows is from its last run" + (a && a.updated_ms ? ", " + ago(a.updated_ms) : "") + ".";
      }
    };
  }

  // the handler of the "alerts" channel for a list: newest first, 100 at most; `app` keeps one app's only
  function alertFeed(list, app) {
    const item = (i, fresh) => el("li", { class: (i.level || "info") + (fresh ? " new" : ""), "data-id": i.id },
      el("div", null, app ? null : el("span", { class: "app" }, i.app), el("strong", null, i.title)),
      el("div", { class: "detail" }, i.detail),
      el("div", { class: "when" }, time(i.time_ms)));
    return (kind, data) => {
      if (kind === "snapshot") clear(list);
      for (const i of data.items) if (!app || i.app === app) list.prepend(item(i, kind === "delta"));
      while (list.children.length > 100) list.lastChild.remove();
      if (!list.querySelector("li:not(.empty)")) clear(list, el("li", { class: "empty" }, "No alert yet."));
      else list.querySelectorAll("li.empty").forEach((n) => n.remove());
    };
  }

  let configPromise = null;
  function config() {
    configPromise = configPromise || getJSON("/api/config");
    return configPromise;
  }

  async function nav() {
    const cfg = await config();
    const page = document.body.dataset.page;
    const link = (href, text, id) => el("a", { href, "aria-current": page === id ? "page" : null }, text);
    clear(document.getElementById("nav"),
      link("/", "Home", "home"),
      cfg.apps.map((a) => link("/" + a.app, a.app, a.app)),
      link("/docs", "API", "docs"));
    return cfg;
  }

  // a Leaflet map: France's départements drawn from the bundled shapes (readable offline), and
  // background tiles on top only when the server is online and the user keeps them on
  async function map(node, opts) {
    const cfg = await config();
    const m = L.map(node, { preferCanvas: false, zoomSnap: 0.25, attributionControl: true, ...(opts || {}) });
    m.setView([46.6, 2.4], 5);
    const base = await getJSON("/static/geo/departements.json").catch(() => null);
    if (base) {
      // under the tiles (tilePane is 200): where a tile fails to load, the outlines still show
      m.createPane("base").style.zIndex = 150;
      L.geoJSON(base, {
        pane: "base",
        interactive: false,
        style: { color: "#9aa4ae", weight: 1, fillColor: "#fbfbf8", fillOpacity: 1 },
      }).addTo(m);
      m.attributionControl.addAttribution("départements: IGN, INSEE — Admin Express COG 2018");
    }
    if (cfg.tiles) {
      const tiles = L.tileLayer(cfg.tiles.url, { attribution: cfg.tiles.attribution, maxZoom: 19 });
      const wanted = localStorage.getItem("affluent.tiles") !== "off";
      if (wanted) tiles.addTo(m);
      L.control.layers(null, { "Background map (online)": tiles }, { collapsed: true }).addTo(m);
      m.on("overlayadd", () => localStorage.setItem("affluent.tiles", "on"));
      m.on("overlayremove", () => localStorage.setItem("affluent.tiles", "off"));
    }
    L.control.scale({ imperial: false }).addTo(m);
    return m;
  }

  // a map's legend, in a bar under the map (on a phone, a legend over the map would hide it)
  function legend(m, title, items) {
    const box = m.getContainer();
    let bar = box.nextElementSibling;
    if (!bar || !bar.classList.contains("legend-bar")) {
      bar = el("div", { class: "legend-bar" });
      box.after(bar);
    }
    const node = el("div", { class: "legend", role: "note", "aria-label": title },
      el("span", { class: "title" }, title),
      items.map(([colour, label, extra]) => el("span", { class: "item" }, el("i", { style: "background:" + colour + (extra || "") }), label)));
    bar.append(node);
    return node;
  }

  // a uPlot chart that follows its box's width
  function chart(node, opts, data) {
    const width = () => Math.max(260, node.clientWidth || 300);
    const plot = new uPlot({ width: width(), height: opts.height || 220, ...opts }, data, node);
    new ResizeObserver(() => plot.setSize({ width: width(), height: opts.height || 220 })).observe(node);
    return plot;
  }

  // bars over categories (labels on the x axis); a series with `line: true` is drawn as a line over them
  function bars(node, labels, series, opts) {
    const xs = labels.map((_, i) => i);
    const barPaths = uPlot.paths.bars({ size: [0.6, 80] });
    return chart(node, {
      height: 220,
      ...(opts || {}),
      scales: { x: { time: false, range: [-0.5, Math.max(labels.length - 0.5, 0.5)] } },
      // many or long labels are turned, so that they do not overlap
      axes: [{ splits: () => xs, values: (u, ticks) => ticks.map((t) => (labels[t] === undefined ? "" : labels[t])),
        ...(labels.length > 4 ? { rotate: -40, size: 80 } : {}) }, {}],
      series: [
        { label: (opts && opts.xLabel) || "", value: (u, v) => (v === null || labels[v] === undefined ? "–" : labels[v]) },
        ...series.map((s) => ({
          label: s.label, stroke: s.colour, fill: s.line ? undefined : s.colour, width: s.line ? 2 : 1,
          paths: s.line ? undefined : barPaths, points: { show: !!s.line },
          value: (u, v) => (v === null ? "–" : num(v, s.digits)),
        })),
      ],
    }, [xs, ...series.map((s) => s.values)]);
  }

  // a table whose header cells sort it; rows: objects, cols: [{key, label, num, fmt}]
  function table(cols, rows, opts) {
    const state = { key: (opts && opts.sort) || null, desc: !!(opts && opts.desc) };
    const tbody = el("tbody");
    const render = () => {
      const sorted = [...rows];
      if (state.key) {
        sorted.sort((a, b) => {
          const x = a[state.key], y = b[state.key];
          const c = (x === null || x === undefined) - (y === null || y === undefined) || (x < y ? -1 : x > y ? 1 : 0);
          return state.desc ? -c : c;
        });
      }
      clear(tbody, sorted.map((r) => el("tr", null, cols.map((c) => {
        const v = c.fmt ? c.fmt(r[c.key], r) : r[c.key];
        return el("td", { class: c.num ? "num" : null }, v instanceof Node ? v : (v === null || v === undefined ? "–" : String(v)));
      }))));
    };
    const head = el("tr", null, cols.map((c) => el("th", {
      class: c.num ? "num" : null, "data-sort": c.key, scope: "col",
      onclick: () => { state.desc = state.key === c.key ? !state.desc : !!c.num; state.key = c.key; render(); },
    }, c.label)));
    render();
    return el("table", null, el("thead", null, head), tbody);
  }

  function dl(pairs) {
    return el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", null, k), el("dd", null, v)]));
  }

  return { PALETTE, el, clear, num, time, ago, getJSON, Keyed, live, appNotice, alertFeed, config, nav, map, legend, chart, bars, table, dl };
})();

A.nav().catch((e) => console.warn("navigation: " + e));
