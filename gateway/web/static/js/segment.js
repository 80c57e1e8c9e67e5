/* Segment: upload one image → 7 masks (0.2…0.8) in the viewer (static/js/viewer2d.js: zoom, window/level,
   flip-through, the difference of two) and as small multiples on the image, with the suggested threshold
   pre-selected; for histology the nuclei are counted; the doctor picks one, adds a note and saves it. */
"use strict";
(function () {
  const M = window.MedSeg;
  const IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"];
  const BROWSER_SHOWS = [".png", ".jpg", ".jpeg"];
  const LOW_STABILITY = 0.7; // used only when the API does not flag doubtful results itself

  const form = document.getElementById("segment-form");
  const errorBox = document.getElementById("segment-error");
  const resultBox = document.getElementById("result");
  const slider = document.getElementById("threshold");
  const gallery = document.getElementById("gallery");
  const download = document.getElementById("download");
  const saveForm = document.getElementById("save-form");
  const field = function (name) { return resultBox.querySelector('[data-field="' + name + '"]'); };
  const organs = JSON.parse(resultBox.dataset.organs || "{}"); // name → {modality, label}
  const nuclei = new M.NucleiPanel(document.getElementById("nuclei"));
  const viewer = new M.Viewer2D(document.getElementById("viewer"), { thresholdInput: slider, onThreshold: update });

  let state = null; // {result, masks[], suggestedIndex, patientId, downloadUrl, counts}

  /** What the page shows while a segmentation runs (a histology tile takes seconds): the upload's progress,
      from the browser's own events, then the seconds the server has been at it against what this organ's
      recent segmentations took on this gateway (`expected_s`, measured there; the page's own last one once
      it has one). The server sends nothing between the upload and its answer, so that part is an estimate:
      the bar stops short of the end and the text says so when the wait runs over; with no measurement yet
      it shows the seconds so far only. Returns {uploaded(fraction), stop()}. */
  function startProgress(organ) {
    const box = document.getElementById("segment-progress");
    const bar = box.querySelector(".progress"), fill = bar.querySelector(".progress-bar");
    const text = box.querySelector('[data-field="progress-text"]');
    const expected = (organs[organ] || {}).expected_s;
    let sentAt = null, timer = null;
    function set(percent, message, striped) {
      fill.style.width = percent + "%";
      fill.classList.toggle("progress-bar-striped", striped);
      fill.classList.toggle("progress-bar-animated", striped);
      bar.setAttribute("aria-valuenow", String(Math.round(percent)));
      text.textContent = message;
    }
    function tick() {
      const elapsed = (performance.now() - sentAt) / 1000, s = Math.floor(elapsed);
      if (!expected) { set(100, M.t("segment.elapsed", { s: s }), true); return; }
      const shown = expected.toFixed(1);
      if (elapsed < expected) {
        set(95 * elapsed / expected, M.t("segment.eta", { left: Math.max(1, Math.ceil(expected - elapsed)), organ: M.organ(organ), expected: shown }), false);
      } else {
        set(95, M.t("segment.overdue", { s: s, expected: shown }), true);
      }
    }
    box.classList.remove("d-none");
    set(0, M.t("segment.uploading", { percent: 0 }), false);
    return {
      uploaded: function (fraction) {
        if (sentAt !== null) return;
        if (fraction < 1) { set(100 * fraction, M.t("segment.uploading", { percent: Math.round(100 * fraction) }), false); return; }
        sentAt = performance.now();
        tick();
        timer = setInterval(tick, 250);
      },
      stop: function (ok) {
        if (timer) clearInterval(timer);
        if (ok && sentAt !== null && organs[organ]) organs[organ].expected_s = (performance.now() - sentAt) / 1000;
        box.classList.add("d-none");
      },
    };
  }

  /** What the page shows for threshold `i`: its value and area, the gallery's pressed picture, the download,
      and (histology) the nuclei at it. The viewer has drawn it already. */
  function update(i) {
    if (!state) return;
    const mask = state.masks[i], t = mask.threshold.toFixed(1);
    document.getElementById("threshold-value").textContent = t;
    document.getElementById("area-value").textContent = mask.area_px + " " + M.t("unit.px");
    document.getElementById("suggested-badge").classList.toggle("d-none", i !== state.suggestedIndex);
    slider.setAttribute("aria-valuetext", t);
    field("chosen").textContent = t;
    gallery.querySelectorAll("button").forEach(function (b, j) { b.setAttribute("aria-pressed", String(i === j)); });
    if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
    state.downloadUrl = URL.createObjectURL(M.b64ToBlob(mask.mask_png, "image/png"));
    download.href = state.downloadUrl;
    download.download = "medseg-" + state.result.organ + "-" + state.result.id + "-t" + t + ".png";
    if (state.counts) nuclei.show(state.result.id, mask.threshold);
  }

  /** Small multiples: each threshold's mask over the image, to pick one at a glance. */
  function buildGallery() {
    gallery.replaceChildren();
    state.masks.forEach(function (mask, i) {
      const t = mask.threshold.toFixed(1);
      const img = M.h("img", { src: viewer.thumbnail(i, 160).toDataURL("image/png"), alt: M.t("segment.mask_alt", { t: t, area: mask.area_px }) });
      const caption = M.h("figcaption", { class: "small text-center" }, [
        t + (i === state.suggestedIndex ? " (" + M.t("segment.suggested") + ")" : ""),
        M.h("br"), mask.area_px + " " + M.t("unit.px"),
      ]);
      const button = M.h("button", {
        type: "button", class: "btn btn-light", "aria-pressed": "false", "data-threshold": t,
        onclick: function () { viewer.setThreshold(i); },
      }, [img, caption]);
      gallery.append(M.h("figure", {}, [button]));
    });
  }

  function nearestIndex(masks, threshold) {
    let best = 0;
    masks.forEach(function (m, i) { if (Math.abs(m.threshold - threshold) < Math.abs(masks[best].threshold - threshold)) best = i; });
    return best;
  }

  /** Whether the browser shows the file itself (PNG, JPEG). */
  function browserShows(file) {
    const name = file.name.toLowerCase();
    return BROWSER_SHOWS.some(function (ext) { return name.endsWith(ext); });
  }

  /** The image under the masks: the one kept with the result, as the model saw it (a CT with its Hounsfield
      values to window); else the file itself when the browser shows it; else the probability map. */
  async function imageOf(result, file) {
    const url = "/api/v1/segmentations/" + encodeURIComponent(result.id);
    try {
      return Object.assign({ shown: true }, await M.loadStoredView(url + "/image.png", url + "/values.npy"));
    } catch (_) {
      if (browserShows(file)) return { shown: true, image: file };
      return { shown: false, image: M.b64ToBlob(result.probability_png, "image/png") };
    }
  }

  async function show(result, file, patientId) {
    const masks = result.masks.slice().sort(function (a, b) { return a.threshold - b.threshold; });
    const kind = organs[result.organ] || {};
    const suggested = result.suggested_threshold !== undefined && result.suggested_threshold !== null
      ? result.suggested_threshold : result.default_threshold;
    state = { result: result, masks: masks, patientId: patientId, suggestedIndex: nearestIndex(masks, suggested),
      counts: kind.label === "nucleus" };
    const image = await imageOf(result, file);
    document.getElementById("no-preview").classList.toggle("d-none", image.shown);
    resultBox.classList.remove("d-none"); // the viewer measures its stage: it must be on screen
    await viewer.open({
      width: result.width, height: result.height, image: image.image, values: image.values,
      orientation: image.orientation, histology: kind.modality === "microscopy", label: M.organ(result.organ),
      masks: masks.map(function (m) { return { threshold: m.threshold, png: M.b64ToBlob(m.mask_png, "image/png") }; }),
      index: state.suggestedIndex,
    });
    field("model").textContent = (result.model.name === result.organ ? M.organ(result.organ) : result.model.name) + " v" + result.model.version;
    field("size").textContent = result.width + " × " + result.height + " " + M.t("unit.px");
    field("patient_id").textContent = patientId || "—";
    const stability = result.stability !== undefined ? result.stability : result.stability_score;
    const stabilityBox = document.getElementById("stability");
    if (typeof stability === "number") {
      field("stability").textContent = stability.toFixed(2);
      stabilityBox.classList.remove("d-none");
      const doubtful = typeof result.stability_flag === "boolean" ? result.stability_flag
        : typeof result.doubtful === "boolean" ? result.doubtful : stability < LOW_STABILITY;
      document.getElementById("stability-warning").classList.toggle("d-none", !doubtful);
    } else {
      stabilityBox.classList.add("d-none");
      document.getElementById("stability-warning").classList.add("d-none");
    }
    buildGallery();
    if (!state.counts) nuclei.hide();
    M.hide(document.getElementById("save-error"));
    M.hide(document.getElementById("save-ok"));
    update(state.suggestedIndex);
    document.getElementById("result-heading").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    M.hide(errorBox);
    const file = form.elements.file.files[0];
    const problem = M.checkFile(file, IMAGE_TYPES, Number(form.dataset.limit));
    if (problem) { M.showError(errorBox, problem); form.elements.file.focus(); return; }
    const patientId = form.elements.patient_id.value.trim();
    const data = new FormData();
    data.append("organ", form.elements.organ.value);
    data.append("file", file);
    if (patientId) data.append("patient_id", patientId);
    data.append("keep_image", "true"); // for the viewer, now and when the result is opened again
    const button = form.querySelector("button[type=submit]");
    M.busy(button, true, M.t("segment.running"));
    const progress = startProgress(form.elements.organ.value);
    let ok = false;
    try {
      const result = await M.upload("/api/v1/segment", data, progress.uploaded);
      ok = true;
      progress.stop(true);
      await show(result, file, patientId);
    } catch (err) {
      M.showError(errorBox, err instanceof M.ApiError ? err : M.t("common.error"));
    } finally {
      if (!ok) progress.stop(false);
      M.busy(button, false);
    }
  });

  saveForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (!state) return;
    const error = document.getElementById("save-error"), ok = document.getElementById("save-ok");
    M.hide(error); M.hide(ok);
    const threshold = state.masks[Number(slider.value)].threshold;
    const note = document.getElementById("note").value.trim();
    const button = saveForm.querySelector("button[type=submit]");
    M.busy(button, true);
    try {
      await M.api("POST", "/api/v1/segmentations/" + encodeURIComponent(state.result.id) + "/choice",
        { json: { threshold: threshold, note: note || null } });
      M.show(ok, state.patientId ? M.t("segment.saved", { t: threshold.toFixed(1), patient: state.patientId })
        : M.t("segment.saved_no_patient", { t: threshold.toFixed(1) }), "success");
    } catch (err) {
      M.showError(error, err);
    } finally {
      M.busy(button, false);
    }
  });
})();
