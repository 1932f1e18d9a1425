// Hidden states panel: a chart per statistic; modules with non-finite values flagged.
"use strict";

TS.views.hidden = {
  hint: "No hidden/* metrics yet: run.watch(model) records them.",
  render(body, data, ctx) {
    if (data.nonfinite_modules && data.nonfinite_modules.length) {
      body.appendChild(TS.el("div", {class: "problem"}, "non-finite activations in: " + data.nonfinite_modules.join(", ")));
    }
    ctx.charts(body, data.charts);
    if (data.table && data.table.rows.length) {
      body.appendChild(TS.el("details", {class: "more"}, TS.el("summary", {}, `all ${data.table.rows.length} modules (latest)`),
        TS.table(data.table.columns, data.table.rows)));
    }
  },
};
