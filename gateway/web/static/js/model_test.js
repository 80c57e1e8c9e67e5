/* Model test: images + labels (or a dataset) → per-image Dice/IoU/HD95 with overlays, Dice per threshold. */
"use strict";
(function () {
  const M = window.MedSeg;
  const form = document.getElementById("test-form");
  const error = document.getElementById("test-error");
  const IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"];

  async function loadVersions() {
    const select = form.elements.version;
    select.replaceChildren(select.options[0]);
    try {
      const body = await M.api("GET", "/api/v1/models/" + encodeURIComponent(form.elements.organ.value) + "/versions");
      body.versions.forEach(function (v) {
        select.append(M.h("option", { value: v.version }, [v.version + " (" + v.state + ")"]));
      });
    } catch (_) { /* registry not offered: the current default is tested */ }
  }

  async function loadDatasets() {
    const select = form.elements.dataset;
    select.replaceChildren(select.options[0]);
    try {
      const body = await M.api("GET", "/api/v1/datasets?organ=" + encodeURIComponent(form.elements.organ.value));
      body.datasets.forEach(function (d) { select.append(M.h("option", { value: d.id }, [d.name + " (" + d.pair_count + ")"])); });
    } catch (_) { /* listing failed: uploads still work */ }
  }

  function render(result) {
    const cases = result.cases || (result.images || []).map(function (i) { return { name: i.filename, dice: i.dice, iou: i.iou }; });
    const version = result.model_version || (result.model && result.model.version) || "";
    document.getElementById("test-heading").textContent = result.organ + " · v" + version;
    const best = result.best_threshold !== undefined ? result.best_threshold
      : result.per_threshold.reduce(function (a, b) { return b.mean_dice > a.mean_dice ? b : a; }).threshold;
    document.getElementById("test-summary").textContent =
      M.t("model_test.mean_dice") + " " + result.mean_dice.toFixed(3) +
      (result.std_dice !== undefined ? " ± " + result.std_dice.toFixed(3) : "") + " · " +
      M.t("model_test.mean_iou") + " " + result.mean_iou.toFixed(3) + " (" + M.t("model_test.at_threshold", { t: result.threshold }) + ")";
    M.plot(document.getElementById("dice-plot"), [{
      label: "Dice",
      points: result.per_threshold.map(function (p) { return [p.threshold, p.mean_dice, Math.abs(p.threshold - best) < 1e-9]; }),
    }], { yMin: 0, yMax: 1, xTicks: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], label: M.t("model_test.dice_plot") + " (" + M.t("model_test.best") + " " + best + ")" });
    const tbody = document.querySelector("#cases-table tbody");
    tbody.replaceChildren.apply(tbody, cases.map(function (c) {
      const overlay = c.overlay_url ? M.h("img", { class: "overlay-img", src: c.overlay_url, alt: M.t("model_test.overlays") + ": " + c.name }) : "—";
      return M.h("tr", {}, [
        M.h("td", { class: "text-break-all", text: c.name }), M.h("td", { text: c.dice.toFixed(3) }),
        M.h("td", { text: c.iou.toFixed(3) }), M.h("td", { text: typeof c.hd95 === "number" ? c.hd95.toFixed(1) : "—" }),
        M.h("td", {}, [overlay]),
      ]);
    }));
    document.getElementById("test-result").classList.remove("d-none");
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    M.hide(error);
    const images = Array.from(form.elements.images.files), labels = Array.from(form.elements.labels.files);
    const dataset = form.elements.dataset.value;
    const data = new FormData();
    data.append("organ", form.elements.organ.value);
    if (form.elements.version.value) data.append("version", form.elements.version.value);
    if (dataset && !images.length) {
      data.append("dataset_id", dataset);
    } else {
      if (!images.length || !labels.length) { M.showError(error, M.t("model_test.help")); return; }
      for (const f of images.concat(labels)) {
        const problem = M.checkFile(f, IMAGE_TYPES, Number(form.dataset.limit));
        if (problem) { M.showError(error, problem); return; }
      }
      images.forEach(function (f) { data.append("images", f); });
      labels.forEach(function (f) { data.append("labels", f); });
    }
    const button = form.querySelector("button[type=submit]");
    M.busy(button, true, M.t("model_test.running"));
    try {
      let result;
      try {
        result = await M.api("POST", "/api/v1/evaluations", { form: data });
      } catch (err) {
        if (err.status !== 404 && err.status !== 405) throw err;
        result = await M.api("POST", "/api/v1/evaluate", { form: data }); // the v1 contract's evaluate
      }
      render(result);
    } catch (err) { M.showError(error, err); } finally { M.busy(button, false); }
  });
  form.elements.organ.addEventListener("change", function () { loadVersions(); loadDatasets(); });
  loadVersions();
  loadDatasets();
})();
