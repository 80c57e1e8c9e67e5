/* Feedback: the threads the person may see (every organ and version unless they filter), each with its
   replies, status and sharing with the hospital's doctors (set when writing; the author switches it on a
   thread); and the form for a new thread on a model version (and case). A link from a case opens this page
   with the form filled in: ?organ&version and either &evaluation&case&image (an evaluated image) or
   &segmentation&threshold (a saved segmentation). */
"use strict";
(function () {
  const M = window.MedSeg;
  const form = document.getElementById("feedback-form");
  const threads = document.getElementById("threads");
  const viewerId = Number(threads.dataset.viewerId);
  const filterOrgan = document.getElementById("threads-organ"), filterStatus = document.getElementById("threads-status");
  const STATUS = { open: "feedback.open", in_progress: "feedback.in_progress", resolved: "feedback.resolved" };
  const base = function () { return "/api/v1/models/" + encodeURIComponent(form.elements.organ.value); };
  const preset = new URLSearchParams(location.search);
  let presetVersion = preset.get("version");

  const versionsTurn = M.latest();
  async function loadVersions() {
    const select = form.elements.version, mine = versionsTurn();
    try {
      const body = await M.api("GET", base() + "/versions");
      if (!mine()) return;
      select.replaceChildren();
      const wanted = body.versions.some(function (v) { return v.version === presetVersion; }) ? presetVersion : null;
      presetVersion = null; // only the first load follows the link
      body.versions.forEach(function (v) {
        const selected = wanted ? v.version === wanted : v.state === "default";
        select.append(M.h("option", { value: v.version, selected: selected }, [M.versionLabel(v)]));
      });
    } catch (err) { M.showError(document.getElementById("feedback-error"), err); }
  }

  function thread(f) {
    const replyForm = M.h("form", { class: "d-flex gap-2 mt-2" }, [
      M.h("label", { class: "visually-hidden", for: "reply-" + f.id, text: M.t("feedback.reply") }),
      M.h("input", { class: "form-control form-control-sm", id: "reply-" + f.id, maxlength: 5000, required: true }),
      M.h("button", { class: "btn btn-sm btn-outline-primary", type: "submit", text: M.t("feedback.reply") }),
    ]);
    replyForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      const input = replyForm.querySelector("input");
      if (!input.value.trim()) return;
      try { await M.api("POST", "/api/v1/feedback/" + f.id + "/replies", { json: { body: input.value.trim() } }); loadThreads(); }
      catch (err) { M.showError(document.getElementById("threads-error"), err); }
    });
    const status = M.h("select", { class: "form-select form-select-sm w-auto", "aria-label": M.t("common.status") },
      Object.keys(STATUS).map(function (s) { return M.h("option", { value: s, selected: s === f.status }, [M.t(STATUS[s])]); }));
    status.addEventListener("change", async function () {
      try { await M.api("PATCH", "/api/v1/feedback/" + f.id, { json: { status: status.value } }); }
      catch (err) { M.showError(document.getElementById("threads-error"), err); }
    });
    return M.h("article", { class: "card", "data-feedback-id": f.id }, [M.h("div", { class: "card-body" }, [
      M.h("div", { class: "d-flex justify-content-between align-items-start gap-2" }, [
        M.h("div", { class: "small text-body-secondary" }, [M.organ(f.organ) + " v" + f.model_version + " · " + M.when(f.created_at) +
          (f.evaluation_case_id ? " · " + M.t("feedback.evaluated_case", { id: f.evaluation_case_id }) : "") +
          (f.segmentation_id ? " · " + f.segmentation_id : "") +
          (f.threshold ? " · " + M.t("segment.threshold") + " " + f.threshold.toFixed(1) : "")]),
        status,
      ]),
      M.h("p", { class: "mb-2", text: f.body }),
      sharing(f),
      M.h("ul", { class: "replies list-unstyled ms-3 small", "aria-label": M.t("feedback.replies") }, (f.replies || []).map(function (r) {
        return M.h("li", { class: "border-start ps-2 mb-1" }, [r.body, M.h("span", { class: "text-body-secondary", text: " — " + M.when(r.created_at) })]);
      })),
      replyForm,
    ])]);
  }

  /** The author's switch (shared with their hospital's doctors or not); for anyone else, a note when shared. */
  function sharing(f) {
    if (f.author_user_id !== viewerId) {
      return f.shared ? M.h("p", { class: "small mb-2", "data-shared": "true" }, [M.h("span", { class: "badge text-bg-info", text: M.t("feedback.shared") })]) : null;
    }
    const id = "shared-" + f.id;
    const input = M.h("input", { class: "form-check-input", type: "checkbox", role: "switch", id: id, checked: f.shared });
    input.addEventListener("change", async function () {
      try { await M.api("PATCH", "/api/v1/feedback/" + f.id, { json: { shared: input.checked } }); }
      catch (err) { input.checked = !input.checked; M.showError(document.getElementById("threads-error"), err); }
    });
    return M.h("div", { class: "form-check form-switch small mb-2" }, [
      input, M.h("label", { class: "form-check-label", for: id, text: M.t("feedback.share") }),
    ]);
  }

  /** Every thread the person may see, newest first; narrowed only by the filters above the list. */
  async function loadThreads() {
    const error = document.getElementById("threads-error");
    M.hide(error);
    const q = new URLSearchParams();
    if (filterOrgan.value) q.set("organ", filterOrgan.value);
    if (filterStatus.value) q.set("status", filterStatus.value);
    try {
      const body = await M.api("GET", "/api/v1/feedback" + (q.toString() ? "?" + q : ""));
      threads.replaceChildren.apply(threads, body.feedback.length ? body.feedback.map(thread) : [M.h("p", { text: M.t("feedback.none") })]);
    } catch (err) { M.showError(error, err); }
  }

  if (form) form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const error = document.getElementById("feedback-error"), ok = document.getElementById("feedback-ok");
    M.hide(error); M.hide(ok);
    const body = { body: form.elements.body.value.trim() };
    if (!body.body) { M.showError(error, M.t("common.required") + ": " + M.t("feedback.text")); return; }
    if (!form.elements.version.value) { M.showError(error, M.t("common.required") + ": " + M.t("feedback.version")); return; }
    const c = form.elements.case.value.trim();
    if (c) body.segmentation_id = c;
    if (form.elements.evaluation_case_id.value) body.evaluation_case_id = Number(form.elements.evaluation_case_id.value);
    if (form.elements.threshold.value) body.threshold = Number(form.elements.threshold.value);
    if (form.elements.shared.checked) body.shared = true;
    try {
      await M.api("POST", base() + "/versions/" + encodeURIComponent(form.elements.version.value) + "/feedback", { json: body });
      M.show(ok, M.t("feedback.sent"), "success");
      form.elements.body.value = "";
      form.elements.shared.checked = false;
      loadThreads();
    } catch (err) { M.showError(error, err); }
  });
  const context = document.getElementById("case-context");
  function clearCase() {
    form.elements.evaluation_case_id.value = "";
    context.classList.add("d-none");
    form.elements.body.focus();
  }

  function fillFromLink() {
    const organ = preset.get("organ");
    if (organ && Array.from(form.elements.organ.options).some(function (o) { return o.value === organ; })) form.elements.organ.value = organ;
    if (preset.get("segmentation")) form.elements.case.value = preset.get("segmentation");
    const threshold = Number(preset.get("threshold"));
    const option = Array.from(form.elements.threshold.options).find(function (o) { return o.value && Math.abs(Number(o.value) - threshold) < 1e-9; });
    if (option) form.elements.threshold.value = option.value;
    if (/^\d+$/.test(preset.get("case") || "")) {
      form.elements.evaluation_case_id.value = preset.get("case");
      document.getElementById("case-context-text").textContent = M.t("feedback.about_case", {
        name: preset.get("image") || "#" + preset.get("case"), evaluation: (preset.get("evaluation") || "").slice(0, 8),
      });
      context.classList.remove("d-none");
    }
  }

  filterOrgan.addEventListener("change", loadThreads);
  filterStatus.addEventListener("change", loadThreads);
  if (form) {  // researchers answer threads; they have no form for new ones
    document.getElementById("case-context-clear").addEventListener("click", clearCase);
    form.elements.organ.addEventListener("change", loadVersions);
    fillFromLink();
    loadVersions();
  }
  loadThreads();
})();
