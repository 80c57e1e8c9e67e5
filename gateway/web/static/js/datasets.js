/* Datasets: streamed zip upload with a progress bar, the validation result, the list. */
"use strict";
(function () {
  const M = window.MedSeg;
  const table = document.querySelector("#datasets-table tbody");
  const listError = document.getElementById("list-error");

  async function load() {
    M.hide(listError);
    try {
      const body = await M.api("GET", "/api/v1/datasets");
      if (!body.datasets.length) {
        table.replaceChildren(M.h("tr", {}, [M.h("td", { colspan: 6, text: M.t("datasets.none") })]));
        return;
      }
      table.replaceChildren.apply(table, body.datasets.map(function (d) {
        return M.h("tr", { "data-dataset-id": d.id }, [
          M.h("td", {}, [d.name, M.h("div", { class: "small text-body-secondary", text: d.notes || "" })]),
          M.h("td", { text: M.organ(d.organ) }), M.h("td", { text: d.pair_count }),
          M.h("td", { text: M.bytes(d.size_bytes) }), M.h("td", { text: M.t("dataset.status." + d.status) }),
          M.h("td", { text: M.when(d.created_at) }),
        ]);
      }));
    } catch (err) { M.showError(listError, err); }
  }

  const form = document.getElementById("dataset-form");
  if (form) {
    const bar = document.getElementById("upload-progress"), fill = bar.querySelector(".progress-bar");
    const error = document.getElementById("upload-error"), result = document.getElementById("upload-result");
    const progress = function (fraction) {
      const pct = Math.round(fraction * 100);
      fill.style.width = pct + "%";
      fill.textContent = pct + "%";
      bar.setAttribute("aria-valuenow", String(pct));
      if (fraction >= 1) fill.textContent = M.t("datasets.validating");
    };
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      M.hide(error);
      result.classList.add("d-none");
      const file = form.elements.file.files[0];
      const problem = M.checkFile(file, [".zip"], Number(form.dataset.limit));
      if (problem) { M.showError(error, problem); form.elements.file.focus(); return; }
      const data = new FormData();
      data.append("organ", form.elements.organ.value);
      for (const name of ["name", "notes"]) {
        const v = form.elements[name].value.trim();
        if (v) data.append(name, v);
      }
      data.append("file", file); // last: the text fields arrive before the streamed file
      const button = form.querySelector("button[type=submit]");
      M.busy(button, true, M.t("datasets.uploading"));
      bar.classList.remove("d-none");
      progress(0);
      try {
        const d = await M.upload("/api/v1/datasets", data, progress);
        result.querySelector('[data-field="name"]').textContent = d.name;
        result.querySelector('[data-field="pair_count"]').textContent = d.pair_count;
        result.querySelector('[data-field="size"]').textContent = M.bytes(d.size_bytes);
        result.querySelector('[data-field="dataset_hash"]').textContent = d.dataset_hash;
        result.classList.remove("d-none");
        form.reset();
        load();
      } catch (err) {
        M.showError(error, err);
      } finally {
        bar.classList.add("d-none");
        M.busy(button, false);
      }
    });
  }
  document.getElementById("refresh").addEventListener("click", load);
  load();
})();
