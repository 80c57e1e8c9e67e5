/* Training: start a job on a dataset, watch its progress (loss and validation Dice per epoch), cancel. */
"use strict";
(function () {
  const M = window.MedSeg;
  const form = document.getElementById("train-form"), jobs = document.getElementById("jobs");
  const error = document.getElementById("jobs-error");
  const FINISHED = ["succeeded", "failed", "cancelled"];
  let timer = null;

  const datasetsTurn = M.latest();
  async function loadDatasets() {
    const select = form.elements.dataset, mine = datasetsTurn();
    try {
      const body = await M.api("GET", "/api/v1/datasets?organ=" + encodeURIComponent(form.elements.organ.value));
      if (!mine()) return;
      select.replaceChildren();
      body.datasets.forEach(function (d) { select.append(M.h("option", { value: d.id }, [d.name + " (" + d.pair_count + ")"])); });
    } catch (err) { M.showError(error, err); }
  }

  function job(j) {
    const progress = j.progress || [];
    const plotBox = M.h("div", { "data-field": "curve" });
    if (progress.length) {
      M.plot(plotBox, [
        { label: M.t("training.loss"), points: progress.map(function (p) { return [p.epoch, p.loss]; }) },
        { label: M.t("training.val_dice"), cls: "second", points: progress.filter(function (p) { return typeof p.val_dice === "number"; }).map(function (p) { return [p.epoch, p.val_dice]; }) },
      ], { label: M.t("training.loss") + " / " + M.t("training.val_dice"), xLabel: M.t("training.epoch") });
      plotBox.append(M.h("p", { class: "small mb-0" }, [
        M.h("span", { class: "legend-swatch" }), " " + M.t("training.loss") + "  ",
        M.h("span", { class: "legend-swatch second" }), " " + M.t("training.val_dice"),
      ]));
    }
    const cancel = FINISHED.indexOf(j.status) >= 0 ? null : M.h("button", {
      type: "button", class: "btn btn-sm btn-outline-danger", text: M.t("training.cancel"), "data-focus-key": "cancel-" + j.id,
      onclick: async function () {
        try { await M.api("POST", "/api/v1/training/jobs/" + encodeURIComponent(j.id) + "/cancel"); } catch (err) { M.showError(error, err); }
        loadJobs();
      },
    });
    const last = progress[progress.length - 1];
    const number = function (x, digits) { return typeof x === "number" ? x.toFixed(digits) : "—"; };
    const latest = last ? M.h("dl", { class: "row small mb-1", "data-field": "latest" }, [
      M.h("dt", { class: "col-sm-3", text: M.t("training.epoch") }),
      M.h("dd", { class: "col-sm-9 mb-0", "data-field": "epoch", text: last.epoch + " / " + j.epochs }),
      M.h("dt", { class: "col-sm-3", text: M.t("training.loss") }),
      M.h("dd", { class: "col-sm-9 mb-0", "data-field": "loss", text: number(last.loss, 4) }),
      M.h("dt", { class: "col-sm-3", text: M.t("training.val_dice") }),
      M.h("dd", { class: "col-sm-9 mb-0", "data-field": "val_dice", text: number(last.val_dice, 3) }),
    ]) : null;
    return M.h("article", { class: "card", "data-job-id": j.id, "data-status": j.status }, [M.h("div", { class: "card-body" }, [
      M.h("div", { class: "d-flex justify-content-between gap-2" }, [
        M.h("div", {}, [M.h("strong", { text: M.organ(j.organ) + " · " + (j.arch || "") }), " ",
          M.h("span", { class: "badge text-bg-secondary", "data-field": "status", text: M.t("training.status." + j.status) })]),
        cancel,
      ]),
      M.h("p", { class: "small text-body-secondary mb-1", text: M.when(j.created_at) + (j.dataset_id ? " · " + j.dataset_id : "") }),
      latest,
      j.error ? M.h("p", { class: "text-danger small", text: j.error }) : null,
      j.result_version ? M.h("p", { class: "small", text: M.t("models.versions") + ": " + j.result_version }) : null,
      plotBox,
    ])]);
  }

  async function loadJobs() {
    M.hide(error);
    try {
      const body = await M.api("GET", "/api/v1/training/jobs");
      const list = body.jobs || [];
      // the list is redrawn every few seconds: keep the keyboard focus on the control it was on
      const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focusKey : null;
      jobs.replaceChildren.apply(jobs, list.length ? list.map(job) : [M.h("p", { text: M.t("common.none") })]);
      const again = focused ? jobs.querySelector('[data-focus-key="' + focused + '"]') : null;
      if (again) again.focus();
      const running = list.some(function (j) { return FINISHED.indexOf(j.status) < 0; });
      clearTimeout(timer);
      if (running) timer = setTimeout(loadJobs, 3000);
    } catch (err) { M.showError(error, err); }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const e = document.getElementById("train-error"), ok = document.getElementById("train-ok");
    M.hide(e); M.hide(ok);
    if (!form.elements.dataset.value) { M.showError(e, M.t("common.required") + ": " + M.t("training.dataset")); return; }
    const minutes = Number(form.elements.minutes.value), epochs = Number(form.elements.epochs.value);
    if (!(minutes >= 1 && minutes <= 600)) { M.showError(e, M.t("training.minutes") + ": 1–600"); return; }
    if (!(Number.isInteger(epochs) && epochs >= 1 && epochs <= 10000)) { M.showError(e, M.t("training.epochs") + ": 1–10000"); return; }
    try {
      await M.api("POST", "/api/v1/training/jobs", { json: {
        organ: form.elements.organ.value, dataset_id: form.elements.dataset.value, arch: form.elements.arch.value,
        minutes: minutes, epochs: epochs,
      } });
      M.show(ok, M.t("training.started"), "success");
      loadJobs();
    } catch (err) { M.showError(e, err); }
  });
  form.elements.organ.addEventListener("change", loadDatasets);
  loadDatasets();
  loadJobs();
})();
