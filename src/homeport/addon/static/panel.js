// The panel keeps its connection state current without reloading the page: every 10 s
// it asks the panel for the state (same origin, CSP script-src/connect-src 'self') and
// updates the status line and the link code; only a change of state, which changes
// what the page offers, reloads it. Without script the page is still complete.
"use strict";
// Home Assistant's theme: the panel is a same-origin ingress iframe, and Home Assistant
// sets its theme's variables on its own root element; the panel's stylesheet reads the
// same names (var(--primary-color, fallback)), so copy them over. Not framed, or framed
// by another origin: the stylesheet's own light and dark colours stay.
const THEME = [
  "--primary-color", "--text-primary-color", "--primary-text-color", "--secondary-text-color",
  "--primary-background-color", "--card-background-color", "--divider-color",
  "--error-color", "--warning-color", "--success-color", "--ha-card-border-radius",
  "--ha-card-box-shadow", "--paper-font-body1_-_font-family",
];
(() => {
  let outer;
  try {
    if (window.parent === window) return;
    outer = getComputedStyle(window.parent.document.documentElement);
  } catch (_) {
    return; // another origin: nothing to read
  }
  const root = document.documentElement.style;
  for (const name of THEME) {
    const value = outer.getPropertyValue(name).trim();
    if (value) root.setProperty(name, value);
  }
})();
(() => {
  const main = document.querySelector("main[data-state]");
  if (!main) return;
  const line = document.getElementById("state");
  const code = document.getElementById("link-code");
  const button = document.getElementById("link-button");
  const poll = async () => {
    let now;
    try {
      const answer = await fetch("state", { cache: "no-store", credentials: "same-origin" });
      if (!answer.ok) return;
      now = await answer.json();
    } catch (_) {
      return; // the add-on restarting: try again next time
    }
    if (now.state !== main.dataset.state) {
      window.location.reload();
      return;
    }
    if (line && line.textContent !== now.label) line.textContent = now.label;
    if (code && now.link_code && code.textContent !== now.link_code) {
      code.textContent = now.link_code;
      if (button && now.link_url) button.href = now.link_url;
    }
  };
  setInterval(poll, 10000);
})();
