// One card per panel: collapsible, exportable, drawn by its view (js/panels/<name>.js).
// A card loads only while it can be seen (expanded, on the current tab); otherwise it
// is marked stale and loads when shown.
"use strict";

TS.Card = class {
  constructor(app, meta) {
    this.app = app;
    this.name = meta.name;
    this.title = meta.title;
    this.overlay = meta.overlay;
    this.tab = meta.tab || "training";
    this.params = {};
    this.charts = [];
    this.data = null;
    this.stale = true;
    this.loading = null;
    this.collapsed = localStorage.getItem("ts.collapsed." + this.name) === "1";
    const toggle = TS.el("button", {class: "toggle", title: "collapse or expand",
      "aria-expanded": String(!this.collapsed), onclick: () => this.setCollapsed(!this.collapsed)},
      this.collapsed ? "+" : "-");
    this.toggleButton = toggle;
    const exporter = (fmt) => TS.el("button", {class: "export", title: `export as ${fmt.toUpperCase()}`,
      onclick: () => this.app.source.exportPanel(this.app.primary, this.name, fmt, this.params)},
      fmt.toUpperCase());
    this.note = TS.el("span", {class: "card-note"});
    this.body = TS.el("div", {class: "card-body"});
    this.el = TS.el("section", {class: "card", id: "panel-" + this.name, dataset: {panel: this.name}},
      TS.el("h2", {class: "card-head"}, toggle,
        TS.el("span", {class: "card-title", onclick: () => this.setCollapsed(!this.collapsed)}, this.title),
        this.note, TS.el("span", {class: "spacer"}), exporter("csv"), exporter("json")),
      this.body);
    this.el.classList.toggle("collapsed", this.collapsed);
    this.el.classList.toggle("other-tab", this.tab !== TS.settings.tab);
  }

  // Expanded and on the current tab: only such a card fetches and draws.
  visible() { return !this.collapsed && this.tab === TS.settings.tab; }

  showTab() {
    this.el.classList.toggle("other-tab", this.tab !== TS.settings.tab);
    if (this.visible() && this.stale) this.load();
  }

  setCollapsed(collapsed) {
    this.collapsed = collapsed;
    localStorage.setItem("ts.collapsed." + this.name, collapsed ? "1" : "0");
    this.el.classList.toggle("collapsed", collapsed);
    this.toggleButton.textContent = collapsed ? "+" : "-";
    this.toggleButton.setAttribute("aria-expanded", String(!collapsed));
    if (this.visible() && this.stale) this.load();
  }

  setParams(params) {
    this.params = Object.assign({}, this.params, params);
    this.load();
  }

  // Fetch for the primary run (and the compared runs, for overlay panels), then render.
  load() {
    if (!this.app.primary) return Promise.resolve();
    if (!this.visible()) { this.stale = true; return Promise.resolve(); }
    this.stale = false;
    const refs = this.overlay ? this.app.refs() : [this.app.primary];
    const token = this.loading = {};
    const src = this.app.source;
    return Promise.all(refs.map((ref) => src.panel(ref, this.name, this.params)
      .catch((err) => (ref === this.app.primary ? Promise.reject(err) : null))))
      .then((results) => {
        if (token !== this.loading) return;
        const data = results[0];
        if (this.overlay && refs.length > 1) {
          data.charts = TS.mergeCharts(refs.map((ref, i) => ({ref: ref, run: i,
            label: this.app.runLabel(ref), data: results[i]})));
          data.empty = data.empty && !data.charts.length;
          if (data.empty) data.reason = results.map((r) => r && r.reason).find(Boolean) || data.reason;
        } else if (data.charts) {
          for (const c of data.charts) for (const s of c.series) { s.ref = refs[0]; s.run = 0; }
        }
        this.data = data;
        this.render();
      })
      .catch((err) => {
        if (token !== this.loading) return;
        this.destroyCharts();
        TS.clear(this.body).appendChild(TS.el("div", {class: "error"}, "could not load: " + err.message));
      });
  }

  destroyCharts() {
    for (const c of this.charts) c.destroy();
    this.charts = [];
  }

  render() {
    const view = TS.views[this.name];
    this.destroyCharts();
    TS.clear(this.body);
    this.note.textContent = this.data.note || "";
    if (!view) { this.body.appendChild(TS.empty("no view for this panel")); return; }
    if (this.data.empty && !view.renderEmpty) {
      // the server says why it is empty when it can tell (no logits, no eval yet, ...)
      this.body.appendChild(TS.empty(this.data.reason || view.hint || "No data yet."));
      return;
    }
    try {
      view.render(this.body, this.data, this.context());
    } catch (err) {
      this.body.appendChild(TS.el("div", {class: "error"}, "this panel failed to draw: " + err.message));
      if (window.console) console.error(err);
    }
    this.applyFilter();
  }

  // Hide the charts the metric filter leaves out, and the card if it leaves none.
  applyFilter() {
    let shown = 0;
    for (const chart of this.charts) {
      const keep = TS.matchesFilter(chart.spec);
      chart.root.classList.toggle("filtered-out", !keep);
      shown += keep ? 1 : 0;
    }
    this.el.classList.toggle("filtered-out", !!TS.settings.filter.trim() && this.charts.length > 0 && !shown);
  }

  // Smoothing or a log axis changed: draw every chart again from the data it has.
  redrawCharts() {
    for (const chart of this.charts) chart.rebuild();
  }

  context() {
    const card = this;
    return {
      params: this.params,
      set: (params) => card.setParams(params),
      live: this.app.source.live,
      ref: this.app.primary,
      chart(container, spec, opts) {
        const app = card.app;
        const detail = app.source.live ? (s, lo, hi) => app.source.detail(s.ref, s.key, lo, hi) : null;
        const chart = new TS.LineChart(container, spec, Object.assign({detail: detail,
          colourOf: (ref) => app.runColour(ref), hidden: (ref) => TS.settings.hidden.has(ref)},
        opts || {}));
        card.charts.push(chart);
        return chart;
      },
      charts(container, charts, opts) {
        const grid = TS.el("div", {class: "chart-grid" + (opts && opts.small ? " small" : "")});
        container.appendChild(grid);
        for (const spec of charts) this.chart(grid, spec, opts);
        return grid;
      },
    };
  }
};

// Overlay: each chart id gathers the series of every run, labelled by run: the run's
// label alone where a chart has one line per run, else "run · line".
TS.mergeCharts = function (parts) {
  const byId = new Map();
  for (const part of parts) {
    if (!part.data || !part.data.charts) continue;
    for (const c of part.data.charts) {
      if (!byId.has(c.id)) byId.set(c.id, {id: c.id, title: c.title, series: [], single: true});
      const merged = byId.get(c.id);
      merged.single = merged.single && c.series.length === 1;
      for (const s of c.series) {
        merged.series.push(Object.assign({}, s, {ref: part.ref, run: part.run, runLabel: part.label}));
      }
    }
  }
  const charts = Array.from(byId.values());
  for (const c of charts) {
    for (const s of c.series) s.label = c.single ? s.runLabel : s.runLabel + " · " + s.label;
    delete c.single;
  }
  return charts;
};

