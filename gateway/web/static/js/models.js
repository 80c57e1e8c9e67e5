/* Models: an organ's versions with cards and metrics; promote (the reference-set comparison is shown,
   a refused promotion can be forced with a reason) and roll back. */
"use strict";
(function () {
  const M = window.MedSeg;
  const organ = document.getElementById("organ"), tbody = document.querySelector("#versions-table tbody");
  const error = document.getElementById("models-error"), ok = document.getElementById("models-ok");
  const base = function () { return "/api/v1/models/" + encodeURIComponent(organ.value); };

  function metrics(v) {
    const m = v.metrics || {};
    return Object.keys(m).slice(0, 4).map(function (k) {
      return k + " " + (typeof m[k] === "number" ? m[k].toFixed(3) : String(m[k]));
    }).join(" · ");
  }

  const box = document.getElementById("comparison"), force = document.getElementById("force");  // force: admins only
  const actionForm = document.getElementById("action-form");
  let defaultVersion = null;  // the organ's default as last loaded

  /** The reference-set gate's outcome: both mean Dice values, the drop and the drop allowed. */
  function showComparison(verdict, kind, candidate, current, drop) {
    const field = function (name) { return box.querySelector('[data-field="' + name + '"]'); };
    const dice = function (e) { return "v" + e.version + ": " + e.dice.toFixed(3); };
    box.className = "alert mb-3 alert-" + kind;
    document.getElementById("comparison-verdict").textContent = verdict;
    field("candidate").textContent = dice(candidate);
    field("default").textContent = dice(current);
    field("drop").textContent = drop.toFixed(3);
    field("allowed").textContent = Number(box.dataset.allowedDrop).toFixed(3);
  }

  /** A refusal names no numbers in its error shape: the gate's values are in the version's last event. */
  async function showRefusal(version) {
    const detail = await M.api("GET", base() + "/versions/" + encodeURIComponent(version));
    const refused = detail.events.filter(function (e) { return e.action === "promotion_refused"; }).pop();
    const d = refused.detail;
    showComparison(M.t("models.gate_refused"), "warning", { version: version, dice: d.candidate_mean_dice },
      { version: defaultVersion, dice: d.default_mean_dice }, d.dice_drop);
  }

  async function promote(v, button) {
    M.hide(error); M.hide(ok); box.classList.add("d-none");
    const reason = document.getElementById("reason").value.trim();
    M.busy(button, true);
    try {
      const p = await M.api("POST", base() + "/versions/" + encodeURIComponent(v.version) + "/promote",
        { json: { force: !!(force && force.checked), reason: reason || null } });
      const c = p.candidate_evaluation, d = p.default_evaluation;
      if (c && d) {
        showComparison(p.forced ? M.t("models.gate_forced") : M.t("models.gate_passed"), p.forced ? "warning" : "success",
          { version: c.model_version, dice: c.mean_dice },
          { version: d.model_version, dice: d.mean_dice }, p.dice_drop);
      }
      M.show(ok, M.t("models.promoted", { version: p.version.version }), "success");
      actionForm.reset();
    } catch (err) {
      if (err.code === "promotion_refused") {
        try { await showRefusal(v.version); } catch (_) { M.showError(error, err); }
      } else {
        M.showError(error, err);
      }
    }
    M.busy(button, false);
    load();
  }

  async function load() {
    try {
      const body = await M.api("GET", base() + "/versions");
      defaultVersion = body.default_version;
      tbody.replaceChildren.apply(tbody, body.versions.length ? body.versions.map(function (v) {
        const card = M.h("details", {}, [M.h("summary", { text: M.t("models.card") }),
          M.h("pre", { class: "small mb-0", text: JSON.stringify(v.card, null, 2) })]);
        const action = v.state === "candidate" ? M.h("button", {
          type: "button", class: "btn btn-sm btn-primary", text: M.t("models.promote"), onclick: function () { promote(v, this); },
        }) : "";
        return M.h("tr", { "data-version": v.version }, [
          M.h("td", {}, [M.h("strong", { text: v.version }), card]),
          M.h("td", {}, [M.h("span", { class: "badge " + (v.state === "default" ? "text-bg-success" : "text-bg-secondary"), text: M.t("models.state." + v.state) })]),
          M.h("td", { class: "small", text: metrics(v) }), M.h("td", { class: "small text-break-all", text: v.dataset_id || "—" }),
          M.h("td", { text: M.when(v.created_at) }), M.h("td", {}, [action]),
        ]);
      }) : [M.h("tr", {}, [M.h("td", { colspan: 6, text: M.t("common.none") })])]);
    } catch (err) { M.showError(error, err.status === 404 && err.code === "not_found" ? M.t("common.unavailable") : err); }
  }

  document.getElementById("rollback").addEventListener("click", async function () {
    M.hide(error); M.hide(ok); box.classList.add("d-none");
    const reason = document.getElementById("reason").value.trim();
    try {
      const v = await M.api("POST", base() + "/rollback", { json: { reason: reason || null } });
      M.show(ok, M.t("models.rolled_back", { version: v.version }), "success");
      actionForm.reset();
    } catch (err) { M.showError(error, err); }
    load();
  });
  organ.addEventListener("change", function () { M.hide(error); M.hide(ok); box.classList.add("d-none"); load(); });
  load();
})();
