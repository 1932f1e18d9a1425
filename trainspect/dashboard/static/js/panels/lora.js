// LoRA layers panel: layers x steps heatmap of ||dW||, top-k bars with block split.
"use strict";

TS.views.lora = {
  hint: "No LoRA data yet: run.watch(model) writes lora/layers (or delta/layers for a full fine-tune).",
  render(body, data, ctx) {
    const controls = TS.el("div", {class: "controls"});
    if (data.steps.length > 1) controls.appendChild(TS.stepSlider(data.steps, data.step, (s) => ctx.set({step: s})));
    body.appendChild(controls);
    const top = data.top.map((t) => ({label: "layer " + t.layer, value: t.total,
      note: Object.entries(t.blocks).map(([b, v]) => `${b} ${TS.fmt(v, 3)}`).join("  ")}));
    const what = data.family === "delta" ? "||W - W0||" : "||ΔW||";  // a full fine-tune: no adapters
    body.appendChild(TS.el("div", {class: "chart-title"}, `top ${top.length} layers by ${what} at step ${data.step === null ? "latest" : data.step}`));
    body.appendChild(TS.bars(top));
    if (data.timeline) {
      TS.heatmap(body, {title: `${what} per layer over steps`, values: data.timeline.values,
        rowLabels: data.timeline.row_labels, colLabels: data.timeline.steps.map(String)});
    }
  },
};
