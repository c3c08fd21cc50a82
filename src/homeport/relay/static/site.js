// The account site's small helpers: copy buttons, printing, times in the viewer's zone.
// Served from our own origin (CSP script-src 'self'); every page works without it.
"use strict";
(() => {
  // Copy buttons: data-copy names the element (input or text) whose value is copied.
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      const text = "value" in source ? source.value : source.textContent.trim();
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (_) {
        if ("select" in source) source.select();
        button.textContent = "Press Ctrl+C";
      }
      setTimeout(() => { button.textContent = label; }, 2500);
    });
  }
  for (const button of document.querySelectorAll("[data-print]")) {
    button.hidden = false;
    button.addEventListener("click", () => window.print());
  }
  // Times: shown in the viewer's own time zone; the UTC time stays on hover (title).
  const format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
  for (const el of document.querySelectorAll("time[data-local]")) {
    const moment = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) el.textContent = format.format(moment);
  }
})();
