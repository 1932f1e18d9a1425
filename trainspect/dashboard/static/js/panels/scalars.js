// Other metrics panel: every key no other panel shows; search and pages keep 200+ keys usable.
"use strict";

TS.views.scalars = {
  hint: "No other metrics.",
  render(body, data, ctx) {
    const search = TS.el("input", {type: "search", placeholder: `filter ${data.total} metrics`, value: data.filter || "",
      "aria-label": "filter metrics"});
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { TS.views.scalars.refocus = true; ctx.set({filter: search.value, page: 0}); }, 300);
    });
    const pager = TS.el("span", {class: "pager"},
      TS.el("button", {disabled: data.page <= 0, onclick: () => ctx.set({page: data.page - 1})}, "previous"),
      ` page ${data.page + 1} of ${data.pages} (${data.keys.length} metrics) `,
      TS.el("button", {disabled: data.page >= data.pages - 1, onclick: () => ctx.set({page: data.page + 1})}, "next"));
    body.appendChild(TS.el("div", {class: "controls"}, search, pager));
    if (TS.views.scalars.refocus) {
      TS.views.scalars.refocus = false;
      search.focus();
      search.setSelectionRange(search.value.length, search.value.length);
    }
    if (!data.charts.length) { body.appendChild(TS.empty("No metric matches.")); return; }
    ctx.charts(body, data.charts);
  },
};
