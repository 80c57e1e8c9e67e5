/* A study's page: while the job runs, its progress with an ETA and a cancel button; when it failed, why (by its
   error code); when it is done, the volume viewer (NiiVue, WebGL2):
   - the image (GET …/image.nii.gz, HU for CT) with a CT window: presets abdomen W400/L40 and liver W150/L90,
     left drag adjusts window/level, double click resets to the preset;
   - the mask at a threshold 0.2 … 0.8 (GET …/mask.nii.gz?threshold=t, uint8 labels on the image's grid) as an
     overlay, a colour per label with a legend, opacity, filled or outline only; moving the threshold swaps
     the overlay (each mask fetched once) and shows the organ volume in mL at it (the study's volumes_ml);
   - a second threshold to compare with: the voxels only one of the two masks holds, in two colours;
   - slices by wheel or ↑ ↓ with the slice number shown, axial / coronal / sagittal, zoom (Ctrl + wheel,
     + −, buttons) and pan (right drag, Shift + arrows), orientation labels on the image;
   - "Save this threshold" (POST …/choice) for the doctor, downloads of the mask (NIfTI) and, for a DICOM
     series, the DICOM SEG at the threshold shown. */
"use strict";
(function () {
  const M = window.MedSeg, S = window.MedSegStudy, NV = window.niivue;
  const root = document.getElementById("study-page");
  const studyId = root.dataset.studyId;
  const api = "/api/v1/studies/" + encodeURIComponent(studyId);
  const IMAGING = JSON.parse(document.getElementById("organ-imaging").textContent);
  const $ = function (id) { return document.getElementById(id); };

  const PRESETS = { abdomen: { w: 400, l: 40 }, liver: { w: 150, l: 90 } };
  // one colour per label (label i is colour i - 1), then the two "only at" colours of a comparison
  const LABEL_COLOURS = [[230, 57, 70], [58, 134, 255], [46, 196, 100], [214, 99, 214], [255, 159, 28], [0, 180, 180]];
  const ONLY_SHOWN = [255, 214, 10], ONLY_OTHER = [0, 229, 255];
  // per view: NiiVue's slice type, and the RAS axis the view's slices are stacked along (x 0, y 1, z 2)
  const VIEWS = {
    axial: { type: 0, axis: 2 }, coronal: { type: 1, axis: 1 }, sagittal: { type: 2, axis: 0 },
  };
  const ZOOM_MIN = 0.5, ZOOM_MAX = 16, ZOOM_STEP = 1.25, PAN_MM = 10;

  const state = {
    study: null, nv: null, image: null, mask: null, diff: null, masks: new Map(),
    t: null, compare: "", view: "axial", outline: false, preset: "abdomen", isCT: false, voxelMl: 0,
  };

  // --- the study and its job -------------------------------------------------------------------------
  function describeStudy(study) {
    const parts = [study.patient_id ? M.t("study.patient") + " " + study.patient_id : null,
      study.study_date ? M.t("study.date") + " " + study.study_date : null].filter(Boolean);
    $("study-heading").textContent = parts.join(" · ");
    const meta = [M.organ(study.organ), M.t("study.source." + study.source)];
    if (study.shape.length === 3) meta.push(M.t("study.shape", { z: study.shape[0], y: study.shape[1], x: study.shape[2] }));
    if (study.spacing_mm.length === 3) {
      const sp = study.spacing_mm.map(function (v) { return Number(v.toFixed(2)); });
      meta.push(M.t("study.spacing", { z: sp[0], y: sp[1], x: sp[2] }));
    }
    if (study.model) meta.push(M.t("study.model") + " " + study.model.name + " v" + study.model.version);
    $("study-meta").textContent = meta.join(" · ");
  }

  function showJob(study, eta) {
    const percent = Math.round(study.progress * 100);
    const bar = $("job-bar");
    bar.setAttribute("aria-valuenow", String(percent));
    bar.querySelector(".progress-bar").style.width = percent + "%";
    $("job-status").textContent = S.statusText(study.status);
    $("job-percent").textContent = percent + " %";
    $("job-eta").textContent = study.status === "running" ? "· " + eta.text(Date.now()) : "";
  }

  function showFailed(study) {
    $("job").classList.add("d-none");
    const why = study.error && study.error.code === "cancelled" ? { text: M.t("study.cancelled"), details: "" } : S.failure(study.error);
    $("failed-text").textContent = why.text;
    $("failed-details").textContent = why.details ? M.t("study.details", { message: why.details }) : "";
    $("failed").classList.remove("d-none");
  }

  async function followJob(study) {
    const eta = new S.Eta();
    $("job").classList.remove("d-none");
    showJob(study, eta);
    const job = S.follow(studyId, function (s) { eta.add(s.progress, Date.now()); showJob(s, eta); });
    $("job-cancel").addEventListener("click", async function () {
      const button = this;
      M.busy(button, true);
      try { await M.api("POST", api + "/cancel"); }
      catch (err) { if (err.code !== "study_finished") M.showError($("study-error"), err); }
      finally { M.busy(button, false); }
    });
    const last = await job.done;
    $("job").classList.add("d-none");
    return last;
  }

  async function start() {
    let study;
    try {
      study = await M.api("GET", api);
    } catch (err) {
      M.showError($("study-error"), err.status === 404 ? M.t("study.not_found") : err);
      return;
    }
    describeStudy(study);
    try {
      if (study.status === "queued" || study.status === "running") study = await followJob(study);
    } catch (err) {
      M.showError($("study-error"), err);
      return;
    }
    describeStudy(study);
    if (study.status === "failed") showFailed(study);
    else openViewer(study);
  }

  // --- volumes ---------------------------------------------------------------------------------------
  /** The bytes at `url` (same-origin, the session's cookie); an ApiError from the API's JSON on failure. */
  async function binary(url) {
    let response;
    try { response = await fetch(url, { credentials: "same-origin" }); }
    catch (_) { throw new M.ApiError(0, "network", M.t("common.network")); }
    if (!response.ok) {
      let code = "error", message = "HTTP " + response.status;
      try { const body = await response.json(); code = body.error.code || code; message = body.error.message || message; }
      catch (_) { /* not the API's JSON */ }
      throw new M.ApiError(response.status, code, message);
    }
    return response.arrayBuffer();
  }

  function nifti(url, name) {
    return binary(url).then(function (buffer) { return NV.NVImage.loadFromUrl({ url: name, name: name, buffer: buffer }); });
  }

  /** The mask at `t` ("0.5") as voxel labels (fetched once, then kept); `volume` keeps its NIfTI too. */
  async function maskAt(t, volume) {
    if (!state.masks.has(t)) {
      const image = await nifti(api + "/mask.nii.gz?threshold=" + t, "mask-" + t + ".nii.gz");
      state.masks.set(t, Uint8Array.from(image.img));
      if (volume) volume.image = image;
    }
    return state.masks.get(t);
  }

  function labelLut(colours) {
    const lut = { R: [0], G: [0], B: [0], A: [0], I: [0] };
    colours.forEach(function (c, i) { lut.R.push(c[0]); lut.G.push(c[1]); lut.B.push(c[2]); lut.A.push(255); lut.I.push(i + 1); });
    return lut;
  }

  /** The file axis (0 i, 1 j, 2 k) the current view's slices are stacked along: the one the affine points
      most along the view's RAS axis. */
  function throughAxis() {
    const row = state.image.hdr.affine[VIEWS[state.view].axis];
    let best = 0;
    for (let a = 1; a < 3; a++) if (Math.abs(row[a]) > Math.abs(row[best])) best = a;
    return best;
  }

  /** Only the labelled voxels on a label's edge within the view's slices (an in-plane neighbour differs). */
  function outlineOf(data) {
    const dims = state.image.hdr.dims, n = [dims[1], dims[2], dims[3]], stride = [1, n[0], n[0] * n[1]];
    const through = throughAxis(), axes = [0, 1, 2].filter(function (a) { return a !== through; });
    const out = new Uint8Array(data.length), c = [0, 0, 0];
    for (let z = 0; z < n[2]; z++) {
      for (let y = 0; y < n[1]; y++) {
        let idx = y * stride[1] + z * stride[2];
        for (let x = 0; x < n[0]; x++, idx++) {
          const label = data[idx];
          if (!label) continue;
          c[0] = x; c[1] = y; c[2] = z;
          for (const a of axes) {
            if (c[a] === 0 || c[a] === n[a] - 1 || data[idx - stride[a]] !== label || data[idx + stride[a]] !== label) {
              out[idx] = label;
              break;
            }
          }
        }
      }
    }
    return out;
  }

  /** Voxels in one mask only: 1 where only `shown` has them, 2 where only `other` does; with their counts. */
  function difference(shown, other) {
    const out = new Uint8Array(shown.length);
    let onlyShown = 0, onlyOther = 0;
    for (let i = 0; i < shown.length; i++) {
      const a = shown[i] > 0, b = other[i] > 0;
      if (a && !b) { out[i] = 1; onlyShown++; } else if (b && !a) { out[i] = 2; onlyOther++; }
    }
    return { data: out, onlyShown: onlyShown, onlyOther: onlyOther };
  }

  // --- drawing ---------------------------------------------------------------------------------------
  /** The mask's voxels at the threshold shown (filled or outlined), not yet on the GPU. */
  function setMaskVoxels() {
    const data = state.masks.get(state.t);
    state.mask.img.set(state.outline ? outlineOf(data) : data);
  }

  function drawMask() {
    setMaskVoxels();
    state.nv.updateGLVolume();
  }

  async function drawDifference() {
    const legendDiff = [];
    if (state.compare && state.compare !== state.t) {
      const d = difference(state.masks.get(state.t), await maskAt(state.compare));
      state.diff.img.set(d.data);
      legendDiff.push([ONLY_SHOWN, M.t("volume.only_at", { t: state.t, ml: S.ml(d.onlyShown * state.voxelMl) }), "only-shown"]);
      legendDiff.push([ONLY_OTHER, M.t("volume.only_at", { t: state.compare, ml: S.ml(d.onlyOther * state.voxelMl) }), "only-other"]);
    } else {
      state.diff.img.fill(0);
    }
    state.nv.updateGLVolume();
    drawLegend(legendDiff);
  }

  function swatch(colour) {
    const box = M.h("span", { class: "study-swatch", "aria-hidden": "true" });
    box.style.backgroundColor = "rgb(" + colour.join(",") + ")";
    return box;
  }

  function drawLegend(extra) {
    const at = (state.study.volumes_ml || {})[state.t] || {};
    const items = state.study.labels.map(function (label, i) {
      return M.h("li", { "data-legend": label }, [swatch(LABEL_COLOURS[i % LABEL_COLOURS.length]),
        M.t("volume.volume", { label: S.labelName(label), ml: S.ml(at[label]) })]);
    });
    for (const [colour, text, key] of extra) items.push(M.h("li", { "data-legend": key }, [swatch(colour), text]));
    $("legend").replaceChildren.apply($("legend"), items);
  }

  function info() {
    const nv = state.nv, axis = VIEWS[state.view].axis;
    const vox = nv.frac2vox(nv.scene.crosshairPos), dims = nv.volumes[0].dimsRAS;
    const slice = Math.round(vox[axis]) + 1, count = dims[axis + 1];
    $("slice-info").textContent = M.t("volume.slice", { slice: slice, count: count });
    const v = nv.volumes[0];
    $("wl-info").textContent = M.t("volume.wl", { w: Math.round(v.cal_max - v.cal_min), l: Math.round((v.cal_max + v.cal_min) / 2) });
    $("zoom-info").textContent = M.t("volume.zoom", { zoom: Math.round(nv.scene.pan2Dxyzmm[3] * 100) });
    $("study-canvas").setAttribute("aria-label", M.t("volume.canvas", { t: state.t, view: M.t("volume." + state.view), slice: slice, count: count }));
  }

  // --- controls --------------------------------------------------------------------------------------
  function applyPreset(name) {
    const p = PRESETS[name], v = state.nv.volumes[0];
    state.preset = name;
    $("wl-preset").value = name;
    v.cal_min = p.l - p.w / 2;
    v.cal_max = p.l + p.w / 2;
    state.nv.updateGLVolume();
    info();
  }

  /** After a drag changed the window: the readout, and "Custom" unless it still is a preset. */
  function windowDragged() {
    if (!state.isCT) { info(); return; }
    const v = state.nv.volumes[0], w = v.cal_max - v.cal_min, l = (v.cal_max + v.cal_min) / 2;
    const p = PRESETS[state.preset];
    $("wl-preset").value = p && Math.abs(p.w - w) < 0.5 && Math.abs(p.l - l) < 0.5 ? state.preset : "custom";
    info();
  }

  function setView(name) {
    state.view = name;
    state.nv.setSliceType(VIEWS[name].type);
    document.querySelectorAll("[data-view]").forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.view === name)); });
    if (state.outline) drawMask(); // the outline is drawn within the view's slices
    info();
  }

  function step(delta) {
    const move = [0, 0, 0];
    move[VIEWS[state.view].axis] = delta;
    state.nv.moveCrosshairInVox(move[0], move[1], move[2]);
    info();
  }

  function zoomTo(zoom) {
    const pan = Array.from(state.nv.scene.pan2Dxyzmm);
    pan[3] = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, zoom));
    state.nv.setPan2Dxyzmm(pan);
    info();
  }

  /** Pan by screen directions (dx right, dy up) in mm, in the plane of the current view. */
  function pan(dx, dy) {
    const p = Array.from(state.nv.scene.pan2Dxyzmm);
    // radiological convention: the patient's right (RAS −x) is on the screen's left
    if (state.view === "axial") { p[0] -= dx; p[1] += dy; }
    else if (state.view === "coronal") { p[0] -= dx; p[2] += dy; }
    else { p[1] += dx; p[2] += dy; }
    state.nv.setPan2Dxyzmm(p);
    info();
  }

  const DRAG = { window: "windowing", pan: "pan", point: "crosshair" };
  function setDrag(mode) {
    const modes = NV.DRAG_MODE;
    state.nv.opts.mouseEventConfig = {
      leftButton: { primary: modes[DRAG[mode]] }, rightButton: modes.pan, centerButton: modes.pan,
    };
  }

  async function showThreshold() {
    const t = S.THRESHOLDS[Number($("threshold").value)];
    try {
      await maskAt(t);
    } catch (err) { M.showError($("study-error"), err); return; }
    if (t !== S.THRESHOLDS[Number($("threshold").value)]) return; // a later move has won
    state.t = t;
    // one upload of the volumes to the GPU for both layers: each one re-renders every volume (seconds in
    // software WebGL on a machine without a GPU)
    setMaskVoxels();
    await drawDifference();
    const study = state.study;
    $("threshold-value").textContent = t;
    $("threshold").setAttribute("aria-valuetext", t + " · " + S.volumesText(study, t));
    const saved = study.chosen_threshold !== null && study.chosen_threshold.toFixed(1) === t;
    const isDefault = Number(study.default_threshold).toFixed(1) === t;
    const badge = $("threshold-badge");
    badge.textContent = saved ? M.t("volume.saved") : isDefault ? M.t("volume.default") : "";
    badge.classList.toggle("d-none", !saved && !isDefault);
    $("volume-value").textContent = S.volumesText(study, t);
    $("download-mask").href = api + "/mask.nii.gz?threshold=" + t;
    $("download-mask").setAttribute("download", "study-" + studyId + "-mask-t" + t + ".nii.gz");
    $("download-seg").href = api + "/seg.dcm?threshold=" + t;
    $("download-seg").setAttribute("download", "study-" + studyId + "-seg-t" + t + ".dcm");
    info();
  }

  function wire() {
    const canvas = $("study-canvas"), box = $("viewer-box");
    document.querySelectorAll("[data-view]").forEach(function (b) { b.addEventListener("click", function () { setView(b.dataset.view); }); });
    $("zoom-in").addEventListener("click", function () { zoomTo(state.nv.scene.pan2Dxyzmm[3] * ZOOM_STEP); });
    $("zoom-out").addEventListener("click", function () { zoomTo(state.nv.scene.pan2Dxyzmm[3] / ZOOM_STEP); });
    $("zoom-fit").addEventListener("click", function () { state.nv.setPan2Dxyzmm([0, 0, 0, 1]); info(); });
    $("drag-mode").addEventListener("change", function () { setDrag(this.value); });
    $("wl-preset").addEventListener("change", function () { if (PRESETS[this.value]) applyPreset(this.value); });
    $("threshold").addEventListener("input", showThreshold);
    $("compare").addEventListener("change", function () { state.compare = this.value; drawDifference(); });
    $("opacity").addEventListener("input", function () {
      const a = Number(this.value) / 100;
      state.nv.setOpacity(1, a);
      state.nv.setOpacity(2, Math.min(1, a + 0.3)); // the difference stays visible over a faint mask
    });
    $("outline").addEventListener("change", function () { state.outline = this.checked; drawMask(); });
    // the window follows a left drag; the readout follows it
    canvas.addEventListener("mousemove", function (e) { if (e.buttons) windowDragged(); });
    canvas.addEventListener("mouseup", windowDragged);
    // keys: NiiVue's own (hot keys switching to 3-D, clip planes, an alert) never run; ours do
    box.addEventListener("keydown", function (e) {
      if (e.target !== canvas) return;
      e.stopPropagation();
      const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
      let handled = true;
      if (e.shiftKey && arrows[e.key]) pan(arrows[e.key][0] * PAN_MM, arrows[e.key][1] * PAN_MM);
      else if (e.key === "ArrowUp" || e.key === "PageUp") step(1);
      else if (e.key === "ArrowDown" || e.key === "PageDown") step(-1);
      else if (e.key === "+" || e.key === "=") zoomTo(state.nv.scene.pan2Dxyzmm[3] * ZOOM_STEP);
      else if (e.key === "-") zoomTo(state.nv.scene.pan2Dxyzmm[3] / ZOOM_STEP);
      else if (e.key === "0") { state.nv.setPan2Dxyzmm([0, 0, 0, 1]); info(); }
      else handled = false;
      if (handled) e.preventDefault();
    }, true);
    box.addEventListener("keyup", function (e) { if (e.target === canvas) e.stopPropagation(); }, true);
    // Ctrl + wheel zooms (the page itself does not); the wheel alone scrolls slices (NiiVue)
    box.addEventListener("wheel", function (e) {
      if (!e.ctrlKey) return;
      e.preventDefault();
      e.stopPropagation();
      zoomTo(state.nv.scene.pan2Dxyzmm[3] * (e.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP));
    }, { capture: true, passive: false });
    // double click: back to the preset window (NiiVue's own reset picks a range from the histogram)
    box.addEventListener("dblclick", function (e) {
      if (!state.isCT) return;
      e.stopPropagation();
      applyPreset(PRESETS[state.preset] ? state.preset : "abdomen");
    }, true);
    const form = $("choice-form");
    if (form) form.addEventListener("submit", saveChoice);
  }

  async function saveChoice(event) {
    event.preventDefault();
    const error = $("choice-error"), ok = $("choice-ok"), button = event.target.querySelector("button[type=submit]");
    M.hide(error); M.hide(ok);
    M.busy(button, true);
    try {
      const note = $("note").value.trim();
      state.study = await M.api("POST", api + "/choice", { json: { threshold: Number(state.t), note: note || null } });
      M.show(ok, M.t("volume.saved_ok", { t: state.t }), "success");
      showThreshold();
    } catch (err) {
      M.showError(error, err);
    } finally {
      M.busy(button, false);
    }
  }

  async function openViewer(study) {
    state.study = study;
    const imaging = IMAGING[study.organ] || {};
    state.isCT = imaging.modality === "CT";
    state.voxelMl = study.spacing_mm.reduce(function (a, b) { return a * b; }, 1) / 1000;
    $("viewer-section").classList.remove("d-none");
    $("download-seg").classList.toggle("d-none", study.source !== "dicom");
    $("wl-preset").closest(".mb-3").classList.toggle("d-none", !state.isCT);
    if (imaging.window && !PRESETS.model) { // the window the network sees, from the organ's spec
      PRESETS.model = { w: imaging.window.width, l: imaging.window.center };
      $("wl-preset").insertBefore(M.h("option", { value: "model", text: M.t("volume.preset.model", PRESETS.model) }),
        $("wl-preset").querySelector('option[value="custom"]'));
    }
    const t = S.shownThreshold(study);
    $("threshold").value = String(Math.max(0, S.THRESHOLDS.indexOf(t)));
    if (study.chosen_note && $("note")) $("note").value = study.chosen_note;
    const nv = new NV.Niivue({
      isRadiologicalConvention: true, isOrientationTextVisible: true, showAllOrientationMarkers: true,
      isNearestInterpolation: true, dragAndDropEnabled: false, isColorbar: false, show3Dcrosshair: false,
      crosshairColor: [0.3, 0.8, 1, 0.5], crosshairWidth: 1, backColor: [0, 0, 0, 1], logLevel: "error",
      loadingText: "",
    });
    try {
      await nv.attachToCanvas($("study-canvas"));
    } catch (_) {
      $("viewer-loading").textContent = M.t("study.no_webgl");
      return;
    }
    state.nv = nv;
    try {
      const first = {};
      const [image] = await Promise.all([nifti(api + "/image.nii.gz", "image.nii.gz"), maskAt(t, first)]);
      state.image = image;
      nv.addVolume(image);
      // the overlays: the mask's own NIfTI (uint8 labels on the image's grid) whose voxels are swapped for the
      // threshold shown, and a copy of it for a comparison's difference
      const mask = first.image;
      mask.setColormapLabel(labelLut(study.labels.map(function (_, i) { return LABEL_COLOURS[i % LABEL_COLOURS.length]; })));
      mask.opacity = 0.5;
      state.mask = mask;
      nv.addVolume(mask);
      const diff = mask.clone();
      diff.zeroImage();
      diff.setColormapLabel(labelLut([ONLY_SHOWN, ONLY_OTHER]));
      diff.opacity = 0.8;
      state.diff = diff;
      nv.addVolume(diff);
    } catch (err) {
      M.showError($("study-error"), err);
      $("viewer-loading").textContent = "";
      return;
    }
    $("viewer-loading").classList.add("d-none");
    nv.onLocationChange = info;
    setDrag($("drag-mode").value);
    wire();
    if (state.isCT) applyPreset("abdomen");
    setView("axial");
    await showThreshold();
    root.dataset.viewer = "ready";
  }

  start();
})();
