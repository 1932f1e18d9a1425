// Calibration panel: reliability diagram (accuracy vs confidence per bin, with the
// diagonal of perfect calibration), bin counts, and ECE over time.
"use strict";

TS.views.calibration = {
  hint: "No calibration data yet: run.observe(...) writes <stream>/calibration and <stream>/ece.",
  render(body, data, ctx) {
    const controls = TS.el("div", {class: "controls"});
    if (data.streams.length > 1) controls.append("stream ", TS.select(data.streams, data.stream, (v) => ctx.set({stream: v, step: ""})), " ");
    if (data.steps.length > 1) controls.appendChild(TS.stepSlider(data.steps, data.step, (s) => ctx.set({step: s})));
    if (data.ece !== null && data.ece !== undefined) {
      controls.appendChild(TS.el("span", {class: "stat"}, TS.el("span", {class: "stat-label"}, "ECE"),
        TS.el("span", {class: "stat-value"}, TS.fmt(data.ece, 3)), TS.el("span", {class: "muted"}, ` over ${data.tokens} tokens`)));
    }
    body.appendChild(controls);
    if (data.bins.length) body.appendChild(TS.views.calibration.diagram(data.bins));
    ctx.charts(body, data.charts);
  },
  diagram(bins) {
    const w = 320, h = 240, pad = 32;
    const canvas = TS.el("canvas", {class: "reliability", width: String(w), height: String(h)});
    const g = canvas.getContext("2d");
    const x = (v) => pad + v * (w - pad - 8), y = (v) => h - pad - v * (h - pad - 8);
    g.strokeStyle = "#999"; g.setLineDash([4, 3]);
    g.beginPath(); g.moveTo(x(0), y(0)); g.lineTo(x(1), y(1)); g.stroke(); g.setLineDash([]);
    const most = Math.max(1, ...bins.map((b) => b.count));
    for (const b of bins) {
      if (b.acc === null) continue;
      g.fillStyle = "rgba(31,119,180," + (0.25 + 0.75 * b.count / most).toFixed(2) + ")";
      g.fillRect(x(b.lo) + 1, y(b.acc), x(b.hi) - x(b.lo) - 2, y(0) - y(b.acc));
      g.fillStyle = "#d62728";
      g.beginPath(); g.arc(x(b.conf), y(b.acc), 3, 0, 2 * Math.PI); g.fill();
    }
    g.strokeStyle = "#333"; g.strokeRect(x(0), y(1), x(1) - x(0), y(0) - y(1));
    g.fillStyle = "#333"; g.font = "11px system-ui, sans-serif";
    g.fillText("confidence", w / 2 - 24, h - 8);
    g.save(); g.translate(10, h / 2 + 20); g.rotate(-Math.PI / 2); g.fillText("accuracy", 0, 0); g.restore();
    g.fillText("0", x(0) - 4, h - pad + 12); g.fillText("1", x(1) - 4, h - pad + 12);
    return TS.el("div", {class: "reliability-wrap"}, canvas,
      TS.el("div", {class: "muted"}, "bars: accuracy per confidence bin (darker = more tokens); dots: mean confidence; dashed: perfect calibration"));
  },
};
