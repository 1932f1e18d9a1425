// Gradients panel: global norm, zero share, largest layers; every layer in the table.
"use strict";

TS.views.gradients = {
  hint: "No grad/* metrics yet: run.watch(model) records them.",
  render(body, data, ctx) {
    ctx.charts(body, data.charts);
    if (data.table && data.table.rows.length) {
      body.appendChild(TS.el("details", {class: "more"}, TS.el("summary", {}, `all ${data.table.rows.length} layers (latest)`),
        TS.table(data.table.columns, data.table.rows)));
    }
  },
};
