// Heatmaps on a canvas: pattern x length EM, LoRA layers over time. Labels are drawn
// with fillText (inert), the hover tooltip is set with textContent.
"use strict";

TS.VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

TS.colour = function (t) {
  if (t === null || t === undefined || !isFinite(t)) return "#e6e6e6";
  t = Math.min(1, Math.max(0, t)) * (TS.VIRIDIS.length - 1);
  const i = Math.min(Math.floor(t), TS.VIRIDIS.length - 2), f = t - i;
  const a = TS.VIRIDIS[i], b = TS.VIRIDIS[i + 1];
  const c = a.map((v, k) => Math.round(v + f * (b[k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
};

// spec: {values: [[v|null]], rowLabels, colLabels, min, max, format, cellText, title}
TS.heatmap = function (container, spec) {
  const rows = spec.values.length, cols = rows ? spec.values[0].length : 0;
  const flat = spec.values.flat().filter((v) => v !== null && isFinite(v));
  const min = spec.min !== undefined ? spec.min : Math.min(...flat);
  const max = spec.max !== undefined ? spec.max : Math.max(...flat);
  const format = spec.format || TS.fmt;
  const wrap = TS.el("div", {class: "heatmap"});
  if (spec.title) wrap.appendChild(TS.el("div", {class: "chart-title"}, spec.title));
  const canvas = TS.el("canvas", {});
  const tip = TS.el("div", {class: "tip", hidden: "hidden"});
  const legend = TS.el("div", {class: "heat-legend"},
    TS.el("span", {}, format(min)), TS.el("span", {class: "heat-ramp"}), TS.el("span", {}, format(max)),
    TS.el("span", {class: "heat-none"}, "grey: no data"));
  wrap.append(canvas, tip, legend);
  container.appendChild(wrap);

  const ctx = canvas.getContext("2d");
  ctx.font = "11px system-ui, sans-serif";
  const left = Math.min(160, 8 + Math.max(20, ...spec.rowLabels.map((l) => ctx.measureText(l).width)));
  const top = 18;
  const width = Math.max(300, (container.clientWidth || 600) - 24);  // less the padding
  const cellW = (width - left) / Math.max(cols, 1);
  const cellH = Math.max(10, Math.min(26, 360 / Math.max(rows, 1)));
  const height = top + rows * cellH + 2;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio; canvas.height = height * ratio;
  canvas.style.width = width + "px"; canvas.style.height = height + "px";
  ctx.scale(ratio, ratio);
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  const span = max - min || 1;
  const labelEvery = Math.max(1, Math.ceil(60 / Math.max(cellW, 1)));
  ctx.fillStyle = "#333";
  spec.colLabels.forEach((label, j) => {
    if (j % labelEvery === 0) {
      ctx.fillText(String(label).slice(0, 14), left + j * cellW + 2, top / 2);
    }
  });
  for (let i = 0; i < rows; i++) {
    ctx.fillStyle = "#333";
    ctx.fillText(String(spec.rowLabels[i]).slice(0, 24), 2, top + i * cellH + cellH / 2);
    for (let j = 0; j < cols; j++) {
      const v = spec.values[i][j];
      ctx.fillStyle = TS.colour(v === null ? null : (v - min) / span);
      ctx.fillRect(left + j * cellW, top + i * cellH, Math.max(cellW - 1, 1), cellH - 1);
      if (spec.cellText && cellW > 34 && v !== null) {
        ctx.fillStyle = (v - min) / span > 0.6 ? "#000" : "#fff";
        ctx.fillText(format(v), left + j * cellW + 4, top + i * cellH + cellH / 2);
      }
    }
  }
  canvas.addEventListener("mousemove", (e) => {
    const r = canvas.getBoundingClientRect();
    const j = Math.floor((e.clientX - r.left - left) / cellW);
    const i = Math.floor((e.clientY - r.top - top) / cellH);
    if (i < 0 || j < 0 || i >= rows || j >= cols) { tip.hidden = true; return; }
    tip.textContent = `${spec.rowLabels[i]} x ${spec.colLabels[j]}: ${format(spec.values[i][j])}`;
    tip.style.left = (e.clientX - r.left + 12) + "px";
    tip.style.top = (e.clientY - r.top + 12) + "px";
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  return wrap;
};
