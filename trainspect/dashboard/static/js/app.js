// The page: the runs list, one card per panel (collapsible, exportable), compare, and
// live updates. Panel views live in js/panels/<name>.js and register in TS.views.
"use strict";

TS.Card = class {
  constructor(app, meta) {
    this.app = app;
    this.name = meta.name;
    this.title = meta.title;
    this.overlay = meta.overlay;
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
  }

  setCollapsed(collapsed) {
    this.collapsed = collapsed;
    localStorage.setItem("ts.collapsed." + this.name, collapsed ? "1" : "0");
    this.el.classList.toggle("collapsed", collapsed);
    this.toggleButton.textContent = collapsed ? "+" : "-";
    this.toggleButton.setAttribute("aria-expanded", String(!collapsed));
    if (!collapsed && this.stale) this.load();
  }

  setParams(params) {
    this.params = Object.assign({}, this.params, params);
    this.load();
  }

  // Fetch for the primary run (and the compared runs, for overlay panels), then render.
  load() {
    if (!this.app.primary) return Promise.resolve();
    if (this.collapsed) { this.stale = true; return Promise.resolve(); }
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
      this.body.appendChild(TS.empty(view.hint || "No data yet."));
      return;
    }
    try {
      view.render(this.body, this.data, this.context());
    } catch (err) {
      this.body.appendChild(TS.el("div", {class: "error"}, "this panel failed to draw: " + err.message));
      if (window.console) console.error(err);
    }
  }

  context() {
    const card = this;
    return {
      params: this.params,
      set: (params) => card.setParams(params),
      live: this.app.source.live,
      ref: this.app.primary,
      chart(container, spec, opts) {
        const detail = card.app.source.live ? (s, lo, hi) => card.app.source.detail(s.ref, s.key, lo, hi) : null;
        const chart = new TS.LineChart(container, spec, Object.assign({detail: detail}, opts || {}));
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

// Overlay: each chart id gathers the series of every run, labelled by run.
TS.mergeCharts = function (parts) {
  const byId = new Map();
  for (const part of parts) {
    if (!part.data || !part.data.charts) continue;
    for (const c of part.data.charts) {
      if (!byId.has(c.id)) byId.set(c.id, {id: c.id, title: c.title, series: []});
      for (const s of c.series) {
        byId.get(c.id).series.push(Object.assign({}, s, {ref: part.ref, run: part.run,
          label: part.label + ": " + s.label}));
      }
    }
  }
  return Array.from(byId.values());
};

TS.App = class {
  constructor(source) {
    this.source = source;
    this.primary = null;
    this.compare = [];
    this.cards = [];
    this.runs = [];
    this.unknownKeys = new Set();
    this.timers = {};
  }

  refs() { return [this.primary, ...this.compare.filter((r) => r !== this.primary)]; }

  runLabel(ref) {
    const run = this.runs.find((r) => r.ref === ref);
    return run ? (run.name !== run.id ? run.name : run.id) : ref;
  }

  async start() {
    const url = new URL(window.location.href);
    if (url.searchParams.has("token")) {  // the cookie now carries it: keep it off screen
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    const hash = new URLSearchParams(window.location.hash.slice(1));
    if (!this.source.live) {
      const badge = document.getElementById("live");
      badge.textContent = "report, " + TS.when(this.source.report.generated_at);
      badge.className = "live live-report";
    }
    const metas = await this.source.panels();
    this.runsCard = TS.views.runs.mount(document.getElementById("sidebar"), this);
    await this.refreshRuns();
    this.primary = hash.get("run") || (this.runs[0] && this.runs[0].ref) || null;
    this.compare = (hash.get("compare") || "").split(",").filter((r) => r && r !== this.primary);
    const main = document.getElementById("panels");
    for (const meta of metas) {
      const card = new TS.Card(this, meta);
      this.cards.push(card);
      main.appendChild(card.el);
    }
    this.selectionChanged();
    window.addEventListener("hashchange", () => {  // a pasted link or edited address
      const h = new URLSearchParams(window.location.hash.slice(1));
      this.primary = h.get("run") || this.primary;
      this.compare = (h.get("compare") || "").split(",").filter((r) => r && r !== this.primary);
      this.selectionChanged();
    });
    if (this.source.live) {
      this.timers.runs = setInterval(() => this.refreshRuns(), 5000);
    }
  }

  async refreshRuns() {
    try {
      const data = await this.source.runs("");
      this.runs = data.runs;
      this.runsCard.update(this.runs);
      this.showHeader();
      if (!this.primary && this.runs.length && this.cards.length) this.select(this.runs[0].ref);
    } catch (err) {
      this.runsCard.error(err.message);
    }
  }

  select(ref) {
    this.primary = ref;
    this.compare = this.compare.filter((r) => r !== ref);
    this.selectionChanged();
  }

  toggleCompare(ref, on) {
    this.compare = this.compare.filter((r) => r !== ref);
    if (on && ref !== this.primary) this.compare.push(ref);
    this.selectionChanged();
  }

  selectionChanged() {
    const hash = new URLSearchParams();
    if (this.primary) hash.set("run", this.primary);
    if (this.compare.length) hash.set("compare", this.compare.join(","));
    history.replaceState(null, "", window.location.pathname + window.location.search + "#" + hash.toString());
    this.showHeader();
    this.runsCard.update(this.runs);
    for (const card of this.cards) card.params = {};
    if (!this.primary) {
      for (const card of this.cards) TS.clear(card.body).appendChild(TS.empty("No runs yet."));
      return;
    }
    if (this.source.live) {
      if (!this.live) this.live = new TS.Live(this);
      this.live.connect(this.refs(), () => this.reloadAll());
    } else {
      this.reloadAll();
    }
  }

  reloadAll() {
    return Promise.all(this.cards.map((card) => card.load()));
  }

  showHeader() {
    const run = this.runs.find((r) => r.ref === this.primary);
    document.getElementById("run-title").textContent = run ? `${run.project} / ${run.name}` : "";
    const badge = document.getElementById("run-status");
    badge.textContent = run ? run.status : "";
    badge.className = "badge status-" + (run ? run.status : "none");
    const list = TS.clear(document.getElementById("compare-list"));
    for (const ref of this.compare) {
      list.appendChild(TS.el("span", {class: "chip"}, "vs " + this.runLabel(ref),
        TS.el("button", {title: "stop comparing", onclick: () => this.toggleCompare(ref, false)}, "x")));
    }
  }

  later(name, ms, fn) {
    if (this.timers[name]) return;
    this.timers[name] = setTimeout(() => { delete this.timers[name]; fn(); }, ms);
  }

  card(name) { return this.cards.find((c) => c.name === name); }

  // One SSE update: new points go straight into the charts that show them; new
  // samples, matrices and alerts make the panels that show them ask again.
  onUpdate(ev) {
    for (const [key, points] of Object.entries(ev.scalars || {})) {
      let shown = false;
      for (const card of this.cards) {
        if (card.collapsed) { card.stale = true; continue; }
        for (const chart of card.charts) {
          chart.spec.series.forEach((s, i) => {
            if (s.ref === ev.run && s.key === key) { chart.addPoints(i, points); shown = true; }
          });
          if (chart.size() > 8000) this.later("regrid-" + card.name, 3000, () => card.load());
        }
      }
      if (!shown && !this.unknownKeys.has(ev.run + " " + key)) {
        this.unknownKeys.add(ev.run + " " + key);
        this.later("new-keys", 1500, () => this.cards.filter((c) => c.overlay).forEach((c) => c.load()));
      }
    }
    const reload = (name) => { const c = this.card(name); if (c) this.later("reload-" + name, 1000, () => c.load()); };
    if (ev.samples) reload("predictions");
    for (const name of ev.matrices || []) {
      if (name.endsWith("/calibration")) reload("calibration");
      else if (name === "eval/pattern_length") reload("patterns");
      else if (name === "lora/layers") reload("lora");
    }
    if (ev.alerts) { reload("alerts"); reload("doctor"); reload("fixed_eval"); }
    if (ev.status) this.refreshRuns();
    if (ev.reset) this.reloadAll();
  }
};

TS.boot = function () {
  const embedded = document.getElementById("ts-report-data");
  const source = embedded ? new TS.ReportSource(JSON.parse(embedded.textContent)) : new TS.LiveSource();
  TS.app = new TS.App(source);
  TS.app.start().catch((err) => {
    document.getElementById("panels").appendChild(TS.el("div", {class: "error"},
      "could not start: " + err.message));
  });
};

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", TS.boot);
else TS.boot();
