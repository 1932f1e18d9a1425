// Live updates over Server-Sent Events. The server says hello with each run's cursor
// first; the page loads its panels after that, so nothing written in between is lost.
// The browser reconnects by itself and resumes from the last event id.
"use strict";

TS.Live = class {
  constructor(app) {
    this.app = app;
    this.source = null;
    this.badge = document.getElementById("live");
  }

  connect(refs, onReady) {
    if (this.source) this.source.close();
    const query = refs.map((r) => "run=" + encodeURIComponent(r)).join("&");
    const es = this.source = new EventSource("/api/events?" + query);
    let ready = false;
    const go = () => { if (!ready) { ready = true; onReady(); } };
    const fallback = setTimeout(go, 1500);  // no SSE (a proxy?): still show the data
    es.addEventListener("hello", () => { clearTimeout(fallback); this.show("live"); go(); });
    es.addEventListener("update", (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      this.show("live");
      this.app.onUpdate(ev);
    });
    es.onerror = () => this.show(es.readyState === EventSource.CLOSED ? "offline" : "reconnecting");
  }

  show(state) {
    if (!this.badge) return;
    this.badge.textContent = state;
    this.badge.className = "live live-" + state;
  }
};
