/* History: the doctor's recent segmentations (thumbnails, chosen threshold, area, stability), filtered by
   patient and organ; with a patient ID, that patient's area over time. Any result opens again in the viewer
   (its masks over the image kept with it, every threshold, nuclei for histology). */
"use strict";
(function () {
  const M = window.MedSeg;
  const form = document.getElementById("history-form");
  const table = document.querySelector("#history-table tbody");
  const error = document.getElementById("history-error");

  function filters() {
    const q = new URLSearchParams();
    for (const name of ["patient_id", "organ"]) {
      const v = form.elements[name].value.trim();
      if (v) q.set(name, v);
    }
    return q;
  }

  async function loadHistory(q) {
    try {
      const body = await M.api("GET", "/api/v1/segmentations" + (q.toString() ? "?" + q : ""));
      if (!body.segmentations.length) {
        table.replaceChildren(M.h("tr", {}, [M.h("td", { colspan: 11, text: M.t("history.none") })]));
        return;
      }
      table.replaceChildren.apply(table, body.segmentations.map(function (s) {
        const when = M.when(s.created_at);
        const thumb = M.h("button", { type: "button", class: "btn btn-link p-0 small text-decoration-none", "data-action": "view",
          onclick: function () { openViewer(s); } }, [
          s.thumbnail_url ? M.h("img", { class: "thumb d-block", src: s.thumbnail_url,
            alt: M.t("history.thumb_alt", { organ: M.organ(s.organ), when: when }) }) : "",
          M.t("history.view"),
        ]);
        const stability = typeof s.stability === "number"
          ? M.h("span", { class: s.doubtful ? "badge text-bg-warning" : "" }, [s.stability.toFixed(2)]) : "—";
        return M.h("tr", { "data-segmentation-id": s.id }, [
          M.h("td", {}, [thumb]), M.h("td", { text: when }), M.h("td", { text: s.patient_id || "—" }),
          M.h("td", { text: M.organ(s.organ) }), M.h("td", { text: modelName(s) + " v" + s.model_version }),
          M.h("td", { "data-field": "threshold", text: s.chosen_threshold !== null ? s.chosen_threshold.toFixed(1) : "—" }),
          M.h("td", { text: Math.round(s.area) + " " + M.t(s.area_unit === "mm2" ? "unit.mm2" : "unit.px") }),
          M.h("td", {}, [stability]), M.h("td", { class: "small", text: s.chosen_note || "" }),
          M.h("td", {}, [maskLink(s)]), M.h("td", {}, [feedbackLink(s)]),
        ]);
      }));
    } catch (err) {
      M.showError(error, err);
      table.replaceChildren();
    }
  }

  /** The model by the organ's name in the page's language when it is the organ's own model ("liver"). */
  function modelName(s) { return s.model_name === s.organ ? M.organ(s.organ) : s.model_name; }

  /** The stored mask at the saved threshold (the server's default when none was saved), as a PNG file. */
  function maskLink(s) {
    const url = "/api/v1/segmentations/" + encodeURIComponent(s.id) + "/mask.png";
    const t = s.chosen_threshold !== null ? s.chosen_threshold.toFixed(1) : "default";
    return M.h("a", {
      class: "small", href: url, "data-action": "mask",
      download: "medseg-" + s.organ + "-" + s.id + "-t" + t + ".png", text: M.t("history.mask"),
    });
  }

  /** The feedback form, filled in with this saved result's model version, ID and chosen threshold. */
  function feedbackLink(s) {
    const q = new URLSearchParams({ organ: s.organ, version: s.model_version, segmentation: s.id });
    if (s.chosen_threshold !== null) q.set("threshold", s.chosen_threshold.toFixed(1));
    return M.h("a", { class: "small", href: "/feedback?" + q, "data-action": "feedback", text: M.t("model_test.feedback") });
  }

  async function loadTrend(q) {
    const patient = q.get("patient_id"), heading = document.getElementById("trend-heading");
    const holder = document.getElementById("trend-plot");
    if (!patient) { heading.textContent = M.t("history.trend_help"); holder.replaceChildren(); return; }
    heading.textContent = M.t("history.trend", { patient: patient });
    try {
      const tq = new URLSearchParams();
      if (q.get("organ")) tq.set("organ", q.get("organ"));
      const body = await M.api("GET", "/api/v1/patients/" + encodeURIComponent(patient) + "/trend" + (tq.toString() ? "?" + tq : ""));
      window.MedSegTrend.render(holder, body, heading.textContent); // history_trend.js: mL per study, areas apart
    } catch (err) { holder.replaceChildren(M.h("p", { class: "text-body-secondary", text: M.describe(err) })); }
  }

  // --- a result opened again in the viewer (static/js/viewer2d.js), in a dialog ---------------------------
  const dialogBox = document.getElementById("result-viewer");
  const organs = JSON.parse(dialogBox.dataset.organs || "{}"); // name → {modality, label}
  let opened = null; // the item on screen
  const dialog = new M.ViewerDialog(dialogBox, {
    onThreshold: function (i) { if (opened && counts(opened)) nuclei.show(opened.id, 0.2 + i / 10); },
    onClose: function () { opened = null; nuclei.hide(); },
  });
  const nuclei = new M.NucleiPanel(dialog.extra);
  dialog.extra.setAttribute("aria-label", M.t("nuclei.title"));

  function counts(s) { return (organs[s.organ] || {}).label === "nucleus"; }

  async function openViewer(s) {
    opened = s;
    nuclei.hide();
    const threshold = s.chosen_threshold !== null ? s.chosen_threshold : s.area_threshold;
    const title = M.t("history.viewer_title", { organ: M.organ(s.organ), when: M.when(s.created_at), patient: s.patient_id || "—" });
    const ok = await dialog.open(title, async function () {
      return Object.assign(await M.storedResult(s), {
        histology: (organs[s.organ] || {}).modality === "microscopy", label: M.organ(s.organ),
        index: Math.round((threshold - 0.2) * 10),
      });
    });
    if (ok && !s.image_url) dialog.say(M.t("err.no_image"));
    if (ok && counts(s)) nuclei.show(s.id, threshold);
  }

  function load() {
    M.hide(error);
    const q = filters();
    history.replaceState(null, "", q.toString() ? "?" + q : location.pathname);
    loadHistory(q);
    loadTrend(q);
  }

  const initial = new URLSearchParams(location.search);
  for (const name of ["patient_id", "organ"]) if (initial.get(name)) form.elements[name].value = initial.get(name);
  form.addEventListener("submit", function (event) { event.preventDefault(); load(); });
  load();
})();
