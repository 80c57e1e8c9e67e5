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

  function showComparison(p) {
    const box = document.getElementById("comparison");
    const c = p.candidate_evaluation, d = p.default_evaluation;
    if (!c && !d) { box.classList.add("d-none"); return; }
    document.getElementById("comparison-text").textContent =
      (c ? "v" + c.model_version + ": Dice " + c.mean_dice.toFixed(3) : "") +
      (d ? " · v" + d.model_version + ": Dice " + d.mean_dice.toFixed(3) : "") +
      (typeof p.dice_drop === "number" ? " · Δ " + p.dice_drop.toFixed(3) : "") + (p.forced ? " · " + M.t("models.force") : "");
    box.classList.remove("d-none");
  }

  async function promote(v) {
    M.hide(error); M.hide(ok);
    const reason = document.getElementById("reason").value.trim();
    try {
      const p = await M.api("POST", base() + "/versions/" + encodeURIComponent(v.version) + "/promote",
        { json: { force: document.getElementById("force").checked, reason: reason || null } });
      showComparison(p);
      M.show(ok, M.t("common.saved"), "success");
    } catch (err) { M.showError(error, err); }
    load();
  }

  async function load() {
    try {
      const body = await M.api("GET", base() + "/versions");
      tbody.replaceChildren.apply(tbody, body.versions.length ? body.versions.map(function (v) {
        const card = M.h("details", {}, [M.h("summary", { text: M.t("models.card") }),
          M.h("pre", { class: "small mb-0", text: JSON.stringify(v.card, null, 2) })]);
        const action = v.state === "candidate" ? M.h("button", {
          type: "button", class: "btn btn-sm btn-primary", text: M.t("models.promote"), onclick: function () { promote(v); },
        }) : "";
        return M.h("tr", { "data-version": v.version }, [
          M.h("td", {}, [M.h("strong", { text: v.version }), card]),
          M.h("td", {}, [M.h("span", { class: "badge " + (v.state === "default" ? "text-bg-success" : "text-bg-secondary"), text: v.state })]),
          M.h("td", { class: "small", text: metrics(v) }), M.h("td", { class: "small text-break-all", text: v.dataset_id || "—" }),
          M.h("td", { text: M.when(v.created_at) }), M.h("td", {}, [action]),
        ]);
      }) : [M.h("tr", {}, [M.h("td", { colspan: 6, text: M.t("common.none") })])]);
    } catch (err) { M.showError(error, err.status === 404 && err.code === "not_found" ? M.t("common.unavailable") : err); }
  }

  document.getElementById("rollback").addEventListener("click", async function () {
    M.hide(error); M.hide(ok);
    const reason = document.getElementById("reason").value.trim();
    try {
      const v = await M.api("POST", base() + "/rollback", { json: { reason: reason || null } });
      M.show(ok, M.t("models.rollback") + ": v" + v.version, "success");
    } catch (err) { M.showError(error, err); }
    load();
  });
  organ.addEventListener("change", load);
  load();
})();
