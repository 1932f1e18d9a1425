// Throughput and memory panel: latest values, then a chart per metric.
"use strict";

TS.views.speed = {
  hint: "No speed/* or mem/* metrics yet.",
  render(body, data, ctx) {
    const latest = Object.entries(data.latest || {});
    if (latest.length) {
      body.appendChild(TS.el("div", {class: "stats"}, latest.map(([k, v]) =>
        TS.el("span", {class: "stat"}, TS.el("span", {class: "stat-label"}, k), TS.el("span", {class: "stat-value"}, TS.fmt(v))))));
    }
    ctx.charts(body, data.charts);
  },
};
