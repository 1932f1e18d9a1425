// The page: the runs list, the toolbar (tabs, filter, smoothing, log axes), one card per
// panel, compare with a colour per run, and live updates. Cards are in js/card.js.
"use strict";

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

  // A run's label in legends and chips: its name, or when it has none (the name is the
  // id) the shortest tail of its id that tells it from the other runs shown.
  runLabel(ref) {
    const run = this.runs.find((r) => r.ref === ref);
    if (!run) return ref;
    if (run.name && run.name !== run.id) return run.name;
    const parts = run.id.split("-");
    const others = this.refs().filter((r) => r !== ref).map((r) => {
      const o = this.runs.find((x) => x.ref === r);
      return o ? o.id : r;
    });
    for (let n = 1; n < parts.length; n++) {
      const tail = parts.slice(-n).join("-");
      if (!others.some((id) => id.endsWith(tail))) return tail;
    }
    return run.id;
  }

  // A run's colour in comparisons: the one picked for it, else the palette by position.
  runColour(ref) {
    const picked = TS.settings.colours[ref];
    if (picked) return picked;
    const i = Math.max(0, this.refs().indexOf(ref));
    return TS.palette[i % TS.palette.length];
  }

  // `#run=` and `compare=` may name a run by project/id, bare id, unique suffix or name:
  // the server (or the report) says which run that is, and the page uses its project/id.
  async resolve(ref) {
    if (!ref) return null;
    const known = this.runs.find((r) => r.ref === ref);
    if (known) return known.ref;
    const found = await this.source.resolve(ref);
    return found.ref;
  }

  async readHash() {
    const hash = new URLSearchParams(window.location.hash.slice(1));
    const tab = hash.get("tab");  // a link without one opens the first tab
    TS.settings.tab = tab && TS.TABS.some(([name]) => name === tab) ? tab : TS.TABS[0][0];
    const wanted = hash.get("run");
    const compare = (hash.get("compare") || "").split(",").filter(Boolean);
    this.problem = null;
    try {
      this.primary = (await this.resolve(wanted)) || this.primary || (this.runs[0] && this.runs[0].ref) || null;
    } catch (err) {
      this.problem = `run ${wanted}: ${err.message}`;
      this.primary = null;
    }
    const resolved = [];
    for (const ref of compare) {
      try { resolved.push(await this.resolve(ref)); } catch (err) {
        this.problem = (this.problem ? this.problem + "; " : "") + `compare ${ref}: ${err.message}`;
      }
    }
    this.compare = resolved.filter((r) => r && r !== this.primary);
  }

  async start() {
    const url = new URL(window.location.href);
    if (url.searchParams.has("token")) {  // the cookie now carries it: keep it off screen
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    TS.loadSettings();
    if (!this.source.live) {
      const badge = document.getElementById("live");
      badge.textContent = "report, " + TS.when(this.source.report.generated_at);
      badge.className = "live live-report";
    }
    const metas = await this.source.panels();
    this.runsCard = TS.views.runs.mount(document.getElementById("sidebar"), this);
    await this.refreshRuns();
    await this.readHash();
    const main = document.getElementById("panels");
    this.toolbar = new TS.Toolbar(this, main);
    for (const meta of metas) {
      const card = new TS.Card(this, meta);
      this.cards.push(card);
      main.appendChild(card.el);
    }
    this.selectionChanged();
    window.addEventListener("hashchange", async () => {  // a pasted link or edited address
      await this.readHash();
      this.toolbar.showTab();
      for (const card of this.cards) card.showTab();
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
      if (!this.primary && !this.problem && this.runs.length && this.cards.length) this.select(this.runs[0].ref);
    } catch (err) {
      this.runsCard.error(err.message);
    }
  }

  select(ref) {
    this.primary = ref;
    this.problem = null;
    this.compare = this.compare.filter((r) => r !== ref);
    this.selectionChanged();
  }

  toggleCompare(ref, on) {
    this.compare = this.compare.filter((r) => r !== ref);
    if (on && ref !== this.primary) this.compare.push(ref);
    this.selectionChanged();
  }

  setTab(tab) {
    TS.settings.tab = tab;
    this.writeHash();
    this.toolbar.showTab();
    for (const card of this.cards) card.showTab();
  }

  applyFilter() {
    for (const card of this.cards) card.applyFilter();
  }

  redrawCharts() {
    for (const card of this.cards) card.redrawCharts();
  }

  // Show or hide every line of one run, in every chart, without fetching again.
  toggleRun(ref) {
    const hidden = TS.settings.hidden;
    if (hidden.has(ref)) hidden.delete(ref); else hidden.add(ref);
    for (const card of this.cards) for (const chart of card.charts) chart.showRun(ref, !hidden.has(ref));
    this.showHeader();
  }

  setRunColour(ref, colour) {
    TS.settings.colours[ref] = colour;
    TS.saveSettings();
    this.redrawCharts();
    this.runsCard.update(this.runs);
  }

  writeHash() {
    const hash = new URLSearchParams();
    if (this.primary) hash.set("run", this.primary);
    if (this.compare.length) hash.set("compare", this.compare.join(","));
    if (TS.settings.tab !== "training") hash.set("tab", TS.settings.tab);
    history.replaceState(null, "", window.location.pathname + window.location.search + "#" + hash.toString());
  }

  selectionChanged() {
    this.writeHash();
    this.showHeader();
    this.runsCard.update(this.runs);
    for (const card of this.cards) card.params = {};
    if (!this.primary) {
      const text = this.problem ? "No such run: " + this.problem : "No runs yet.";
      for (const card of this.cards) {
        card.data = null;
        card.destroyCharts();
        TS.clear(card.body).appendChild(TS.empty(text));
      }
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
    if (!this.compare.length) return;
    for (const ref of this.refs()) {  // a chip per run: colour, show/hide, stop comparing
      const hidden = TS.settings.hidden.has(ref);
      const swatch = TS.el("input", {type: "color", class: "swatch", value: this.runColour(ref),
        title: "this run's colour", onchange: (e) => this.setRunColour(ref, e.target.value)});
      list.appendChild(TS.el("span", {class: "chip run-chip" + (hidden ? " hidden-run" : ""), dataset: {ref: ref}},
        swatch,
        TS.el("button", {class: "run-toggle", title: hidden ? "show this run" : "hide this run",
          onclick: () => this.toggleRun(ref)}, (ref === this.primary ? "" : "vs ") + this.runLabel(ref)),
        ref === this.primary ? null : TS.el("button", {class: "run-remove", title: "stop comparing",
          onclick: () => this.toggleCompare(ref, false)}, "x")));
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
        if (!card.visible()) { card.stale = true; continue; }
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
      else if (name === "lora/layers" || name === "delta/layers") reload("lora");
    }
    if (ev.alerts) { reload("alerts"); reload("doctor"); reload("fixed_eval"); reload("predictions"); }
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
