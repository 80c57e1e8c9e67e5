/* Studies: upload one DICOM series (a folder, DICOM files or a zip) or one NIfTI volume (POST /api/v1/studies,
   202), then follow it on its own page; below, the person's recent studies. */
"use strict";
(function () {
  const M = window.MedSeg, S = window.MedSegStudy;
  const form = document.getElementById("study-form");
  const folder = document.getElementById("folder"), files = document.getElementById("files");
  const errorBox = document.getElementById("study-error");
  const chosen = document.getElementById("chosen");
  const progress = document.getElementById("upload-progress");
  const table = document.querySelector("#studies-table tbody");
  const limit = Number(form.dataset.limit);

  /** A folder's files that can belong to a series: hidden files (.DS_Store) and DICOMDIR indexes never do. */
  function seriesFiles(list) {
    return Array.from(list).filter(function (f) {
      return !f.name.startsWith(".") && f.name.toUpperCase() !== "DICOMDIR";
    });
  }

  function picked() {
    const fromFolder = seriesFiles(folder.files || []), fromFiles = Array.from(files.files || []);
    return { fromFolder: fromFolder, fromFiles: fromFiles, all: fromFolder.length ? fromFolder : fromFiles };
  }

  function describeChoice() {
    const p = picked();
    const size = p.all.reduce(function (n, f) { return n + f.size; }, 0);
    chosen.textContent = p.all.length ? M.t("studies.chosen", { count: p.all.length, size: M.bytes(size) }) : "";
  }
  folder.addEventListener("change", describeChoice);
  files.addEventListener("change", describeChoice);

  function showUpload(fraction) {
    const percent = Math.round(fraction * 100);
    progress.classList.remove("d-none");
    const bar = progress.querySelector(".progress");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.querySelector(".progress-bar").style.width = percent + "%";
    document.getElementById("upload-text").textContent = M.t("studies.uploading", { percent: percent });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    M.hide(errorBox);
    const p = picked();
    if (!p.all.length) { M.showError(errorBox, M.t("studies.choose")); folder.focus(); return; }
    if (p.fromFolder.length && p.fromFiles.length) { M.showError(errorBox, M.t("studies.both")); return; }
    const size = p.all.reduce(function (n, f) { return n + f.size; }, 0);
    if (limit && size > limit) {
      M.showError(errorBox, M.t("studies.too_big", { size: M.bytes(size), limit: M.bytes(limit) }));
      return;
    }
    const data = new FormData();
    data.append("organ", form.elements.organ.value);
    for (const f of p.all) data.append("files", f, f.name);
    const patientId = form.elements.patient_id.value.trim();
    if (patientId) data.append("patient_id", patientId);
    if (form.elements.study_date.value) data.append("study_date", form.elements.study_date.value);
    const button = form.querySelector("button[type=submit]");
    M.busy(button, true, M.t("common.loading"));
    showUpload(0);
    try {
      const study = await M.upload("/api/v1/studies", data, showUpload);
      location.assign("/studies/" + encodeURIComponent(study.id));
    } catch (err) {
      progress.classList.add("d-none");
      M.showError(errorBox, err);
      M.busy(button, false);
    }
  });

  async function loadStudies() {
    try {
      const body = await M.api("GET", "/api/v1/studies?limit=50");
      if (!body.studies.length) {
        table.replaceChildren(M.h("tr", {}, [M.h("td", { colspan: 9, text: M.t("studies.none") })]));
        return;
      }
      table.replaceChildren.apply(table, body.studies.map(function (s) {
        // a cancelled study is stored as failed with the code "cancelled": the list says which it was
        const cancelled = s.status === "failed" && s.error && s.error.code === "cancelled";
        const status = s.status === "running" ? S.statusText(s.status) + " " + Math.round(s.progress * 100) + " %"
          : S.statusText(cancelled ? "cancelled" : s.status);
        const link = M.h("a", { class: "btn btn-sm btn-outline-primary", href: "/studies/" + encodeURIComponent(s.id), "data-action": "open", text: M.t("studies.open") });
        return M.h("tr", { "data-study-id": s.id }, [
          M.h("td", { text: s.study_date || "—" }), M.h("td", { text: s.patient_id || "—" }),
          M.h("td", { text: M.organ(s.organ) }), M.h("td", { text: s.shape.length ? String(s.shape[0]) : "—" }),
          M.h("td", { text: status, "data-field": "status" }),
          M.h("td", { text: s.status === "done" ? S.volumesText(s, S.shownThreshold(s)) : "—" }),
          M.h("td", { text: s.chosen_threshold !== null ? s.chosen_threshold.toFixed(1) : "—" }),
          M.h("td", { text: M.when(s.created_at) }), M.h("td", {}, [link]),
        ]);
      }));
    } catch (err) {
      M.showError(errorBox, err);
      table.replaceChildren();
    }
  }
  loadStudies();
})();
