/* Sign in and registration: JSON to /api/v1/auth/*, errors shown in the form. */
"use strict";
(function () {
  const M = window.MedSeg;
  const value = function (form, name) { return form.elements[name].value.trim(); };

  const signIn = document.getElementById("sign-in-form");
  if (signIn) {
    signIn.addEventListener("submit", async function (event) {
      event.preventDefault();
      const error = document.getElementById("form-error");
      M.hide(error);
      const email = value(signIn, "email"), password = signIn.elements.password.value;
      if (!email || !password) { M.showError(error, M.t("err.invalid_credentials")); return; }
      const button = signIn.querySelector("button[type=submit]");
      M.busy(button, true);
      try {
        await M.api("POST", "/api/v1/auth/sign-in", { json: { email: email, password: password }, noRedirect: true });
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
        await M.api("POST", "/api/v1/auth/register", { json: body, noRedirect: true });
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
