// How charts are shown, for every panel at once: the tab (training or system metrics),
// a metric filter, smoothing, log-scale axes, and each run's colour and visibility.
// Kept in localStorage, so a reload keeps them; the tab also lives in the URL hash.
"use strict";

TS.settings = {
  tab: "training",
  filter: "",
  smoothing: 0,      // EMA weight in [0, 0.99]; 0 draws the points as they are
  logX: false,
  logY: false,
  hidden: new Set(), // run refs whose lines are not drawn
  colours: {},       // run ref -> colour chosen by the user
};

TS.TABS = [["training", "Training"], ["system", "System"]];

TS.loadSettings = function () {
  const s = TS.settings;
  const read = (k) => { try { return localStorage.getItem("ts.view." + k); } catch (e) { return null; } };
  const smoothing = parseFloat(read("smoothing"));
  if (isFinite(smoothing)) s.smoothing = Math.min(0.99, Math.max(0, smoothing));
  s.logX = read("logX") === "1";
  s.logY = read("logY") === "1";
  try { s.colours = JSON.parse(read("colours") || "{}") || {}; } catch (e) { s.colours = {}; }
};

TS.saveSettings = function () {
  const s = TS.settings;
  try {
    localStorage.setItem("ts.view.smoothing", String(s.smoothing));
    localStorage.setItem("ts.view.logX", s.logX ? "1" : "0");
    localStorage.setItem("ts.view.logY", s.logY ? "1" : "0");
    localStorage.setItem("ts.view.colours", JSON.stringify(s.colours));
  } catch (e) { /* private mode: settings last for this page only */ }
};

// Debiased exponential moving average (TensorBoard's smoothing): gaps stay gaps, and
// the first points are not pulled towards zero.
TS.smooth = function (ys, weight) {
  if (!(weight > 0)) return ys.slice();
  let last = 0, n = 0;
  return ys.map((y) => {
    if (y === null || y === undefined || !isFinite(y)) return null;
    last = last * weight + (1 - weight) * y;
    n += 1;
    return last / (1 - Math.pow(weight, n));
  });
};

// Does a chart match the metric filter? Every word must appear in its title, id or a
// series key or label (case-insensitive).
TS.matchesFilter = function (spec, filter) {
  const words = (filter === undefined ? TS.settings.filter : filter).toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return true;
  const hay = [spec.id, spec.title, ...spec.series.map((s) => s.key + " " + s.label)].join(" ").toLowerCase();
  return words.every((w) => hay.includes(w));
};

// The toolbar above the panels: tabs, filter, smoothing, log axes.
TS.Toolbar = class {
  constructor(app, container) {
    this.app = app;
    const s = TS.settings;
    this.tabs = TS.TABS.map(([name, label]) => TS.el("button", {class: "tab", dataset: {tab: name},
      onclick: () => app.setTab(name)}, label));
    this.filter = TS.el("input", {type: "search", class: "metric-filter", placeholder: "filter metrics",
      "aria-label": "filter metrics", value: s.filter});
    let timer = null;
    this.filter.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { s.filter = this.filter.value; app.applyFilter(); }, 150);
    });
    this.smoothLabel = TS.el("span", {class: "smooth-value"}, s.smoothing.toFixed(2));
    this.smoothing = TS.el("input", {type: "range", min: "0", max: "0.99", step: "0.01",
      value: String(s.smoothing), class: "smoothing", "aria-label": "smoothing"});
    this.smoothing.addEventListener("input", () => { this.smoothLabel.textContent = (+this.smoothing.value).toFixed(2); });
    this.smoothing.addEventListener("change", () => {
      s.smoothing = +this.smoothing.value;
      TS.saveSettings();
      app.redrawCharts();
    });
    const toggle = (name, label) => {
      const box = TS.el("input", {type: "checkbox", class: "axis-" + name, checked: s[name],
        onchange: (e) => { s[name] = e.target.checked; TS.saveSettings(); app.redrawCharts(); }});
      return TS.el("label", {class: "toggle-label"}, box, " " + label);
    };
    this.el = TS.el("nav", {id: "toolbar"},
      TS.el("span", {class: "tabs"}, this.tabs), this.filter,
      TS.el("label", {class: "toggle-label", title: "exponential moving average of each line"},
        "smoothing ", this.smoothing, " ", this.smoothLabel),
      toggle("logX", "log x"), toggle("logY", "log y"));
    container.appendChild(this.el);
    this.showTab();
  }

  showTab() {
    for (const b of this.tabs) b.classList.toggle("active", b.dataset.tab === TS.settings.tab);
  }
};
