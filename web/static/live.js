// Live parts of the dashboard pages: regions marked `data-live` are refreshed from the server
// (the page is fetched again and the regions swapped) when the build's event stream
// (`data-events`) says something changed, or every `data-poll` seconds while builds run.
// Without JavaScript the pages are complete; this only keeps them current.
"use strict";
(function () {
  const regions = () => Array.from(document.querySelectorAll("[data-live][id]"));
  if (regions().length === 0) return;

  let pending = null;
  let inFlight = false;

  // Fetches the page again and swaps every live region whose content changed. Focus inside a
  // region is kept when the element with the same id exists after the swap.
  async function refresh() {
    if (inFlight) { schedule(300); return; }
    inFlight = true;
    try {
      const resp = await fetch(location.href, { headers: { "Accept": "text/html" }, cache: "no-store" });
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const focusedId = document.activeElement && document.activeElement.id;
      for (const old of regions()) {
        const fresh = doc.getElementById(old.id);
        if (!fresh) continue;
        if (fresh.innerHTML !== old.innerHTML) {
          old.replaceWith(document.importNode(fresh, true));
        }
      }
      if (focusedId) {
        const f = document.getElementById(focusedId);
        if (f && f !== document.activeElement) f.focus();
      }
      setup();
    } catch (e) {
      // Network trouble: the next event or poll tries again.
    } finally {
      inFlight = false;
    }
  }

  function schedule(ms) {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refresh(); }, ms);
  }

  // Event kinds a build stream sends; any of them may change what the page shows.
  const KINDS = ["build_status", "job_status", "step_status", "tests", "policy", "result_cached", "artifact", "message"];
  let source = null;
  let sourceUrl = null;
  let pollTimer = null;

  function setup() {
    const streamed = document.querySelector("[data-live][data-events]");
    const url = streamed ? streamed.dataset.events : null;
    if (url !== sourceUrl) {
      if (source) source.close();
      source = null;
      sourceUrl = url;
      if (url) {
        source = new EventSource(url);
        for (const k of KINDS) source.addEventListener(k, () => schedule(150));
        source.addEventListener("end", () => { source.close(); source = null; schedule(50); });
      }
    }
    const polled = document.querySelector("[data-live][data-poll]");
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
    if (polled) {
      const secs = Math.max(1, Number(polled.dataset.poll) || 5);
      pollTimer = setInterval(() => { if (!document.hidden) schedule(0); }, secs * 1000);
    }
  }

  setup();
})();
