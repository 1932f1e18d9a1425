// Loss panel: loss, CE with its EMA, entropy, learning rate.
"use strict";

TS.views.loss = {
  hint: "No loss logged yet: run.log({\"loss\": loss}) or run.observe(...) writes it.",
  render(body, data, ctx) { ctx.charts(body, data.charts); },
};
