// Alerts panel: newest first, level filter, each with its action.
"use strict";

TS.views.alerts = {
  hint: "No alerts: nothing has fired.",
  render(body, data, ctx) {
    const levels = ["", "critical", "warning", "info"];
    const labels = levels.map((l) => (l ? `${l} (${data.counts[l] || 0})` : "all levels"));
    body.appendChild(TS.el("div", {class: "controls"}, TS.select(levels, data.level || "", (v) => ctx.set({level: v}), labels)));
    if (!data.alerts.length) { body.appendChild(TS.empty("No alerts at this level.")); return; }
    body.appendChild(TS.el("ul", {class: "alerts"}, data.alerts.map((a) => TS.el("li", {class: "alert level-" + a.level + (a.state === "cleared" ? " cleared" : "")},
      TS.el("div", {class: "alert-head"},
        TS.el("span", {class: "badge level-" + a.level}, a.level),
        TS.el("span", {class: "alert-step"}, "step " + a.step),
        TS.el("span", {class: "alert-rule"}, a.rule),
        a.state === "cleared" ? TS.el("span", {class: "badge"}, "cleared") : null),
      TS.el("div", {class: "alert-message"}, a.message),
      a.action ? TS.el("div", {class: "alert-action"}, "-> " + a.action) : null))));
  },
};
