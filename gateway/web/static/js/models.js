/* Models: an organ's versions with their metrics and cards; the reference set promotions are compared on;
   promote (the reference-set comparison is shown, a refused promotion can be forced with a reason) and roll
   back. */
"use strict";
(function () {
  const M = window.MedSeg;
  const organ = document.getElementById("organ"), tbody = document.querySelector("#versions-table tbody");
  const error = document.getElementById("models-error"), ok = document.getElementById("models-ok");
  const base = function () { return "/api/v1/models/" + encodeURIComponent(organ.value); };
  const referenceSets = JSON.parse(document.getElementById("reference-sets").textContent);

  // --- metrics and the card, as people read them ---------------------------------------------------------
  const KNOWN_METRICS = ["val_dice", "best_epoch", "val_loss"];

  /** The threshold with the best Dice in {"0.2": dice, ...}, or null. */
  function bestThreshold(perThreshold) {
    if (!perThreshold || typeof perThreshold !== "object") return null;
    const entries = Object.entries(perThreshold).filter(function (e) { return typeof e[1] === "number"; });
    if (!entries.length) return null;
    return entries.reduce(function (a, b) { return b[1] > a[1] ? b : a; })[0];
  }

  /** "Dice 0.981 · best epoch 19 · loss 0.017": the numbers of the version's metrics, named in words. */
  function metrics(v) {
    const m = v.metrics || {};
    const keys = KNOWN_METRICS.filter(function (k) { return k in m; })
      .concat(Object.keys(m).filter(function (k) { return KNOWN_METRICS.indexOf(k) < 0; }));
    const parts = keys.filter(function (k) { return typeof m[k] === "number"; }).map(function (k) {
      const name = M.t("models.metric." + k) !== "models.metric." + k ? M.t("models.metric." + k) : k.replace(/_/g, " ");
      return name + " " + M.number(m[k]);
    });
    const best = bestThreshold(m.val_dice_at_threshold);
    if (best !== null) parts.push(M.t("models.metric.best_threshold") + " " + best);
    return parts.slice(0, 4).join(" · ") || "—";
  }

  /** The card's facts as a definition list; sections the card does not have are left out. */
  function cardSummary(v) {
    const c = v.card || {}, m = Object.keys(v.metrics || {}).length ? v.metrics : (c.metrics || {});
    const rows = [];
    const add = function (key, value, note) {
      if (value === null || value === undefined || value === "") return;
      rows.push(M.h("dt", { class: "col-sm-4", text: M.t("models.card." + key) }));
      rows.push(M.h("dd", { class: "col-sm-8", "data-field": key }, [value,
        note ? M.h("div", { class: "small text-body-secondary", text: note }) : null]));
    };
    add("architecture", c.architecture);
    if (typeof c.parameters === "number") add("parameters", c.parameters.toLocaleString(document.documentElement.lang));
    const training = c.training || {};
    if (typeof training.epochs === "number" && typeof training.seconds === "number") {
      add("training", M.t("models.card.training_value", { epochs: training.epochs, minutes: (training.seconds / 60).toFixed(1) }));
    }
    if (typeof m.val_dice === "number") {
      add("validation", M.t("models.card.validation_value", { dice: M.number(m.val_dice), epoch: M.number(m.best_epoch), loss: M.number(m.val_loss) }));
    }
    const perThreshold = m.val_dice_at_threshold;
    if (perThreshold && typeof perThreshold === "object") {
      add("per_threshold", Object.keys(perThreshold).sort().map(function (k) { return k + ": " + M.number(perThreshold[k]); }).join(" · "));
    }
    const split = c.split || {};
    if (split.folds === 1) {  // a final model (medseg train --folds 1): nothing held out
      add("split", M.t("models.card.split_all"));
    } else if (typeof split.fold === "number" && typeof split.folds === "number") {
      add("split", M.t("models.card.split_value", { fold: split.fold, folds: split.folds }), typeof split.grouping === "string" ? split.grouping : null);
    }
    const cv = c.cross_validation || {};
    if (typeof cv.mean_val_dice === "number" && Array.isArray(cv.folds)) {
      add("cv", M.t("models.card.cv_value", { mean: M.number(cv.mean_val_dice), std: M.number(cv.std_val_dice), n: cv.folds.length }));
    }
    const runtime = c.runtime || {};
    if (runtime.name && typeof runtime.ms_per_input === "number") {
      add("runtime", M.t("models.card.runtime_value", { name: runtime.name, ms: runtime.ms_per_input }), typeof runtime.note === "string" ? runtime.note : null);
    }
    const dataset = c.dataset || {};
    if (typeof dataset.pairs === "number") {
      add("dataset", M.t("models.card.dataset_value", { pairs: dataset.pairs, train: M.number(dataset.train), validation: M.number(dataset.validation) }),
        dataset.hash ? dataset.hash.slice(0, 12) + "…" : null);
    }
    add("commit", c.commit || v.commit);
    add("created", c.created_at ? M.when(c.created_at) : null);
    return rows.length ? M.h("dl", { class: "row mb-0" }, rows) : M.h("p", { class: "mb-0", text: M.t("models.card_empty") });
  }

  const cardModal = document.getElementById("card-modal");
  function showCard(v) {
    document.getElementById("card-title").textContent = M.t("models.card_title", { organ: M.organ(v.organ), version: v.version });
    document.getElementById("card-body").replaceChildren(cardSummary(v));
    window.bootstrap.Modal.getOrCreateInstance(cardModal).show();
  }

  // --- promotion -------------------------------------------------------------------------------------------
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

  function row(v) {
    const actions = [M.h("button", {
      type: "button", class: "btn btn-sm btn-outline-secondary me-1", "data-action": "card", text: M.t("models.card"),
      onclick: function () { showCard(v); },
    })];
    if (v.state === "candidate") {
      actions.push(M.h("button", {
        type: "button", class: "btn btn-sm btn-primary", "data-action": "promote", text: M.t("models.promote"),
        onclick: function () { promote(v, this); },
      }));
    }
    return M.h("tr", { "data-version": v.version }, [
      M.h("td", {}, [M.h("strong", { text: v.version })]),
      M.h("td", {}, [M.h("span", { class: "badge " + (v.state === "default" ? "text-bg-success" : "text-bg-secondary"), text: M.t("models.state." + v.state) })]),
      M.h("td", { class: "small", "data-field": "metrics", text: metrics(v) }),
      M.h("td", { class: "small text-break-all", text: v.dataset_id || "—" }),
      M.h("td", { text: M.when(v.created_at) }), M.h("td", { class: "text-nowrap" }, actions),
    ]);
  }

  async function load() {
    const asked = organ.value;
    try {
      const body = await M.api("GET", base() + "/versions");
      if (organ.value !== asked) return; // the organ changed while this was under way: its own load shows it
      defaultVersion = body.default_version;
      tbody.replaceChildren.apply(tbody, body.versions.length ? body.versions.map(row)
        : [M.h("tr", {}, [M.h("td", { colspan: 6, text: M.t("common.none") })])]);
    } catch (err) { M.showError(error, err); }
  }

  // --- the reference set -------------------------------------------------------------------------------------
  const referenceForm = document.getElementById("reference-form");
  const referenceSelect = document.getElementById("reference-dataset");
  let datasets = [];

  function showReference() {
    const ref = referenceSets[organ.value];
    const current = document.getElementById("reference-current");
    if (!ref) { current.textContent = M.t("models.reference_none"); return; }
    const d = datasets.find(function (x) { return x.id === ref.dataset_id; });
    const who = ref.set_by.split(":").slice(2).join(":") || ref.set_by;  // "user:7:a@b" → the e-mail
    current.textContent = M.t("models.reference_current", {
      name: d ? d.name : ref.dataset_id, pairs: d ? d.pair_count : "—", when: M.when(ref.set_at), who: who,
    });
  }

  async function loadReference() {
    const asked = organ.value;
    let found;
    try {
      found = (await M.api("GET", "/api/v1/datasets?organ=" + encodeURIComponent(asked))).datasets;
    } catch (err) { found = []; M.showError(error, err); }
    if (organ.value !== asked) return; // as in load(): a later organ's answer is the one to show
    datasets = found;
    const ref = referenceSets[organ.value];
    referenceSelect.replaceChildren.apply(referenceSelect, datasets.length ? datasets.map(function (d) {
      return M.h("option", { value: d.id, selected: ref && ref.dataset_id === d.id }, [d.name + " (" + d.pair_count + ")"]);
    }) : [M.h("option", { value: "" }, [M.t("models.reference_no_datasets")])]);
    referenceSelect.disabled = !datasets.length;
    document.getElementById("reference-save").disabled = !datasets.length;
    showReference();
  }

  referenceForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    M.hide(error); M.hide(ok);
    if (!referenceSelect.value) return;
    const button = document.getElementById("reference-save");
    M.busy(button, true);
    try {
      const ref = await M.api("PUT", base() + "/reference-set", { json: { dataset_id: referenceSelect.value } });
      referenceSets[ref.organ] = { dataset_id: ref.dataset_id, set_by: ref.set_by, set_at: ref.set_at };
      showReference();
      const d = datasets.find(function (x) { return x.id === ref.dataset_id; });
      M.show(ok, M.t("models.reference_saved", { organ: M.organ(ref.organ), name: d ? d.name : ref.dataset_id }), "success");
    } catch (err) { M.showError(error, err); }
    M.busy(button, false);
  });

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
  organ.addEventListener("change", function () { M.hide(error); M.hide(ok); box.classList.add("d-none"); load(); loadReference(); });
  load();
  loadReference();
})();
