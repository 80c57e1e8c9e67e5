/* "Open from PACS" on the studies page: search the hospital's PACS (GET /api/v1/pacs/studies), pick a study
   and one of its series (GET …/series, each CT/MR series with its middle image from …/thumbnail.png), then
   segment it (POST /api/v1/studies with JSON naming the series, "store_result" from the checkbox) and follow
   it on the study's page, where the viewer shows the result. Errors are worded by their codes (a PACS that
   is down: err.pacs_unavailable). */
"use strict";
(function () {
  const M = window.MedSeg;
  const $ = function (id) { return document.getElementById(id); };
  const search = $("pacs-search"), errorBox = $("pacs-error"), submit = $("pacs-submit");
  const studiesBody = $("pacs-studies").querySelector("tbody"), seriesBody = $("pacs-series").querySelector("tbody");
  const picked = { study: null, series: null };
  const api = "/api/v1/pacs/studies";

  function resetPick() {
    picked.series = null;
    submit.classList.add("d-none");
  }

  search.addEventListener("submit", async function (event) {
    event.preventDefault();
    M.hide(errorBox);
    resetPick();
    $("pacs-series-box").classList.add("d-none");
    const query = new URLSearchParams({ limit: "50" });
    for (const name of ["patient_id", "modality", "date_from", "date_to"]) {
      const value = search.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    const button = search.querySelector("button[type=submit]");
    M.busy(button, true, M.t("common.loading"));
    try {
      const body = await M.api("GET", api + "?" + query.toString());
      showStudies(body.studies);
    } catch (err) {
      $("pacs-results").classList.add("d-none");
      M.showError(errorBox, err);
    } finally {
      M.busy(button, false);
    }
  });

  function showStudies(studies) {
    $("pacs-results").classList.remove("d-none");
    if (!studies.length) {
      studiesBody.replaceChildren(M.h("tr", {}, [M.h("td", { colspan: 6, text: M.t("pacs.none") })]));
      return;
    }
    studiesBody.replaceChildren.apply(studiesBody, studies.map(function (s) {
      const choose = M.h("button", { type: "button", class: "btn btn-sm btn-outline-primary", text: M.t("pacs.choose") });
      choose.addEventListener("click", function () { openStudy(s, choose); });
      return M.h("tr", { "data-study-uid": s.study_uid }, [
        M.h("td", { text: s.study_date || "—" }), M.h("td", { text: s.patient_id || "—" }),
        M.h("td", { text: s.description || "—" }), M.h("td", { text: s.modalities.join(", ") || "—" }),
        M.h("td", { text: s.series_count === null ? "—" : String(s.series_count) }), M.h("td", {}, [choose]),
      ]);
    }));
  }

  async function openStudy(study, button) {
    M.hide(errorBox);
    resetPick();
    M.busy(button, true, M.t("common.loading"));
    try {
      const body = await M.api("GET", api + "/" + encodeURIComponent(study.study_uid) + "/series");
      picked.study = study;
      showSeries(study, body.series);
    } catch (err) {
      M.showError(errorBox, err);
    } finally {
      M.busy(button, false);
    }
  }

  function thumbnail(study, s) {
    if (!s.segmentable) return M.h("span", { class: "small text-body-secondary", text: M.t("pacs.not_segmentable") });
    const url = api + "/" + encodeURIComponent(study.study_uid) + "/series/" + encodeURIComponent(s.series_uid) + "/thumbnail.png";
    const img = M.h("img", { src: url, alt: M.t("pacs.thumbnail", { number: s.number === null ? "" : s.number }),
      class: "pacs-thumbnail rounded border", width: "96", height: "96", loading: "lazy" });
    img.addEventListener("error", function () {
      img.replaceWith(M.h("span", { class: "small text-body-secondary", text: M.t("pacs.no_thumbnail") }));
    });
    return img;
  }

  function showSeries(study, series) {
    $("pacs-series-box").classList.remove("d-none");
    $("pacs-series-heading").textContent = M.t("pacs.series_of", { date: study.study_date || "—" });
    if (!series.length) {
      seriesBody.replaceChildren(M.h("tr", {}, [M.h("td", { colspan: 6, text: M.t("pacs.series_none") })]));
      return;
    }
    seriesBody.replaceChildren.apply(seriesBody, series.map(function (s) {
      const pick = M.h("button", { type: "button", class: "btn btn-sm btn-outline-primary", text: M.t("pacs.pick") });
      if (!s.segmentable) pick.disabled = true;
      pick.addEventListener("click", function () { pickSeries(s); });
      return M.h("tr", { "data-series-uid": s.series_uid }, [
        M.h("td", {}, [thumbnail(study, s)]), M.h("td", { text: s.number === null ? "—" : String(s.number) }),
        M.h("td", { text: s.modality || "—" }), M.h("td", { text: s.description || "—" }),
        M.h("td", { text: s.instance_count === null ? "—" : String(s.instance_count) }), M.h("td", {}, [pick]),
      ]);
    }));
  }

  function pickSeries(s) {
    picked.series = s;
    $("pacs-picked").textContent = M.t("pacs.picked", {
      number: s.number === null ? "—" : s.number, modality: s.modality || "—",
      images: s.instance_count === null ? "—" : s.instance_count,
    });
    submit.classList.remove("d-none");
    submit.querySelector("button[type=submit]").focus();
  }

  submit.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (!picked.study || !picked.series) return;
    M.hide(errorBox);
    const button = submit.querySelector("button[type=submit]");
    M.busy(button, true, M.t("pacs.fetching"));
    try {
      const study = await M.api("POST", "/api/v1/studies", { json: {
        organ: $("pacs-organ").value,
        pacs: { study_uid: picked.study.study_uid, series_uid: picked.series.series_uid },
        store_result: $("pacs-store").checked,
      } });
      location.assign("/studies/" + encodeURIComponent(study.id));
    } catch (err) {
      M.showError(errorBox, err);
      M.busy(button, false);
    }
  });

  if (location.hash === "#pacs") $("pacs").scrollIntoView();
})();
