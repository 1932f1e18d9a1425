// Doctor panel: the verdict and actions first, trends and weakest spots, then the whole
// diagnosis as a tree (whatever shape `diagnose` returns, it is shown as text).
"use strict";

TS.views.doctor = {
  renderEmpty: true,
  render(body, data) {
    if (!data.available || !data.diagnosis) {
      body.appendChild(TS.empty(data.message || "The doctor found nothing to say yet."));
      return;
    }
    const d = data.diagnosis;
    if (typeof d.verdict === "string") body.appendChild(TS.el("div", {class: "verdict"}, d.verdict));
    if (Array.isArray(d.actions) && d.actions.length) {
      body.appendChild(TS.el("ol", {class: "actions"}, d.actions.map((a) => (typeof a === "object" && a !== null
        ? TS.el("li", {}, a.level ? TS.el("span", {class: "badge level-" + a.level}, a.level) : null, " ",
          String(a.text || ""), a.because ? TS.el("span", {class: "muted"}, " (because: " + a.because + ")") : null)
        : TS.el("li", {}, String(a))))));
    }
    const stats = TS.el("div", {class: "stats"});
    if (d.best && typeof d.best === "object") {
      stats.appendChild(TS.el("span", {class: "stat"}, TS.el("span", {class: "stat-label"}, "best"),
        TS.el("span", {class: "stat-value"}, `${d.best.checkpoint}` + (d.best.metric ? ` (${d.best.metric} ${TS.fmt(d.best.value)})` : ""))));
    }
    if (Array.isArray(d.trends)) {
      for (const t of d.trends) {
        if (t && typeof t === "object" && t.key) {
          stats.appendChild(TS.el("span", {class: "stat"}, TS.el("span", {class: "stat-label"}, t.key),
            TS.el("span", {class: "stat-value"}, `${TS.fmt(t.last)} ${t.verdict || ""}`)));
        }
      }
    }
    if (stats.childNodes.length) body.appendChild(stats);
    if (d.weakest && typeof d.weakest === "object") {
      for (const [what, items] of Object.entries(d.weakest)) {
        if (!Array.isArray(items) || !items.length) continue;
        body.appendChild(TS.el("div", {class: "weakest"}, `weakest ${what}: `, items.slice(0, 5).map((it) =>
          TS.el("span", {class: "chip"}, typeof it === "object" && it !== null
            ? Object.values(it).map((v) => (typeof v === "number" ? TS.fmt(v) : String(v))).join(" ")
            : String(it)))));
      }
    }
    body.appendChild(TS.el("details", {class: "more"}, TS.el("summary", {}, "full diagnosis"),
      TS.views.doctor.tree(d, 0)));
  },
  tree(value, depth) {
    if (value === null || typeof value !== "object") {
      return TS.el("span", {class: "doctor-value"}, typeof value === "number" ? TS.fmt(value) : String(value));
    }
    if (Array.isArray(value)) {
      return TS.el("ul", {class: "doctor-list"}, value.map((v) => TS.el("li", {}, TS.views.doctor.tree(v, depth + 1))));
    }
    return TS.el("dl", {class: "doctor-map"}, Object.entries(value).map(([k, v]) => [
      TS.el("dt", {}, k), TS.el("dd", {}, TS.views.doctor.tree(v, depth + 1))]));
  },
};
