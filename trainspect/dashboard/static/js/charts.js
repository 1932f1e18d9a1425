// Line charts (uPlot) over min/max buckets, and simple bar lists.
//
// A series comes as points [[step, min, max], ...]. A bucket whose min and max differ
// is drawn as two points (min at its step, max half a step later), so a spike inside a
// zoomed-out bucket still reaches its height. Several series are joined on one x axis.
// What TS.settings asks for (view.js) is applied when a chart is drawn: smoothing adds
// a smoothed line over a faint raw one, log axes drop what they cannot show (x <= 0;
// y <= 0 becomes a gap), hidden runs are not drawn, and in a comparison every run has
// its own colour.
TS.palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
  "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#ad494a"];
TS.dashes = [[], [6, 3], [2, 2], [8, 3, 2, 3], [1, 3]];

TS.toXY = function (points) {
  const xs = [], ys = [];
  for (const [s, lo, hi] of points) {
    if (lo === hi || lo === null || hi === null) {
      xs.push(s); ys.push(lo === null ? hi : lo);
    } else {
      xs.push(s, s + 0.5); ys.push(lo, hi);
    }
  }
  return {xs, ys};
};

// [xs, ys0, ys1, ...] with every series on the union of the x values (null elsewhere).
TS.joinSeries = function (seriesList) {
  const parts = seriesList.map((s) => TS.toXY(s.points));
  const all = new Set();
  for (const p of parts) for (const x of p.xs) all.add(x);
  const xs = Float64Array.from(all).sort();
  const index = new Map();
  xs.forEach((x, i) => index.set(x, i));
  const out = [Array.from(xs)];
  for (const p of parts) {
    const ys = new Array(xs.length).fill(null);
    p.xs.forEach((x, i) => { ys[index.get(x)] = p.ys[i]; });
    out.push(ys);
  }
  return out;
};

TS.axisFmt = function (v, digits) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (v !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(Math.max(1, (digits || 3) - 2));
  return String(+v.toPrecision(digits || 3));
};

// An axis's tick labels: 3 significant digits, more when ticks close together would
// otherwise read the same (0.924, 0.924, ...).
TS.axisLabels = function (vals) {
  for (let digits = 3; digits < 10; digits++) {
    const labels = vals.map((v) => TS.axisFmt(v, digits));
    if (new Set(labels).size === new Set(vals).size) return labels;
  }
  return vals.map((v) => TS.axisFmt(v, 10));
};

TS.pointCount = function (data) {
  return data.length ? data[0].length * (data.length - 1) : 0;
};

// The drawn data: joined series, log axes applied, and with smoothing a [raw, smoothed]
// pair per series. Returns {data, logX, logY}: a log axis with nothing positive is linear.
TS.chartFrame = function (seriesList, settings) {
  let data = TS.joinSeries(seriesList);
  let logX = settings.logX && data[0].some((x) => x > 0);
  if (logX) {
    const keep = data[0].map((x) => x > 0);
    data = data.map((col) => col.filter((_, i) => keep[i]));
  }
  const logY = settings.logY && data.slice(1).some((ys) => ys.some((y) => y !== null && y > 0));
  if (logY) data = [data[0], ...data.slice(1).map((ys) => ys.map((y) => (y !== null && y > 0 ? y : null)))];
  if (settings.smoothing > 0) {
    const out = [data[0]];
    for (const ys of data.slice(1)) out.push(ys, TS.smooth(ys, settings.smoothing));
    data = out;
  }
  return {data: data, logX: logX, logY: logY};
};

