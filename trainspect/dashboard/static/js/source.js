// Where panel data comes from: the server's API (live), or the data embedded in a
// report file (offline). Both answer the same questions with the same shapes.
"use strict";

// Parameters as the report keys them (mirrors report.py param_key).
TS.paramKey = function (params) {
  return Object.keys(params || {}).filter((k) => params[k] !== "" && params[k] !== null &&
    params[k] !== undefined).sort().map((k) => k + "=" + String(params[k])).join("&");
};

TS.refPath = function (ref) {
  return ref.split("/").map(encodeURIComponent).join("/");
};

TS.LiveSource = class {
  constructor() { this.live = true; }

  async get(url) {
    const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== "" && v !== null && v !== undefined) q.set(k, String(v));
    }
    const s = q.toString();
    return s ? "?" + s : "";
  }

  panels() { return this.get("/api/panels"); }
  runs(q) { return this.get("/api/runs" + this.query({q: q})); }
  // {ref: "project/id", ...} of a run named by project/id, bare id, unique suffix or name
  resolve(ref) { return this.get("/api/resolve" + this.query({run: ref})); }
  panel(ref, name, params) {
    return this.get(`/api/runs/${TS.refPath(ref)}/panels/${encodeURIComponent(name)}` +
      this.query(params));
  }
  detail(ref, key, lo, hi) {
    return this.get(`/api/runs/${TS.refPath(ref)}/series` +
      this.query({key: key, lo: lo, hi: hi, buckets: 1000})).then((d) => d.points);
  }
  exportPanel(ref, name, format, params) {
    const url = `/api/runs/${TS.refPath(ref)}/export/${encodeURIComponent(name)}` +
      this.query(Object.assign({}, params, {format: format}));
    const a = TS.el("a", {href: url, download: ""});
    document.body.appendChild(a);
    a.click();
    a.remove();
  }
};

TS.ReportSource = class {
  constructor(report) { this.live = false; this.report = report; }

  async panels() { return this.report.panels; }

  async runs(q) {
    const words = (q || "").toLowerCase().split(/\s+/).filter(Boolean);
    const runs = this.report.runs.filter((r) => {
      const hay = [r.id, r.project, r.name, r.status,
        ...Object.entries(r.config).map(([k, v]) => k + "=" + v)].join(" ").toLowerCase();
      return words.every((w) => hay.includes(w));
    });
    return {empty: !runs.length, runs: runs, query: q || ""};
  }

  // The report holds one run: a link may name it as the dashboard would.
  async resolve(ref) {
    const found = this.report.runs.filter((r) => r.ref === ref || r.id === ref || r.name === ref ||
      r.id.endsWith(ref) || (r.project + "/" + r.id).endsWith(ref));
    if (found.length !== 1) throw new Error(`no run ${ref} in this report`);
    return found[0];
  }

  // The stored variant for these parameters: exact, else the last one that agrees with
  // every given parameter (e.g. the newest step of a stream), else the default.
  async panel(ref, name, params) {
    const stored = ((this.report.data[ref] || {})[name]) || {};
    const key = TS.paramKey(params);
    if (key in stored) return stored[key];
    const given = Object.entries(params || {}).filter(([, v]) => v !== "" && v !== null && v !== undefined);
    const fits = Object.keys(stored).filter((k) => {
      const have = new URLSearchParams(k);
      return given.every(([p, v]) => have.get(p) === String(v));
    });
    if (fits.length) return stored[fits[fits.length - 1]];
    if ("" in stored) return Object.assign({}, stored[""], {note: "not stored in this report"});
    throw new Error("this report holds no data for " + name);
  }

  detail() { return Promise.resolve(null); }

  exportPanel(ref, name, format, params) {
    return this.panel(ref, name, params).then((data) => {
      const base = `${ref.replace("/", "_")}_${name}`;
      if (format === "json") {
        TS.download(base + ".json", JSON.stringify(data, null, 1), "application/json");
      } else {
        const [header, rows] = TS.exportRows(data);
        TS.download(base + ".csv", TS.toCsv(header, rows), "text/csv");
      }
    });
  }
};
