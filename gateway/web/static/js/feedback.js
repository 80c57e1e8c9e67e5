/* Feedback: threads per model version (and case), replies, status. */
"use strict";
(function () {
  const M = window.MedSeg;
  const form = document.getElementById("feedback-form");
  const threads = document.getElementById("threads");
  const STATUS = { open: "feedback.open", in_progress: "feedback.in_progress", resolved: "feedback.resolved" };
  const base = function () { return "/api/v1/models/" + encodeURIComponent(form.elements.organ.value); };

  async function loadVersions() {
    const select = form.elements.version;
    select.replaceChildren();
    try {
      const body = await M.api("GET", base() + "/versions");
      body.versions.forEach(function (v) {
        select.append(M.h("option", { value: v.version, selected: v.state === "default" }, [v.version + " (" + v.state + ")"]));
      });
    } catch (err) { M.showError(document.getElementById("threads-error"), err.status === 404 ? M.t("common.unavailable") : err); }
    loadThreads();
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
        M.h("div", { class: "small text-body-secondary" }, [f.organ + " v" + f.model_version + " · " + M.when(f.created_at) +
          (f.segmentation_id ? " · " + f.segmentation_id : "") + (f.threshold ? " · " + f.threshold : "")]),
        status,
      ]),
      M.h("p", { class: "mb-2", text: f.body }),
      M.h("ul", { class: "list-unstyled ms-3 small" }, (f.replies || []).map(function (r) {
        return M.h("li", { class: "border-start ps-2 mb-1" }, [r.body, M.h("span", { class: "text-body-secondary", text: " — " + M.when(r.created_at) })]);
      })),
      replyForm,
    ])]);
  }

  async function loadThreads() {
    const error = document.getElementById("threads-error");
    M.hide(error);
    const q = new URLSearchParams({ organ: form.elements.organ.value });
    if (form.elements.version.value) q.set("version", form.elements.version.value);
    try {
      const body = await M.api("GET", "/api/v1/feedback?" + q);
      threads.replaceChildren.apply(threads, body.feedback.length ? body.feedback.map(thread) : [M.h("p", { text: M.t("common.none") })]);
    } catch (err) { M.showError(error, err.status === 404 ? M.t("common.unavailable") : err); }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const error = document.getElementById("feedback-error"), ok = document.getElementById("feedback-ok");
    M.hide(error); M.hide(ok);
    const body = { body: form.elements.body.value.trim() };
    if (!body.body) { M.showError(error, M.t("common.required") + ": " + M.t("feedback.text")); return; }
    if (!form.elements.version.value) { M.showError(error, M.t("common.required") + ": " + M.t("feedback.version")); return; }
    const c = form.elements.case.value.trim();
    if (c) body.segmentation_id = c;
    try {
      await M.api("POST", base() + "/versions/" + encodeURIComponent(form.elements.version.value) + "/feedback", { json: body });
      M.show(ok, M.t("feedback.sent"), "success");
      form.elements.body.value = "";
      loadThreads();
    } catch (err) { M.showError(error, err.status === 404 && err.code === "not_found" ? M.t("common.unavailable") : err); }
  });
  form.elements.organ.addEventListener("change", loadVersions);
  form.elements.version.addEventListener("change", loadThreads);
  const preset = new URLSearchParams(location.search).get("segmentation");
  if (preset) form.elements.case.value = preset;
  loadVersions();
})();
