/* The study page's PACS panel, for a study made from a series of the hospital's PACS: where it came from and
   every DICOM SEG stored back into the PACS study (`pacs.stored`: when the job finished, and for each
   threshold saved). It reads the study itself (GET /api/v1/studies/{id}) until the job is over, and again
   after "Save this threshold" until the new SEG is listed; the viewer (study_viewer.js) is left alone. */
"use strict";
(function () {
  const M = window.MedSeg;
  const page = document.getElementById("study-page");
  const panel = document.getElementById("pacs-panel");
  if (!page || !panel) return;
  const url = "/api/v1/studies/" + encodeURIComponent(page.dataset.studyId);
  const POLL_MS = 1500, AFTER_SAVE_TRIES = 40;

  function render(study) {
    if (!study.pacs) return;
    panel.classList.remove("d-none");
    document.getElementById("pacs-source").textContent = M.t("pacs.from", { series: study.pacs.series_uid });
    const stored = study.pacs.stored || [];
    const list = document.getElementById("pacs-stored");
    list.replaceChildren.apply(list, stored.map(function (s) {
      return M.h("li", { "data-series-uid": s.series_uid, text: M.t("pacs.stored_item", {
        threshold: Number(s.threshold).toFixed(1), number: s.series_number, when: M.when(s.stored_at),
      }) });
    }));
    const note = !study.pacs.store_result ? "pacs.stored_off" : stored.length ? "pacs.stored_on_save" : "pacs.stored_none";
    document.getElementById("pacs-note").textContent = M.t(note);
  }

  async function read() {
    try { return await M.api("GET", url); } catch (err) { return null; } // the viewer says what is wrong
  }

  async function follow() {
    const study = await read();
    if (!study) return;
    render(study);
    if (study.pacs && study.status !== "done" && study.status !== "failed") setTimeout(follow, POLL_MS);
  }

  async function untilStored(count, tries) {
    const study = await read();
    if (!study) return;
    render(study);
    if (study.pacs && study.pacs.store_result && (study.pacs.stored || []).length <= count && tries > 0) {
      setTimeout(function () { untilStored(count, tries - 1); }, POLL_MS);
    }
  }

  const form = document.getElementById("choice-form");
  if (form) {
    form.addEventListener("submit", function () {
      const count = panel.querySelectorAll("#pacs-stored li").length;
      setTimeout(function () { untilStored(count, AFTER_SAVE_TRIES); }, POLL_MS);
    });
  }
  follow();
})();
