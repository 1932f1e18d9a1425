// Token metrics panel: pick a stream; a table of latest values per position/codebook
// (the weakest member of each row marked), then one chart per metric.
"use strict";

TS.views.tokens = {
  hint: "No token metrics yet: run.observe(step, logits=..., labels=...) writes <stream>/acc and more.",
  render(body, data, ctx) {
    const controls = TS.el("div", {class: "controls"});
    if (data.streams.length > 1) {
      controls.append("stream ", TS.select(data.streams, data.stream, (v) => ctx.set({stream: v})));
    } else {
      controls.append("stream " + data.stream);
    }
    if (data.groups.length) controls.append(TS.el("span", {class: "muted"}, ` · ${data.groups.length} groups: ${data.groups.join(", ")}`));
    body.appendChild(controls);
    if (data.table && data.table.rows.length && data.groups.length) {
      const higherIsBetter = new Set(["acc", "cond_acc", "target_conf", "conf_gap", "teacher_agree", "alpha", "accept_len"]);
      const table = TS.table(data.table.columns, data.table.rows);
      // mark the weakest group member per metric
      data.table.rows.forEach((row, r) => {
        const vals = row.slice(2);
        const known = vals.filter((v) => v !== null);
        if (known.length < 2 || !(higherIsBetter.has(row[0]) || ["ce", "entropy", "ece", "kl", "confident_wrong"].includes(row[0]))) return;
        const worst = higherIsBetter.has(row[0]) ? Math.min(...known) : Math.max(...known);
        const cells = table.tBodies[0].rows[r].cells;
        vals.forEach((v, i) => { if (v === worst) cells[i + 2].classList.add("worst"); });
      });
      body.appendChild(table);
    }
    ctx.charts(body, data.charts, {small: true, height: 140});
  },
};
