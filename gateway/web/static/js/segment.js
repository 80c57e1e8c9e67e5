/* Segment: upload one image → 7 masks (0.2…0.8) shown as a gallery and as a slider over the image, with
   the suggested threshold pre-selected; the doctor picks one, adds a note and saves it. */
"use strict";
(function () {
  const M = window.MedSeg;
  const IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom"];
  const BROWSER_SHOWS = [".png", ".jpg", ".jpeg"];
  const LOW_STABILITY = 0.7; // used only when the API does not flag doubtful results itself

  const form = document.getElementById("segment-form");
  const errorBox = document.getElementById("segment-error");
  const resultBox = document.getElementById("result");
  const canvas = document.getElementById("overlay");
  const slider = document.getElementById("threshold");
  const opacity = document.getElementById("opacity");
  const gallery = document.getElementById("gallery");
  const download = document.getElementById("download");
  const saveForm = document.getElementById("save-form");
  const field = function (name) { return resultBox.querySelector('[data-field="' + name + '"]'); };

  let state = null; // {result, base, tinted[], masks[], suggestedIndex, patientId, downloadUrl}

  function loadImage(src) {
    return new Promise(function (resolve, reject) {
      const img = new Image();
      img.onload = function () { resolve(img); };
      img.onerror = function () { reject(new Error("image")); };
      img.src = src;
    });
  }

  /** A red copy of a 0/255 mask, transparent where the mask is 0. */
  function tint(maskImg, width, height) {
    const c = document.createElement("canvas");
    c.width = width; c.height = height;
    const ctx = c.getContext("2d");
    ctx.drawImage(maskImg, 0, 0, width, height);
    const data = ctx.getImageData(0, 0, width, height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const on = px[i] > 127;
      px[i] = 255; px[i + 1] = 30; px[i + 2] = 30; px[i + 3] = on ? 255 : 0;
    }
    ctx.putImageData(data, 0, 0);
    return c;
  }

  function draw() {
    if (!state) return;
    const i = Number(slider.value), mask = state.masks[i];
    const ctx = canvas.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.drawImage(state.base, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = Number(opacity.value) / 100;
    ctx.drawImage(state.tinted[i], 0, 0);
    ctx.globalAlpha = 1;
    const t = mask.threshold.toFixed(1);
    canvas.setAttribute("aria-label", M.t("segment.overlay_alt", { t: t }));
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
  }

  function buildGallery() {
    gallery.replaceChildren();
    state.masks.forEach(function (mask, i) {
      const t = mask.threshold.toFixed(1);
      const img = M.h("img", { src: "data:image/png;base64," + mask.mask_png, alt: M.t("segment.mask_alt", { t: t, area: mask.area_px }) });
      const caption = M.h("figcaption", { class: "small text-center" }, [
        t + (i === state.suggestedIndex ? " (" + M.t("segment.suggested") + ")" : ""),
        M.h("br"), mask.area_px + " " + M.t("unit.px"),
      ]);
      const button = M.h("button", {
        type: "button", class: "btn btn-light", "aria-pressed": "false", "data-threshold": t,
        onclick: function () { slider.value = String(i); draw(); },
      }, [img, caption]);
      gallery.append(M.h("figure", {}, [button]));
    });
  }

  function nearestIndex(masks, threshold) {
    let best = 0;
    masks.forEach(function (m, i) { if (Math.abs(m.threshold - threshold) < Math.abs(masks[best].threshold - threshold)) best = i; });
    return best;
  }

  /** Whether the browser shows the file itself (PNG, JPEG); DICOM and TIFF come back rendered by the server. */
  function browserShows(file) {
    const name = file.name.toLowerCase();
    return BROWSER_SHOWS.some(function (ext) { return name.endsWith(ext); });
  }

  async function show(result, file, patientId) {
    const masks = result.masks.slice().sort(function (a, b) { return a.threshold - b.threshold; });
    let base;
    if (browserShows(file)) {
      const url = URL.createObjectURL(file);
      try { base = await loadImage(url); } finally { URL.revokeObjectURL(url); }
    } else {
      // the image as the model saw it (a CT windowed with the organ's window); the probability map only if
      // the server could not send it
      base = await loadImage("data:image/png;base64," + (result.image_png || result.probability_png));
    }
    document.getElementById("no-preview").classList.toggle("d-none", browserShows(file) || !!result.image_png);
    const maskImgs = await Promise.all(masks.map(function (m) { return loadImage("data:image/png;base64," + m.mask_png); }));
    canvas.width = result.width; canvas.height = result.height;
    const suggested = result.suggested_threshold !== undefined && result.suggested_threshold !== null
      ? result.suggested_threshold : result.default_threshold;
    state = {
      result: result, base: base, masks: masks, patientId: patientId,
      tinted: maskImgs.map(function (img) { return tint(img, result.width, result.height); }),
      suggestedIndex: nearestIndex(masks, suggested),
    };
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
    slider.value = String(state.suggestedIndex);
    M.hide(document.getElementById("save-error"));
    M.hide(document.getElementById("save-ok"));
    resultBox.classList.remove("d-none");
    draw();
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
    if (!browserShows(file)) data.append("include_image", "true");
    const button = form.querySelector("button[type=submit]");
    M.busy(button, true, M.t("segment.running"));
    try {
      const result = await M.api("POST", "/api/v1/segment", { form: data });
      await show(result, file, patientId);
    } catch (err) {
      M.showError(errorBox, err instanceof M.ApiError ? err : M.t("common.error"));
    } finally {
      M.busy(button, false);
    }
  });

  slider.addEventListener("input", draw);
  opacity.addEventListener("input", draw);

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
