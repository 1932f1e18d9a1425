// DOM helpers. Every piece of data reaches the page as text (textContent, text nodes,
// attribute values set one by one), never as markup: a script tag in a run name or a
// model's output shows as the characters it is made of.
"use strict";
window.TS = window.TS || {};
TS.views = TS.views || {};

// el("div", {class: "x", title: "t", onclick: fn}, "text", childNode, [more, children])
TS.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      node.className = value;
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (name === "value" || name === "checked" || name === "disabled") {
      node[name] = value;
    } else if (/^[a-z][a-z0-9-]*$/.test(name)) {
      node.setAttribute(name, String(value));
    }
  }
  TS.append(node, children);
  return node;
};

TS.append = function (node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

TS.clear = function (node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
};

// Numbers, compactly and honestly: null (NaN/inf on the server) shows as "-".
TS.fmt = function (v, digits) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v !== "number") return String(v);
  if (!isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (v === 0 || (a >= 1e-3 && a < 1e5)) return String(+v.toPrecision(digits || 4));
  return v.toExponential(2);
};

TS.pct = function (v) {
  return v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%";
};

TS.when = function (seconds) {
  if (!seconds) return "-";
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
};

TS.empty = function (text) {
  return TS.el("div", {class: "empty"}, text);
};

// A table of columns and rows; numbers formatted, everything else as text.
TS.table = function (columns, rows, opts) {
  opts = opts || {};
  const head = TS.el("tr", {}, columns.map((c) => TS.el("th", {}, c)));
  const body = rows.map((row) => {
    const tr = TS.el("tr", {}, row.map((v, i) => {
      const cell = TS.el("td", {class: typeof v === "number" ? "num" : ""},
        opts.format ? opts.format(v, columns[i], row) : TS.fmt(v));
      return cell;
    }));
    if (opts.rowClass) tr.className = opts.rowClass(row) || "";
    return tr;
  });
  return TS.el("table", {class: "data"}, TS.el("thead", {}, head), TS.el("tbody", {}, body));
};

// A <select> of string options; onchange gets the chosen value.
TS.select = function (options, current, onchange, labels) {
  const sel = TS.el("select", {onchange: (e) => onchange(e.target.value)},
    options.map((o, i) => TS.el("option", {value: String(o)}, labels ? labels[i] : String(o))));
  sel.value = String(current);
  return sel;
};

// A step slider over known steps: shows the step, calls onchange(step) when released.
TS.stepSlider = function (steps, current, onchange) {
  if (!steps.length) return null;
  let index = Math.max(0, steps.indexOf(current));
  if (current === null || current === undefined) index = steps.length - 1;
  const label = TS.el("span", {class: "slider-label"}, "step " + steps[index]);
  const input = TS.el("input", {type: "range", min: "0", max: String(steps.length - 1),
    value: String(index), class: "step-slider"});
  input.addEventListener("input", () => { label.textContent = "step " + steps[+input.value]; });
  input.addEventListener("change", () => onchange(steps[+input.value]));
  return TS.el("span", {class: "slider"}, input, label);
};

// A panel's data as one CSV table (mirrors panels/base.py export_rows).
TS.exportRows = function (data) {
  if (data.charts && data.charts.length) {
    const rows = [];
    for (const c of data.charts) for (const s of c.series) for (const p of s.points)
      rows.push([c.id, s.key, p[0], p[1], p[2]]);
    return [["chart", "series", "step", "min", "max"], rows];
  }
  if (data.table) return [data.table.columns, data.table.rows];
  return [["empty"], []];
};

TS.toCsv = function (header, rows) {
  const cell = (v) => {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  };
  return [header, ...rows].map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
};

TS.download = function (name, text, type) {
  const url = URL.createObjectURL(new Blob([text], {type: type}));
  const a = TS.el("a", {href: url, download: name});
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
};
