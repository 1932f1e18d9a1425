// Predictions panel: sampled rows token by token (green: match, red: wrong, bold red:
// wrong with confidence > 0.5), a step slider, and following one sample across steps.
"use strict";

TS.views.predictions = {
  hint: "No prediction samples yet: run.observe(...) takes them at its first step, then every `samples_every` steps.",
  render(body, data, ctx) {
    const controls = TS.el("div", {class: "controls"});
    if (!data.sample_id && data.steps.length > 1) controls.appendChild(TS.stepSlider(data.steps, data.step, (s) => ctx.set({step: s})));
    if (data.streams.length > 1 && !data.sample_id) {
      controls.append(" stream ", TS.select(["", ...data.streams], data.stream || "", (v) => ctx.set({stream: v}), ["all", ...data.streams]));
    }
    const ids = data.sample_id ? [data.sample_id] : data.sample_ids;
    controls.append(" follow ", TS.select(["", ...ids], data.sample_id || "", (v) => ctx.set({sample_id: v, step: ""}),
      ["(none: one step)", ...ids]));
    body.appendChild(controls);
    if (!data.rows.length) { body.appendChild(TS.empty("No rows at this step for this stream.")); return; }
    if (data.sample_id) {
      body.appendChild(TS.el("div", {class: "muted"}, `sample ${data.sample_id} across ${data.rows.length} steps`));
    }
    for (const row of data.rows) body.appendChild(TS.views.predictions.row(row, !!data.sample_id));
  },
  row(row, compact) {
    const strip = TS.el("div", {class: "tokens"}, row.positions.map((p) => {
      const cls = p.match === null ? "tok" : p.match ? "tok ok" : p.confident_wrong ? "tok bad confident" : "tok bad";
      const text = p.match === false && p.label !== null ? `${p.pred} → ${p.label}` : p.pred;
      const tip = `t=${p.t}  predicted ${p.pred} (${TS.fmt(p.pred_prob)})  label ${p.label} (${TS.fmt(p.label_prob)})`;
      return TS.el("span", {class: cls, title: tip}, text === null ? "∅" : text);
    }));
    const head = TS.el("div", {class: "sample-head"},
      TS.el("span", {class: "sample-step"}, "step " + row.step),
      TS.el("span", {}, ` ${row.stream}${row.group ? " group " + row.group : ""} · `),
      TS.el("span", {class: "sample-id"}, row.sample_id),
      TS.el("span", {class: "muted"}, ` · ${TS.pct(row.acc)} of ${row.positions.length} positions match`));
    if (compact) return TS.el("div", {class: "sample compact"}, head, strip);
    const table = TS.table(["t", "predicted", "p(pred)", "label", "p(label)", "match"],
      row.positions.map((p) => [p.t, p.pred, p.pred_prob, p.label, p.label_prob, p.match]),
      {rowClass: (r) => (r[5] === false ? "flagged" : "")});
    return TS.el("div", {class: "sample"}, head,
      TS.el("div", {class: "context"}, row.context), strip,
      TS.el("details", {class: "more"}, TS.el("summary", {}, "positions"), table));
  },
};
