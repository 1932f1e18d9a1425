// Pattern x length panel: EM heatmap at a chosen eval step, and the weakest cells.
"use strict";

TS.views.patterns = {
  hint: "No pattern x length results yet: the fixed eval writes the matrix eval/pattern_length.",
  render(body, data, ctx) {
    const controls = TS.el("div", {class: "controls"});
    if (data.steps && data.steps.length > 1) controls.appendChild(TS.stepSlider(data.steps, data.step, (s) => ctx.set({step: s})));
    else if (data.step !== null && data.step !== undefined) controls.append("step " + data.step);
    body.appendChild(controls);
    TS.heatmap(body, {values: data.values, rowLabels: data.row_labels, colLabels: data.col_labels,
      min: 0, max: 1, format: TS.pct, cellText: true});
    if (data.weakest && data.weakest.length) {
      body.appendChild(TS.el("div", {class: "weakest"}, "weakest: ",
        data.weakest.map((w) => TS.el("span", {class: "chip"}, `${w.pattern} × ${w.length}: ${TS.pct(w.em)}`))));
    }
  },
};
