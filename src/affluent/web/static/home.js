// Home: each app's state, and the latest alerts of all apps.
"use strict";

(() => {
  const { el, clear, num, time, ago } = A;
  const main = document.getElementById("main");
  const apps = el("div", { class: "grid", id: "apps" });
  const feed = el("ul", { class: "feed", id: "alerts", "aria-live": "polite" });
  clear(main,
    el("h1", null, "Live open data"),
    el("p", { class: "lead" }, "Each app's state, updated live; open an app for its maps and charts."),
    apps,
    el("section", { class: "card", style: "margin-top:1rem" }, el("h2", null, "Latest alerts"), feed));

  function card(a) {
    const state = a.state.replace(" ", "-");
    return el("article", { class: "card app-card", "data-app": a.app, "data-state": state },
      el("h2", null, el("a", { href: "/" + a.app }, a.title), " ", el("span", { class: "badge " + state }, a.state)),
      el("div", { class: "reason" }, a.summary),
      a.reason ? el("p", { class: "reason" }, a.reason) : null,
      A.dl([
        ["records/s", num(a.records_per_s, 1)],
        ["records", num(a.records)],
        ["lag", num(a.lag) + " records"],
        ["last data", a.last_data_ms ? time(a.last_data_ms) + " (" + ago(a.last_data_ms) + ")" : "none yet"],
        ["dead letters", num(a.dead_letters)],
        ["late records", num(a.late)],
      ]));
  }

  A.live({
    apps: (kind, data) => clear(apps, (data || []).map(card)),
    alerts: A.alertFeed(feed),
  });
})();
