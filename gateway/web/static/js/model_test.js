/* Model test: images + labels (or a dataset) → per-image Dice/IoU/HD95 with overlays, Dice per threshold, a
   feedback link per image; and the paired comparison of two stored tests (two versions on the same cases).
   A 3-D organ takes volumes (NIfTI, or a zip of one DICOM series) and NIfTI label volumes, no dataset; its
   results add Dice per label (a column each) and the means per label. */
"use strict";
(function () {
  const M = window.MedSeg;
  const form = document.getElementById("test-form");
  const error = document.getElementById("test-error");
  const compareForm = document.getElementById("compare-form");
  const compareError = document.getElementById("compare-error");
  const IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"];
  const VOLUME_TYPES = [".nii", ".nii.gz", ".zip"];
  const organ = function () { return form.elements.organ.value; };
  // getAttribute, not form.dataset: the form's control named "dataset" shadows that property
  const kinds = JSON.parse(form.getAttribute("data-organs") || "{}");
  const limit = Number(form.getAttribute("data-limit"));
  const volumetric = function () { return (kinds[organ()] || {}).dimensions === 3; };
  const accepts = { images: form.elements.images.accept, labels: form.elements.labels.accept };

  function labelName(label) { return M.t("label." + label) !== "label." + label ? M.t("label." + label) : label; }

  /** A 3-D organ's inputs take volumes and its tests no dataset (datasets hold 2-D pairs); a 2-D organ's as
      the page has them. */
  function fitInputs() {
    const volumes = volumetric();
    // ".gz" too: a file chooser may match only the last extension of ".nii.gz" (checkFile checks the whole)
    form.elements.images.accept = volumes ? VOLUME_TYPES.concat(".gz").join(",") : accepts.images;
    form.elements.labels.accept = volumes ? VOLUME_TYPES.concat(".gz").join(",") : accepts.labels;
    document.getElementById("volumes-help").classList.toggle("d-none", !volumes);
    document.getElementById("dataset-field").classList.toggle("d-none", volumes);
    if (volumes) form.elements.dataset.value = "";
  }

  const versionsTurn = M.latest(), datasetsTurn = M.latest();
  async function loadVersions() {
    const selects = [form.elements.version, form.elements.version_b], mine = versionsTurn();
    try {
      const body = await M.api("GET", "/api/v1/models/" + encodeURIComponent(organ()) + "/versions");
      if (!mine()) return;
      selects.forEach(function (select) { select.replaceChildren(select.options[0]); });
      body.versions.forEach(function (v) {
        selects.forEach(function (select) { select.append(M.h("option", { value: v.version }, [M.versionLabel(v)])); });
      });
    } catch (_) { /* registry not offered: the current default is tested */ }
  }

  async function loadDatasets() {
    const select = form.elements.dataset, mine = datasetsTurn();
    try {
      const body = await M.api("GET", "/api/v1/datasets?organ=" + encodeURIComponent(organ()));
      if (!mine()) return;
      select.replaceChildren(select.options[0]);
      body.datasets.forEach(function (d) { select.append(M.h("option", { value: d.id }, [d.name + " (" + d.pair_count + ")"])); });
    } catch (_) { /* listing failed: uploads still work */ }
  }

  /** The feedback form, filled in with this evaluated image (its test, case and model version). */
  function feedbackLink(result, c) {
    if (!result.id || c.id === undefined) return "—";
    const q = new URLSearchParams({ organ: result.organ, version: result.model_version, evaluation: result.id, case: c.id, image: c.name });
    return M.h("a", { class: "small", href: "/feedback?" + q, "data-action": "feedback", text: M.t("model_test.feedback") });
  }

  function render(result) {
    const cases = result.cases || (result.images || []).map(function (i) { return { name: i.filename, dice: i.dice, iou: i.iou }; });
    const version = result.model_version || (result.model && result.model.version) || "";
    document.getElementById("test-heading").textContent = M.organ(result.organ) + " · v" + version;
    const best = result.best_threshold !== undefined ? result.best_threshold
      : result.per_threshold.reduce(function (a, b) { return b.mean_dice > a.mean_dice ? b : a; }).threshold;
    const labels = Object.keys(result.per_label || {});  // a 3-D organ of several labels: its labels, in order
    document.getElementById("test-summary").textContent =
      M.t("model_test.mean_dice") + " " + result.mean_dice.toFixed(3) +
      (result.std_dice !== undefined ? " ± " + result.std_dice.toFixed(3) : "") + " · " +
      M.t("model_test.mean_iou") + " " + result.mean_iou.toFixed(3) + " (" + M.t("model_test.at_threshold", { t: result.threshold }) + ")" +
      labels.map(function (label) {
        const m = result.per_label[label];
        return " · " + M.t("model_test.label_means", {
          label: labelName(label), dice: m.mean_dice.toFixed(3), iou: m.mean_iou.toFixed(3),
          hd95: typeof m.mean_hd95_mm === "number" ? m.mean_hd95_mm.toFixed(1) + " " + M.t("unit.mm") : "—",
        });
      }).join("");
    M.plot(document.getElementById("dice-plot"), [{
      label: "Dice",
      points: result.per_threshold.map(function (p) { return [p.threshold, p.mean_dice, Math.abs(p.threshold - best) < 1e-9]; }),
    }], { yMin: 0, yMax: 1, xTicks: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], label: M.t("model_test.dice_plot") + " (" + M.t("model_test.best") + " " + best + ")" });
    // a column of Dice per label after the mean's (the header first: app.js labels the cells from it); the
    // wider table then takes the whole row, under the plot
    document.getElementById("cases-column").classList.toggle("col-lg-6", !labels.length);
    const diceHeading = document.getElementById("dice-heading");
    document.querySelectorAll("#cases-table thead th[data-label-dice]").forEach(function (th) { th.remove(); });
    diceHeading.textContent = labels.length ? M.t("model_test.mean_dice_labels") : "Dice";
    diceHeading.after.apply(diceHeading, labels.map(function (label) {
      return M.h("th", { scope: "col", "data-label-dice": label, text: M.t("model_test.dice_of", { label: labelName(label) }) });
    }));
    const tbody = document.querySelector("#cases-table tbody");
    tbody.replaceChildren.apply(tbody, cases.map(function (c) {
      const overlay = c.overlay_url ? overlayButton(c.overlay_url, c.name,
        M.h("img", { class: "overlay-img", src: c.overlay_url, alt: M.t("model_test.overlays") + ": " + c.name })) : "—";
      const perLabel = labels.map(function (label) {
        const s = (c.per_label || {})[label];
        return M.h("td", { "data-field": "dice-" + label, text: s ? s.dice.toFixed(3) : "—" });
      });
      return M.h("tr", { "data-case": c.name }, [
        M.h("td", { class: "name-cell", text: c.name }), M.h("td", { "data-field": "dice", text: c.dice.toFixed(3) }),
      ].concat(perLabel, [
        M.h("td", { text: c.iou.toFixed(3) }), M.h("td", { "data-field": "hd95", text: hd95(c) }),
        M.h("td", {}, [overlay]), M.h("td", {}, [feedbackLink(result, c)]),
      ]));
    }));
    document.getElementById("test-result").classList.remove("d-none");
  }

  /** HD95 in millimetres when the image carried its pixel spacing (a DICOM; a volume: the mean over its
      labels), else in pixels. */
  function hd95(c) {
    if (typeof c.hd95_mm === "number") return c.hd95_mm.toFixed(1) + " " + M.t("unit.mm");
    return typeof c.hd95 === "number" ? c.hd95.toFixed(1) + " " + M.t("unit.px") : "—";
  }

  // --- a case's overlays, large and zoomable (static/js/viewer2d.js), with what each colour means ----------
  const overlayDialog = new M.ViewerDialog(document.getElementById("overlay-viewer"), {});
  // the colours of gateway/service/scoring.py's overlay_png
  const OVERLAY_LEGEND = [
    { key: "label", colour: "#00c83c", text: M.t("model_test.legend_label") },
    { key: "prediction", colour: "#e61e1e", text: M.t("model_test.legend_prediction") },
    { key: "tp", colour: "#ffdc00", text: M.t("model_test.legend_tp") },
    { key: "fp", colour: "#e61e1e", text: M.t("model_test.legend_fp") },
    { key: "fn", colour: "#1e5aff", text: M.t("model_test.legend_fn") },
  ];

  function overlayButton(url, name, picture) {
    return M.h("button", {
      type: "button", class: "btn p-0 border-0", "data-action": "overlay", title: M.t("model_test.open_overlay", { name: name }),
      onclick: function () {
        overlayDialog.open(M.t("model_test.overlay_title", { name: name }), function () {
          return Promise.resolve({ image: url, masks: [], legend: OVERLAY_LEGEND });
        });
      },
    }, [picture]);
  }

  const sleep = function (ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); };

  /** Test one version: submitted as a background job (Prefer: respond-async), followed until done with the
      cases done shown on the button, then the kept evaluation. A long test holds no request open. */
  async function runTest(data, version, button) {
    const body = new FormData();
    for (const [name, value] of data.entries()) body.append(name, value);
    if (version) body.set("version", version);
    let job;
    try {
      job = await M.api("POST", "/api/v1/evaluations", { form: body, headers: { Prefer: "respond-async" } });
    } catch (err) {
      if (err.status !== 404 && err.status !== 405) throw err;
      return await M.api("POST", "/api/v1/evaluate", { form: body }); // the v1 contract's evaluate
    }
    if (!job.url) return job; // a gateway that answered the evaluation itself
    while (job.status === "queued" || job.status === "running") {
      button.textContent = M.t("model_test.progress", { done: job.cases_done, total: job.case_count });
      await sleep(job.status === "queued" ? 500 : 1000);
      job = await M.api("GET", job.url);
    }
    if (job.status !== "done") throw new M.ApiError(409, job.error.code, job.error.message, {});
    return await M.api("GET", job.evaluation_url);
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    M.hide(error);
    const images = Array.from(form.elements.images.files), labels = Array.from(form.elements.labels.files);
    const dataset = volumetric() ? "" : form.elements.dataset.value;
    const types = volumetric() ? VOLUME_TYPES : IMAGE_TYPES;
    const data = new FormData();
    data.append("organ", organ());
    if (dataset && !images.length) {
      data.append("dataset_id", dataset);
    } else {
      if (!images.length || !labels.length) { M.showError(error, M.t("model_test.help")); return; }
      for (const f of images.concat(labels)) {
        const problem = M.checkFile(f, types, limit);
        if (problem) { M.showError(error, problem); return; }
      }
      images.forEach(function (f) { data.append("images", f); });
      labels.forEach(function (f) { data.append("labels", f); });
    }
    const button = form.querySelector("button[type=submit]");
    M.busy(button, true, M.t("model_test.running"));
    try {
      const a = await runTest(data, form.elements.version.value, button);
      render(a);
      if (form.elements.version_b.value) {
        // the same cases through the second version, then the paired comparison of the two tests
        const b = await runTest(data, form.elements.version_b.value, button);
        await loadEvaluations(a.id, b.id);
        await compare(a.id, b.id);
      } else {
        await loadEvaluations(a.id);
      }
    } catch (err) { M.showError(error, err); } finally { M.busy(button, false); }
  });

  // --- paired comparison of two stored tests ------------------------------------------------------------
  function evaluationLabel(e) {
    return M.t("compare.option", {
      version: e.model_version, cases: e.case_count, dice: e.mean_dice.toFixed(3), when: M.when(e.created_at), id: e.id.slice(0, 8),
    });
  }

  let evaluations = [];  // the organ's stored tests, newest first
  const caseNames = {};   // evaluation id → its case names (a promise), fetched when needed

  function namesOf(id) {
    if (!caseNames[id]) {
      caseNames[id] = M.api("GET", "/api/v1/evaluations/" + encodeURIComponent(id)).then(function (d) {
        return new Set((d.cases || []).map(function (c) { return c.name; }));
      });
    }
    return caseNames[id];
  }

  /** The newest other test that shares cases with `a`: one on the same dataset, else (uploads carry no
      dataset) one of the latest tests with an image of the same file name. Null when none does. */
  async function partnerOf(a) {
    const others = evaluations.filter(function (e) { return e.id !== a.id; });
    const sameData = others.find(function (e) { return a.dataset_hash && e.dataset_hash === a.dataset_hash; });
    if (sameData) return sameData;
    const mine = await namesOf(a.id);
    for (const e of others.slice(0, 10)) {
      const theirs = await namesOf(e.id);
      if (Array.from(mine).some(function (name) { return theirs.has(name); })) return e;
    }
    return null;
  }

  /** Test B: a test sharing cases with test A, or (saying that none does) the next one. */
  async function choosePartner() {
    const hint = document.getElementById("compare-hint");
    const a = evaluations.find(function (e) { return e.id === compareForm.elements.eval_a.value; });
    hint.classList.add("d-none");
    if (!a || evaluations.length < 2) return;
    let partner = null;
    try { partner = await partnerOf(a); } catch (_) { /* a test vanished: keep the order */ }
    if (partner) {
      compareForm.elements.eval_b.value = partner.id;
    } else {
      compareForm.elements.eval_b.value = evaluations.find(function (e) { return e.id !== a.id; }).id;
      hint.textContent = M.t("compare.none_shared");
      hint.classList.remove("d-none");
    }
  }

  async function loadEvaluations(preferA, preferB) {
    const a = compareForm.elements.eval_a, b = compareForm.elements.eval_b;
    try {
      const body = await M.api("GET", "/api/v1/evaluations?organ=" + encodeURIComponent(organ()));
      evaluations = body.evaluations || [];
      [a, b].forEach(function (select) {
        select.replaceChildren.apply(select, evaluations.map(function (e) { return M.h("option", { value: e.id }, [evaluationLabel(e)]); }));
      });
      // newest first: by default the latest test (A) against the newest one that shares its cases (B)
      if (evaluations.length) a.value = preferA || evaluations[0].id;
      if (preferB) b.value = preferB;
      else await choosePartner();
    } catch (err) {
      a.replaceChildren(); b.replaceChildren();
      M.showError(compareError, err);
    }
  }

  function signed(x) { return (x > 0 ? "+" : x < 0 ? "−" : "±") + Math.abs(x).toFixed(3); }

  function overlayFigure(detail, which, name) {
    const c = (detail.cases || []).find(function (x) { return x.name === name; });
    const caption = M.t("compare.side", { which: which }) + " · v" + detail.model_version + (c ? " · Dice " + c.dice.toFixed(3) : "");
    return M.h("figure", { class: "col-md-6 mb-0", "data-side": which }, [
      c ? overlayButton(c.overlay_url, name + " · " + which, M.h("img", { class: "overlay-img compare-overlay", src: c.overlay_url,
        alt: M.t("compare.overlay_alt", { name: name, which: which, version: detail.model_version }) })) : "—",
      M.h("figcaption", { class: "small text-body-secondary", text: caption }),
    ]);
  }

  async function compare(aId, bId) {
    M.hide(compareError);
    const result = document.getElementById("compare-result");
    if (!aId || !bId) { M.showError(compareError, M.t("compare.need_two")); return; }
    if (aId === bId) { M.showError(compareError, M.t("compare.same_choice")); return; }
    const button = compareForm.querySelector("button[type=submit]");
    M.busy(button, true);
    try {
      const q = new URLSearchParams({ a: aId, b: bId });
      const [cmp, detailA, detailB] = await Promise.all([
        M.api("GET", "/api/v1/evaluations/compare?" + q),
        M.api("GET", "/api/v1/evaluations/" + encodeURIComponent(aId)),
        M.api("GET", "/api/v1/evaluations/" + encodeURIComponent(bId)),
      ]);
      document.getElementById("compare-summary").textContent = M.t("compare.summary", {
        a: "v" + cmp.a.model_version, b: "v" + cmp.b.model_version, wins: cmp.wins, losses: cmp.losses, ties: cmp.ties,
        mean: signed(cmp.mean_difference),
      });
      const note = document.getElementById("compare-note");
      const only = [];
      if (cmp.only_in_a.length) only.push(M.t("compare.only_in", { which: "A", names: cmp.only_in_a.join(", ") }));
      if (cmp.only_in_b.length) only.push(M.t("compare.only_in", { which: "B", names: cmp.only_in_b.join(", ") }));
      if (only.length) { // uploads carry no dataset hash: what matters is whether every image is in both
        note.textContent = [M.t("compare.different_data", { n: cmp.cases.length })].concat(only).join(" ");
        note.classList.remove("d-none");
      } else { note.classList.add("d-none"); }
      const winner = { win: "A", loss: "B", tie: M.t("compare.tie") };
      const tbody = document.querySelector("#compare-table tbody");
      tbody.replaceChildren.apply(tbody, cmp.cases.map(function (c) {
        return M.h("tr", { "data-case": c.case, "data-outcome": c.outcome }, [
          M.h("th", { scope: "row", class: "name-cell fw-normal", text: c.case }),
          M.h("td", { "data-field": "dice_a", text: c.dice_a.toFixed(3) }),
          M.h("td", { "data-field": "dice_b", text: c.dice_b.toFixed(3) }),
          M.h("td", { "data-field": "difference", text: signed(c.difference) }),
          M.h("td", { "data-field": "winner", text: winner[c.outcome] }),
        ]);
      }));
      const overlays = document.getElementById("compare-overlays");
      overlays.replaceChildren.apply(overlays, cmp.cases.map(function (c) {
        return M.h("div", { class: "row g-2", "data-case": c.case }, [
          M.h("h4", { class: "h6 col-12 mb-0 text-break-all", text: c.case }),
          overlayFigure(detailA, "A", c.case), overlayFigure(detailB, "B", c.case),
        ]);
      }));
      result.classList.remove("d-none");
    } catch (err) {
      result.classList.add("d-none");
      M.showError(compareError, err);
    } finally { M.busy(button, false); }
  }

  compareForm.elements.eval_a.addEventListener("change", choosePartner);
  compareForm.addEventListener("submit", function (event) {
    event.preventDefault();
    compare(compareForm.elements.eval_a.value, compareForm.elements.eval_b.value);
  });
  form.elements.organ.addEventListener("change", function () { fitInputs(); loadVersions(); loadDatasets(); loadEvaluations(); });
  fitInputs();
  loadVersions();
  loadDatasets();
  loadEvaluations();
})();
