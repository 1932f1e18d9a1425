// Runs panel (the sidebar): status, step, headline numbers, search, compare checkboxes.
"use strict";

TS.views.runs = {
  mount(container, app) {
    const search = TS.el("input", {type: "search", class: "run-search",
      placeholder: "search runs and config", "aria-label": "search runs"});
    const count = TS.el("div", {class: "run-count"});
    const list = TS.el("ul", {class: "run-list"});
    container.append(TS.el("h2", {class: "side-title"}, "Runs"), search, count, list);
    let runs = [];
    const matches = (r, words) => {
      const hay = [r.id, r.project, r.name, r.status,
        ...Object.entries(r.config || {}).map(([k, v]) => k + "=" + v)].join(" ").toLowerCase();
      return words.every((w) => hay.includes(w));
    };
    const draw = () => {
      const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      const shown = runs.filter((r) => matches(r, words));
      count.textContent = `${shown.length} of ${runs.length} runs`;
      TS.clear(list);
      if (!runs.length) { list.appendChild(TS.el("li", {class: "empty"}, "No runs yet.")); return; }
      for (const r of shown) {
        const shown = r.ref === app.primary || app.compare.includes(r.ref);
        const checkbox = TS.el("input", {type: "checkbox", title: "compare with the selected run",
          checked: app.compare.includes(r.ref), disabled: r.ref === app.primary,
          style: shown && app.compare.length ? "accent-color:" + app.runColour(r.ref) : null,
          onclick: (e) => { e.stopPropagation(); app.toggleCompare(r.ref, e.target.checked); }});
        const numbers = Object.entries(r.headline || {}).map(([k, v]) => `${k} ${TS.fmt(v)}`).join("  ");
        const config = Object.entries(r.config || {}).slice(0, 12).map(([k, v]) => `${k}=${v}`).join("\n");
        list.appendChild(TS.el("li", {class: "run" + (r.ref === app.primary ? " selected" : ""),
          dataset: {ref: r.ref}, title: config, onclick: () => app.select(r.ref)},
          checkbox,
          TS.el("span", {class: "run-main"},
            TS.el("span", {class: "run-name"}, r.name),
            TS.el("span", {class: "run-meta"},
              TS.el("span", {class: "badge status-" + r.status}, r.status),
              ` ${r.project} · step ${r.step === null ? "-" : r.step}` +
              (r.alerts ? ` · ${r.alerts} alerts` : "")),
            numbers ? TS.el("span", {class: "run-numbers"}, numbers) : null)));
      }
    };
    search.addEventListener("input", draw);
    return {
      update(next) { runs = next || []; draw(); },
      error(message) { count.textContent = "could not list runs: " + message; },
    };
  },
};
