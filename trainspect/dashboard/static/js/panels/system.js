// System metrics panel (the System tab): latest values, then GPU, CPU, memory, disk charts.
"use strict";

TS.views.system = {
  hint: "No system metrics yet.",
  render(body, data, ctx) {
    const latest = Object.entries(data.latest || {});
    if (latest.length) {
      body.appendChild(TS.el("div", {class: "stats"}, latest.map(([k, v]) =>
        TS.el("span", {class: "stat"}, TS.el("span", {class: "stat-label"}, k.slice(4)),
          TS.el("span", {class: "stat-value"}, TS.fmt(v, 3))))));
    }
    ctx.charts(body, data.charts);
  },
};
