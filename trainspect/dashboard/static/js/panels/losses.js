// Loss composition panel: latest table with flags, then the charts.
"use strict";

TS.views.losses = {
  hint: "No loss composition yet: run.losses(step, components=..., weights=..., total=...) writes it.",
  render(body, data, ctx) {
    for (const p of data.problems || []) body.appendChild(TS.el("div", {class: "problem"}, p));
    if (data.table && data.table.rows.length) {
      body.appendChild(TS.table(data.table.columns, data.table.rows, {
        format: (v, col) => (col === "share" ? TS.pct(v) : TS.fmt(v)),
        rowClass: (row) => (row[5] ? "flagged" : ""),
      }));
    }
    ctx.charts(body, data.charts);
  },
};
