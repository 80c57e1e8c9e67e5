/* Admin pages: users (approve, role, disable), API keys (create once-shown, revoke), audit log. */
"use strict";
(function () {
  const M = window.MedSeg;
  const ROLES = ["doctor", "researcher", "admin"];

  // --- users -------------------------------------------------------------------------------------
  const usersTable = document.querySelector("#users-table tbody");
  if (usersTable) {
    const error = document.getElementById("users-error"), ok = document.getElementById("users-ok");
    const pendingOnly = document.getElementById("pending-only");

    async function change(user, body) {
      M.hide(error); M.hide(ok);
      try {
        const updated = await M.api("PATCH", "/api/v1/users/" + user.id, { json: body });
        M.show(ok, M.t("admin.updated", { email: updated.email }), "success");
      } catch (err) { M.showError(error, err); }
      loadUsers();
    }

    const viewerId = Number(document.getElementById("users-table").dataset.viewerId);

    function row(user) {
      const own = user.id === viewerId; // an admin neither disables nor demotes their own account (the API refuses)
      const select = M.h("select", {
        class: "form-select form-select-sm select-fit", "aria-label": M.t("admin.set_role") + " — " + user.email,
        onchange: function () { change(user, { role: select.value }); },
      }, ROLES.map(function (r) { return M.h("option", { value: r, selected: r === user.role }, [M.t("role." + r)]); }));
      if (own) select.disabled = true;
      const actions = [];
      if (own) {
        actions.push(M.h("span", { class: "small text-body-secondary", text: M.t("admin.own_account") }));
      } else if (user.status === "pending") {
        actions.push(M.h("button", { type: "button", class: "btn btn-sm btn-success me-1", "data-action": "approve",
          onclick: function () { change(user, { status: "active" }); } }, [M.t("admin.approve")]));
      } else if (user.status === "active") {
        actions.push(M.h("button", { type: "button", class: "btn btn-sm btn-outline-danger", "data-action": "disable",
          onclick: function () { change(user, { status: "disabled" }); } }, [M.t("admin.disable")]));
      } else if (user.status === "disabled") {
        actions.push(M.h("button", { type: "button", class: "btn btn-sm btn-outline-success", "data-action": "enable",
          onclick: function () { change(user, { status: "active" }); } }, [M.t("admin.enable")]));
      }
      return M.h("tr", { "data-email": user.email }, [
        M.h("td", {}, [user.full_name, M.h("div", { class: "small text-body-secondary", text: [user.title, user.department].filter(Boolean).join(" · ") })]),
        M.h("td", { text: user.email }), M.h("td", { text: user.hospital || "—" }),
        M.h("td", {}, [select]), M.h("td", { text: M.t("status." + user.status) }), M.h("td", {}, actions),
      ]);
    }

    async function loadUsers() {
      try {
        const body = await M.api("GET", "/api/v1/users" + (pendingOnly.checked ? "?status=pending" : ""));
        usersTable.replaceChildren.apply(usersTable, body.users.length ? body.users.map(row)
          : [M.h("tr", {}, [M.h("td", { colspan: 6, text: M.t("common.none") })])]);
      } catch (err) { M.showError(error, err); }
    }
    pendingOnly.addEventListener("change", loadUsers);
    loadUsers();
  }

  // --- API keys ----------------------------------------------------------------------------------
  const keysTable = document.querySelector("#keys-table tbody");
  if (keysTable) {
    const form = document.getElementById("key-form"), error = document.getElementById("key-error");
    const listError = document.getElementById("keys-error"), created = document.getElementById("key-created");

    async function loadKeys() {
      try {
        const body = await M.api("GET", "/api/v1/api-keys");
        keysTable.replaceChildren.apply(keysTable, body.api_keys.map(function (k) {
          const revoke = k.revoked_at ? M.t("admin.key_revoked") : M.h("button", {
            type: "button", class: "btn btn-sm btn-outline-danger",
            onclick: async function () {
              try { await M.api("DELETE", "/api/v1/api-keys/" + encodeURIComponent(k.prefix)); } catch (err) { M.showError(listError, err); }
              loadKeys();
            },
          }, [M.t("admin.key_revoke")]);
          return M.h("tr", { "data-prefix": k.prefix }, [
            M.h("td", {}, [M.h("code", { text: k.prefix })]), M.h("td", { text: k.name }),
            M.h("td", { text: k.scopes.map(function (s) { return M.t("scope." + s); }).join(", ") }), M.h("td", { text: k.hospital || "—" }),
            M.h("td", { text: M.when(k.expires_at) }), M.h("td", { text: M.when(k.last_used_at) }),
            M.h("td", {}, [revoke]),
          ]);
        }));
      } catch (err) { M.showError(listError, err); }
    }

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      M.hide(error); created.classList.add("d-none");
      const scopes = Array.from(form.querySelectorAll("input[name=scopes]:checked")).map(function (c) { return c.value; });
      const body = { name: form.elements.name.value.trim(), scopes: scopes };
      const missing = [!body.name && M.t("admin.key_name_missing"), !scopes.length && M.t("admin.key_scopes_missing")];
      if (missing.some(Boolean)) {
        M.showError(error, missing.filter(Boolean).join(" "));
        (body.name ? form.querySelector("input[name=scopes]") : form.elements.name).focus();
        return;
      }
      const hospital = form.elements.hospital.value.trim();
      if (hospital) body.hospital = hospital;
      if (form.elements.expires.value) body.expires_at = form.elements.expires.value + "T23:59:59Z";
      try {
        const key = await M.api("POST", "/api/v1/api-keys", { json: body });
        document.getElementById("new-key").textContent = key.key;
        created.classList.remove("d-none");
        form.reset();
        loadKeys();
      } catch (err) { M.showError(error, err); }
    });
    loadKeys();
  }

  // --- audit log ---------------------------------------------------------------------------------
  const auditTable = document.querySelector("#audit-table tbody");
  if (auditTable) {
    const form = document.getElementById("audit-form"), error = document.getElementById("audit-error");
    const more = document.getElementById("audit-more"), csv = document.getElementById("audit-csv");
    let before = null;

    function query() {
      const q = new URLSearchParams();
      for (const name of ["action", "actor", "target"]) {
        const v = form.elements[name].value.trim();
        if (v) q.set(name, v);
      }
      return q;
    }

    async function loadAudit(append) {
      M.hide(error);
      const q = query();
      csv.href = "/api/v1/audit/export.csv" + (q.toString() ? "?" + q : "");
      q.set("limit", "50");
      if (append && before) q.set("before_id", before);
      try {
        const body = await M.api("GET", "/api/v1/audit?" + q);
        const rows = body.entries.map(function (e) {
          return M.h("tr", {}, [
            M.h("td", { text: M.when(e.at) }), M.h("td", { class: "name-cell", text: e.actor }),
            M.h("td", {}, [M.h("code", { text: e.action })]), M.h("td", { class: "name-cell", text: e.target || "" }),
            M.h("td", { class: "small text-break-all", text: e.detail ? JSON.stringify(e.detail) : "" }),
          ]);
        });
        if (!append && !rows.length) rows.push(M.h("tr", {}, [M.h("td", { colspan: 5, text: M.t("admin.audit_none") })]));
        if (append) auditTable.append.apply(auditTable, rows); else auditTable.replaceChildren.apply(auditTable, rows);
        before = body.next_before_id;
        more.classList.toggle("d-none", !before);
      } catch (err) { M.showError(error, err); }
    }
    form.addEventListener("submit", function (event) { event.preventDefault(); loadAudit(false); });
    more.addEventListener("click", function () { loadAudit(true); });
    loadAudit(false);
  }
})();
