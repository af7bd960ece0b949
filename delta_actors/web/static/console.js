// The delta console's live updates: a page with data-live-stream on <body> opens an
// EventSource on /live; each `change` or `tick` refetches the page and swaps in its
// [data-live] parts (server-rendered, escaped HTML), at most once per REFRESH_MS.
// Closing the tab closes the stream. Also: confirm() for buttons with data-confirm.
"use strict";
(function () {
  const REFRESH_MS = 700;
  const body = document.body;
  const indicator = document.getElementById("live-state");

  document.addEventListener("submit", function (event) {
    const button = event.submitter;
    if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
    }
  });

  if (body.dataset.liveStream === undefined || !window.EventSource) {
    return;
  }
  let timer = null;
  let running = false;
  let again = false;

  async function refresh() {
    timer = null;
    if (running) { again = true; return; }
    running = true;
    try {
      const response = await fetch(window.location.href, {
        headers: { "X-Delta-Live": "1" }, credentials: "same-origin", cache: "no-store",
      });
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const part of document.querySelectorAll("[data-live]")) {
          const next = fresh.querySelector('[data-live="' + CSS.escape(part.dataset.live) + '"]');
          if (next) { part.replaceWith(document.importNode(next, true)); }
        }
        body.dataset.refreshes = String(Number(body.dataset.refreshes || "0") + 1);
      }
    } catch (error) {
      // The server is away; the stream reconnects and the next message refreshes again.
    } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  }

  function schedule() {
    if (timer === null) { timer = window.setTimeout(refresh, REFRESH_MS); }
  }

  const source = new EventSource(body.dataset.root + "/live" + body.dataset.liveStream);
  source.addEventListener("ready", function () { indicator.classList.add("on"); });
  source.addEventListener("change", schedule);
  source.addEventListener("tick", schedule);
  source.addEventListener("error", function () { indicator.classList.remove("on"); });
  window.addEventListener("pagehide", function () { source.close(); });
})();
