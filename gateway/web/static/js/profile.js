/* Profile: PATCH /api/v1/users/me, POST /api/v1/users/me/password. */
"use strict";
(function () {
  const M = window.MedSeg;
  const profile = document.getElementById("profile-form");
  profile.addEventListener("submit", async function (event) {
    event.preventDefault();
    const error = document.getElementById("profile-error"), ok = document.getElementById("profile-ok");
    M.hide(error); M.hide(ok);
    const body = {};
    for (const name of ["full_name", "title", "department"]) body[name] = profile.elements[name].value.trim();
    if (!body.full_name) { M.showError(error, M.t("common.required") + ": " + M.t("auth.full_name")); return; }
    try {
      await M.api("PATCH", "/api/v1/users/me", { json: body });
      M.show(ok, M.t("profile.saved"), "success");
    } catch (err) { M.showError(error, err); }
  });

  const password = document.getElementById("password-form");
  password.addEventListener("submit", async function (event) {
    event.preventDefault();
    const error = document.getElementById("password-error"), ok = document.getElementById("password-ok");
    M.hide(error); M.hide(ok);
    const body = {
      current_password: password.elements.current_password.value,
      new_password: password.elements.new_password.value,
    };
    if (!body.current_password || !body.new_password) { M.showError(error, M.t("common.required")); return; }
    try {
      await M.api("POST", "/api/v1/users/me/password", { json: body });
      M.show(ok, M.t("profile.password_changed"), "success");
      password.reset();
    } catch (err) { M.showError(error, err); }
  });
})();
