// Fixed eval panel: latest EM/CE/ECE, trend, best checkpoint, charts.
"use strict";

TS.views.fixed_eval = {
  hint: "No fixed eval yet: run.evaluate(model, ts.FixedEval(...), step=...) writes eval/em, eval/ce, eval/ece.",
  render(body, data, ctx) {
    const l = data.latest || {};
    const stat = (label, value) => TS.el("span", {class: "stat"}, TS.el("span", {class: "stat-label"}, label), TS.el("span", {class: "stat-value"}, value));
    const stats = TS.el("div", {class: "stats"});
    if ("eval/em" in l) stats.appendChild(stat("EM", TS.pct(l["eval/em"])));
    if ("eval/ce" in l) stats.appendChild(stat("CE", TS.fmt(l["eval/ce"])));
    if ("eval/ece" in l) stats.appendChild(stat("ECE", TS.fmt(l["eval/ece"])));
    if (data.trend) stats.appendChild(stat("trend", `${data.trend} (${data.evals} evals)`));
    if (data.best) {
      const b = data.best;
      stats.appendChild(stat("best", b.checkpoint + (b.em !== null && b.em !== undefined ? ` (EM ${TS.pct(b.em)})` : "")));
    }
    body.appendChild(stats);
    ctx.charts(body, data.charts);
  },
};
