// Passkeys for the account site: the only script Homeport's pages load.
// Served from our own origin (CSP script-src 'self'); talks only to our own endpoints.
"use strict";
(() => {
  if (!window.PublicKeyCredential || !navigator.credentials) {
    for (const el of document.querySelectorAll("[data-passkey-unsupported]")) el.hidden = false;
    return;
  }

  const toBuffer = (text) => {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0)).buffer;
  };
  const toText = (buffer) => {
    let binary = "";
    for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    let data = {};
    try {
      data = await response.json();
    } catch (_) {
      data = {};
    }
    if (!response.ok) throw new Error(data.error || "Something went wrong. Try again.");
    return data;
  }

  function showError(root, error) {
    const el = root.querySelector("[data-passkey-error]");
    if (!el) return;
    const cancelled = error && (error.name === "NotAllowedError" || error.name === "AbortError");
    el.textContent = cancelled ? "The passkey was not used. Try again." : error.message;
    el.hidden = false;
  }

  function creationOptions(options) {
    return {
      ...options,
      challenge: toBuffer(options.challenge),
      user: { ...options.user, id: toBuffer(options.user.id) },
      excludeCredentials: (options.excludeCredentials || []).map((c) => ({ ...c, id: toBuffer(c.id) })),
    };
  }

  function requestOptions(options) {
    return {
      ...options,
      challenge: toBuffer(options.challenge),
      allowCredentials: (options.allowCredentials || []).map((c) => ({ ...c, id: toBuffer(c.id) })),
    };
  }

  function registrationJSON(credential) {
    const r = credential.response;
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: {
        clientDataJSON: toText(r.clientDataJSON),
        attestationObject: toText(r.attestationObject),
        transports: typeof r.getTransports === "function" ? r.getTransports() : [],
      },
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
    };
  }

  function assertionJSON(credential) {
    const r = credential.response;
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      response: {
        clientDataJSON: toText(r.clientDataJSON),
        authenticatorData: toText(r.authenticatorData),
        signature: toText(r.signature),
        userHandle: r.userHandle ? toText(r.userHandle) : null,
      },
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
    };
  }

  for (const form of document.querySelectorAll("form[data-passkey-register]")) {
    form.hidden = false;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        const { options } = await post("/security/passkeys/options", {
          name: form.elements.name.value,
          password: form.elements.password.value,
        });
        const credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
        const done = await post("/security/passkeys/register", { credential: registrationJSON(credential) });
        window.location.assign(done.redirect);
      } catch (error) {
        showError(form, error);
        button.disabled = false;
      }
    });
  }

  for (const root of document.querySelectorAll("[data-passkey-signin]")) {
    root.hidden = false;
    const button = root.querySelector("button");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const next = root.dataset.next || "/";
        const { options } = await post("/signin/passkey/options", { next });
        const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
        const done = await post("/signin/passkey", { credential: assertionJSON(credential), next });
        window.location.assign(done.redirect);
      } catch (error) {
        showError(root, error);
        button.disabled = false;
      }
    });
  }
})();