TS.LineChart = class {
  // spec: {id, title, series: [{key, label, points, run, ref}]}; opts: {height, detail,
  // colourOf(ref, run), hidden(ref)}. opts.detail(series, lo, hi) -> Promise of points
  // for a zoomed range (live only).
  constructor(container, spec, opts) {
    this.spec = spec;
    this.opts = opts || {};
    this.root = TS.el("div", {class: "chart", dataset: {chart: spec.id}},
      TS.el("div", {class: "chart-title"}, spec.title));
    this.plotBox = TS.el("div", {class: "plot"});
    this.root.appendChild(this.plotBox);
    container.appendChild(this.root);
    this.zoomed = false;
    this.pending = false;
    this.build();
  }

  seriesOpts() {
    const runs = new Set(this.spec.series.map((s) => s.run || 0));
    const compare = runs.size > 1;
    const perRun = {};
    const smoothing = TS.settings.smoothing > 0;
    const out = [];
    this.spec.series.forEach((s, i) => {
      const run = s.run || 0;
      const k = perRun[run] = (perRun[run] === undefined ? 0 : perRun[run] + 1);
      const colour = compare && this.opts.colourOf ? this.opts.colourOf(s.ref, run)
        : TS.palette[(compare ? run : i) % TS.palette.length];
      const dash = TS.dashes[(compare ? k : 0) % TS.dashes.length];
      const show = !(this.opts.hidden && this.opts.hidden(s.ref));
      const line = {label: s.label, stroke: colour, width: i === 0 && !compare ? 1.75 : 1.25,
        dash: dash, spanGaps: true, points: {show: false}, show: show, value: (u, v) => TS.fmt(v)};
      if (smoothing) {
        out.push(Object.assign({}, line, {label: s.label + " (raw)", stroke: colour + "40",
          width: 1, class: "raw"}));
      }
      out.push(line);
    });
    return out;
  }

  build() {
    const width = Math.max(240, this.plotBox.clientWidth || 400);
    const self = this;
    const frame = TS.chartFrame(this.spec.series, TS.settings);
    this.logX = frame.logX;
    this.logY = frame.logY;
    const options = {
      width: width,
      height: this.opts.height || 190,
      scales: {x: frame.logX ? {time: false, distr: 3, log: 10} : {time: false},
        y: frame.logY ? {distr: 3, log: 10} : this.yRange()},
      legend: {live: true},
      cursor: {drag: {x: true, y: false}},
      series: [{label: "step", value: (u, v) => (v === null ? "-" : String(Math.floor(v)))},
        ...this.seriesOpts()],
      axes: [{size: 30, values: (u, vals) => TS.axisLabels(vals)},
        {size: 56, values: (u, vals) => TS.axisLabels(vals)}],
      hooks: {setSelect: [(u) => self.onSelect(u)]},
    };
    this.data = frame.data;
    this.plot = new uPlot(options, this.data, this.plotBox);
    this.plot.over.addEventListener("dblclick", () => this.unzoom());
    if (window.ResizeObserver) {
      this.resizer = new ResizeObserver(() => {
        const w = this.plotBox.clientWidth;
        if (w > 0 && Math.abs(w - this.plot.width) > 4) {
          this.plot.setSize({width: w, height: this.plot.height});
        }
      });
      this.resizer.observe(this.plotBox);
    }
  }

  // A chart may ask for a fixed y range (percentages: 0-100); values outside widen it.
  yRange() {
    const r = this.spec.y_range;
    if (!r) return {};
    return {range: (u, lo, hi) => [Math.min(r[0], lo === null ? r[0] : lo), Math.max(r[1], hi === null ? r[1] : hi)]};
  }

  // Draw again with the current settings (smoothing and log axes change the series).
  rebuild() {
    if (this.resizer) this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    TS.clear(this.plotBox);
    this.zoomed = false;
    this.build();
  }

  // Show or hide the lines of one run (the raw twin too, when smoothing).
  showRun(ref, show) {
    let i = 1;
    const pairs = TS.settings.smoothing > 0 ? 2 : 1;
    for (const s of this.spec.series) {
      for (let j = 0; j < pairs; j++, i++) if (s.ref === ref) this.plot.setSeries(i, {show: show});
    }
  }

  // New points for series i (live): appended or merged by step, redrawn once per frame.
  addPoints(i, points) {
    const target = this.spec.series[i].points;
    for (const p of points) {
      const last = target.length ? target[target.length - 1][0] : -Infinity;
      if (p[0] > last) { target.push(p); continue; }
      let lo = 0, hi = target.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (target[mid][0] < p[0]) lo = mid + 1; else hi = mid; }
      if (lo < target.length && target[lo][0] === p[0]) target[lo] = p; else target.splice(lo, 0, p);
    }
    this.redraw();
  }

  redraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      if (!this.plot || this.zoomed) return;
      this.data = TS.chartFrame(this.spec.series, TS.settings).data;
      this.plot.setData(this.data);
    });
  }

  size() {
    return this.spec.series.reduce((n, s) => n + s.points.length, 0);
  }

  onSelect(u) {
    if (!this.opts.detail || u.select.width < 4) return;
    const lo = Math.floor(u.posToVal(u.select.left, "x"));
    const hi = Math.ceil(u.posToVal(u.select.left + u.select.width, "x"));
    this.zoomed = true;
    Promise.all(this.spec.series.map((s) => this.opts.detail(s, lo, hi))).then((parts) => {
      if (!this.zoomed || !this.plot) return;
      const detail = this.spec.series.map((s, i) => ({points: parts[i] || []}));
      this.plot.setData(TS.chartFrame(detail, TS.settings).data, false);
      this.plot.setScale("x", {min: lo, max: hi});
    }).catch(() => {});
  }

  unzoom() {
    if (!this.zoomed) return;
    this.zoomed = false;
    this.data = TS.chartFrame(this.spec.series, TS.settings).data;
    this.plot.setData(this.data, true);
  }

  destroy() {
    if (this.resizer) this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.root.remove();
  }
};

// Horizontal bars: items [{label, value, note}], the longest bar = the largest value.
TS.bars = function (items, opts) {
  opts = opts || {};
  const max = Math.max(1e-12, ...items.map((it) => Math.abs(it.value || 0)));
  return TS.el("div", {class: "bars"}, items.map((it) => TS.el("div", {class: "bar-row"},
    TS.el("span", {class: "bar-label", title: it.label}, it.label),
    TS.el("span", {class: "bar-track"},
      TS.el("span", {class: "bar-fill", style: `width:${(100 * Math.abs(it.value || 0) / max).toFixed(1)}%`})),
    TS.el("span", {class: "bar-value"}, (opts.format || TS.fmt)(it.value)),
    it.note ? TS.el("span", {class: "bar-note"}, it.note) : null)));
};
