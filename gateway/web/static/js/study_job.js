/* Studies, shared by the studies pages: a study's status and failure in the page's language, its volume in mL
   at a threshold, and following a job (polling GET /api/v1/studies/{id}) with an ETA from the progress rate. */
"use strict";
(function () {
  const M = window.MedSeg;
  const THRESHOLDS = ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"];
  const POLL_MS = 1000;

  function has(key) { return M.t(key) !== key; }

  /** A label ("liver") in the page's language, the label itself when the pages have no word for it. */
  function labelName(label) { return has("label." + label) ? M.t("label." + label) : label; }

  function statusText(status) { return has("study.status." + status) ? M.t("study.status." + status) : status; }

  /** mL as people read them: one decimal. */
  function ml(value) { return typeof value === "number" && isFinite(value) ? value.toFixed(1) : "—"; }

  /** The threshold a study is shown at first: the doctor's saved one, else the organ's default. */
  function shownThreshold(study) {
    const t = study.chosen_threshold !== null && study.chosen_threshold !== undefined ? study.chosen_threshold : study.default_threshold;
    return Number(t).toFixed(1);
  }

  /** "Liver: 1523.4 mL" for each label at threshold `t` ("0.5"), or "—" before the study is done. */
  function volumesText(study, t) {
    const at = (study.volumes_ml || {})[t];
    if (!at) return "—";
    return study.labels.map(function (label) { return M.t("volume.volume", { label: labelName(label), ml: ml(at[label]) }); }).join(" · ");
  }

  /** A failed study's error worded by its code (the server's own message kept as details). */
  function failure(error) {
    if (!error) return { text: M.t("study.failed"), details: "" };
    const err = new M.ApiError(0, error.code, error.message, {});
    const own = has("err." + error.code);
    return { text: own ? M.describe(err) : M.t("study.failed"), details: error.message || "" };
  }

  /** Time left from the progress rate: progress samples over time, the rate measured since the first one
      that moved (a queued study's wait is not work), ETA = what is left / the rate. */
  function Eta() {
    this.samples = [];
  }
  Eta.prototype.add = function (progress, atMs) {
    const last = this.samples[this.samples.length - 1];
    if (!last || progress !== last.p) this.samples.push({ p: progress, t: atMs });
  };
  /** Seconds left, or null while the rate is not known yet (fewer than two distinct progress values). */
  Eta.prototype.seconds = function (nowMs) {
    const moving = this.samples.filter(function (s) { return s.p > 0; });
    if (moving.length < 2) return null;
    const first = moving[0], last = moving[moving.length - 1];
    const rate = (last.p - first.p) / Math.max(1, last.t - first.t); // progress per ms
    if (!(rate > 0)) return null;
    const left = (1 - last.p) / rate - Math.max(0, nowMs - last.t);
    return Math.max(0, Math.round(left / 1000));
  };
  Eta.prototype.text = function (nowMs) {
    const s = this.seconds(nowMs);
    if (s === null) return M.t("study.eta_unknown");
    const time = s >= 60 ? M.t("study.minutes_seconds", { m: Math.floor(s / 60), s: s % 60 }) : M.t("study.seconds", { s: Math.max(1, s) });
    return M.t("study.eta", { time: time });
  };

  /** Poll the study until it is done or failed; onUpdate(study) after every answer. Resolves to the last
      answer; stop() ends the polling early. */
  function follow(studyId, onUpdate) {
    let stopped = false, timer = null;
    const done = new Promise(function (resolve, reject) {
      async function poll() {
        if (stopped) return;
        let study;
        try {
          study = await M.api("GET", "/api/v1/studies/" + encodeURIComponent(studyId));
        } catch (err) {
          if (err.status === 0 || err.status >= 500) { timer = setTimeout(poll, POLL_MS * 3); return; } // a blip: retry
          reject(err);
          return;
        }
        onUpdate(study);
        if (study.status === "done" || study.status === "failed") resolve(study);
        else timer = setTimeout(poll, POLL_MS);
      }
      poll();
    });
    return { done: done, stop: function () { stopped = true; clearTimeout(timer); } };
  }

  window.MedSegStudy = { THRESHOLDS, labelName, statusText, ml, shownThreshold, volumesText, failure, Eta, follow };
})();
