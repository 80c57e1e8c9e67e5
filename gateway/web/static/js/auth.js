/* Sign in and registration: JSON to /api/v1/auth/*, errors shown in the form. */
"use strict";
(function () {
  const M = window.MedSeg;
  const value = function (form, name) { return form.elements[name].value.trim(); };
  // The account this browser asked for, until it signs in: the sign-in page says it waits for approval.
  const PENDING_KEY = "medseg.pending";
  const storage = {
    get: function (store, key) { try { return store.getItem(key); } catch (_) { return null; } },
    set: function (store, key, v) { try { store.setItem(key, v); } catch (_) { /* not remembered */ } },
    remove: function (store, key) { try { store.removeItem(key); } catch (_) { /* nothing kept */ } },
  };

  const signIn = document.getElementById("sign-in-form");
  if (signIn) {
    const pending = storage.get(localStorage, PENDING_KEY);
    if (pending) {
      M.show(document.getElementById("pending-note"), M.t("auth.pending_note", { email: pending }), "info");
      if (!signIn.elements.email.value) signIn.elements.email.value = pending;
    }
    signIn.addEventListener("submit", async function (event) {
      event.preventDefault();
      const error = document.getElementById("form-error");
      M.hide(error);
      const email = value(signIn, "email"), password = signIn.elements.password.value;
      if (!email || !password) { M.showError(error, M.t("err.invalid_credentials")); return; }
      const button = signIn.querySelector("button[type=submit]");
      M.busy(button, true);
      try {
        const session = await M.api("POST", "/api/v1/auth/sign-in", { json: { email: email, password: password }, noRedirect: true });
        storage.remove(localStorage, PENDING_KEY);
        if (session.newly_approved) storage.set(sessionStorage, "medseg.approved", "1");  // said on the next page
        location.assign(signIn.dataset.next || "/");
      } catch (err) {
        M.showError(error, err);
        M.busy(button, false);
        signIn.elements.password.focus();
      }
    });
  }

  const register = document.getElementById("register-form");
  if (register) {
    register.addEventListener("submit", async function (event) {
      event.preventDefault();
      const error = document.getElementById("form-error"), ok = document.getElementById("form-ok");
      M.hide(error); M.hide(ok);
      const body = { role: register.elements.role.value };
      for (const name of ["email", "full_name", "title", "department", "hospital"]) {
        const v = value(register, name);
        if (v) body[name] = v;
      }
      body.password = register.elements.password.value;
      const missing = [];
      if (!body.full_name) missing.push(M.t("auth.full_name"));
      if (!body.email) missing.push(M.t("auth.email"));
      if (!body.password) missing.push(M.t("auth.password"));
      if (missing.length) { M.showError(error, M.t("common.required") + ": " + missing.join(", ")); return; }
      const button = register.querySelector("button[type=submit]");
      M.busy(button, true);
      try {
        const accepted = await M.api("POST", "/api/v1/auth/register", { json: body, noRedirect: true });
        storage.set(localStorage, PENDING_KEY, accepted.email);
        M.show(ok, M.t("auth.registered"), "success");
        register.reset();
      } catch (err) {
        M.showError(error, err);
      } finally {
        M.busy(button, false);
      }
    });
  }
})();
