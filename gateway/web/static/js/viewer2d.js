/* The 2-D viewer: an image with a segmentation's masks over it, to zoom, pan, window/level and compare
   thresholds on the anatomy (issue 18, "The viewer"). Used by the segment page (a new result, a result opened
   again from the history) and by the model-test page (a test case's overlays).

   Two engines behind one set of controls:
   - "canvas" (radiology and any image that fits in memory as one picture): plain 2-D canvas. Window/level
     recomputes a CT's Hounsfield values into grey on every drag step, and the overlays (filled, outline,
     the difference of two thresholds) are per-pixel compositions; both are a few milliseconds on a 512²
     slice in a canvas, whereas a tiled viewer would re-tile the image on each step. Pixels stay sharp when
     zoomed in (no smoothing), so a mask's edge is judged honestly.
   - "osd" (histology: an H&E tile, often 1000² or more): OpenSeadragon (npm `openseadragon`, bundled by
     `make assets`) for deep zoom with a navigator; the same overlays go in as a second image on top.

   new MedSeg.Viewer2D(root, {thresholdInput, onThreshold}).open({
     width, height, image: URL | Blob, values: {data, window, invert, unit} | null, orientation: ["L", "P"],
     masks: [{threshold, png: URL | Blob}], index, histology, label, legend: [{key, colour, text}] })
   The viewer builds its toolbar, stage and legend inside `root` and mirrors its state on root.dataset
   (engine, zoom, threshold, compare, mode, window) for the pages' tests.
   Keys on the image: + − zoom, arrows pan, 0 fit, 1 one-to-one, [ ] or PageUp/PageDown flip thresholds,
   o outline/filled, w window/level dragging. Wheel zooms at the pointer; dragging pans (or windows). */
"use strict";
(function () {
  const M = window.MedSeg;
  // Window/level presets in Hounsfield units (W = width, L = level/centre), as radiology workstations name them.
  const PRESETS = [
    { message: "viewer.preset_abdomen", width: 400, center: 40 },
    { message: "viewer.preset_liver", width: 150, center: 90 },
  ];
  const OPPOSITE = { L: "R", R: "L", A: "P", P: "A", S: "I", I: "S" };
  // Colours that stand out on grey CT (red, with yellow for the difference) and on pink/purple H&E (bright
  // green, with cyan): neither pair is red/green for the doctor to tell apart.
  const SCHEMES = { radiology: ["#ff3030", "#ffd400"], histology: ["#39ff14", "#00e5ff"] };
  const MIN_ZOOM = 0.05, MAX_ZOOM = 32;

  function loadBitmap(source) {
    if (source instanceof Blob) return createImageBitmap(source);
    return fetch(source, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("image " + r.status);
      return r.blob();
    }).then(function (blob) { return createImageBitmap(blob); });
  }

  /** A 0/255 mask PNG → Uint8Array of 0/1, one per pixel. */
  async function loadMask(source, width, height) {
    const bitmap = await loadBitmap(source);
    const c = document.createElement("canvas");
    c.width = width; c.height = height;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0, width, height);
    const px = ctx.getImageData(0, 0, width, height).data;
    const out = new Uint8Array(width * height);
    for (let i = 0; i < out.length; i++) out[i] = px[i * 4] > 127 ? 1 : 0;
    return out;
  }

  /** An .npy (numpy's format: a small text header, then the values) → {data, height, width}. */
  function parseNpy(buffer) {
    const bytes = new Uint8Array(buffer);
    if (bytes[0] !== 0x93 || String.fromCharCode.apply(null, bytes.slice(1, 6)) !== "NUMPY") throw new Error("not .npy");
    const view = new DataView(buffer);
    const start = bytes[6] === 1 ? 10 : 12;
    const length = bytes[6] === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    const header = new TextDecoder("latin1").decode(bytes.slice(start, start + length));
    const descr = /'descr':\s*'([^']+)'/.exec(header), shape = /'shape':\s*\((\d+),\s*(\d+)\)/.exec(header);
    const types = { "<i2": Int16Array, "<u2": Uint16Array, "<f4": Float32Array, "|u1": Uint8Array, "<i4": Int32Array };
    if (!descr || !shape || !types[descr[1]] || /'fortran_order':\s*True/.test(header)) throw new Error("npy " + header);
    const height = Number(shape[1]), width = Number(shape[2]);
    return { data: new types[descr[1]](buffer, start + length, height * width), height: height, width: width };
  }

  /** The stored view of a result (GET image.png, and values.npy when its headers say there are values). */
  async function loadStoredView(imageUrl, valuesUrl) {
    const response = await fetch(imageUrl, { credentials: "same-origin" });
    if (!response.ok) throw new Error("image " + response.status);
    const h = response.headers, image = await response.blob();
    const orientation = h.get("X-MedSeg-Orientation");
    const view = { image: image, orientation: orientation ? orientation.split(" ") : null, values: null };
    if (h.get("X-MedSeg-Values")) {
      const values = await fetch(valuesUrl, { credentials: "same-origin" });
      if (values.ok) {
        const parsed = parseNpy(await values.arrayBuffer());
        const win = h.get("X-MedSeg-Window").split(" ").map(Number);
        view.values = { data: parsed.data, unit: h.get("X-MedSeg-Values"), invert: h.get("X-MedSeg-Invert") === "1",
          window: { center: win[0], width: win[1] } };
      }
    }
    return view;
  }

  function rgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  /** Pixels of `mask` on its rim: in the mask with a pixel outside it within `thickness` (4-neighbours). */
  function outline(mask, width, height, thickness) {
    let inner = mask;
    for (let k = 0; k < thickness; k++) {
      const next = new Uint8Array(inner.length);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const i = y * width + x;
          next[i] = inner[i] && x > 0 && x < width - 1 && y > 0 && y < height - 1 &&
            inner[i - 1] && inner[i + 1] && inner[i - width] && inner[i + width] ? 1 : 0;
        }
      }
      inner = next;
    }
    const rim = new Uint8Array(mask.length);
    for (let i = 0; i < mask.length; i++) rim[i] = mask[i] && !inner[i] ? 1 : 0;
    return rim;
  }

  function label(text, forId, extra) {
    return M.h("label", { class: "form-label small mb-0 " + (extra || ""), for: forId, text: text });
  }

  class Viewer2D {
    constructor(root, options) {
      this.root = root;
      this.options = options || {};
      this.id = root.id || "viewer";
      this.colours = SCHEMES.radiology.slice();
      this.state = { index: 0, compare: null, mode: "fill", opacity: 0.45, scale: 1, tx: 0, ty: 0, drag: null, windowing: false };
      this.build();
    }

    // --- the controls ---------------------------------------------------------------------------------------
    build() {
      const id = this.id, t = M.t;
      const btn = function (name, text, title) {
        return M.h("button", { type: "button", class: "btn btn-outline-secondary btn-sm", "data-action": name,
          title: title || text, "aria-label": title || text, text: text });
      };
      this.zoomLabel = M.h("span", { class: "small text-body-secondary ms-1", "aria-live": "polite" });
      const zoom = M.h("div", { class: "btn-group", role: "group", "aria-label": t("viewer.zoom") }, [
        btn("zoom-out", "−", t("viewer.zoom_out")), btn("zoom-in", "+", t("viewer.zoom_in")),
        btn("fit", t("viewer.fit")), btn("actual", "1:1", t("viewer.actual")),
      ]);
      this.presetSelect = M.h("select", { class: "form-select form-select-sm w-auto", id: id + "-preset" });
      this.windowButton = M.h("button", { type: "button", class: "btn btn-outline-secondary btn-sm", "data-action": "window",
        "aria-pressed": "false", text: t("viewer.window_drag") });
      this.windowLabel = M.h("span", { class: "small text-body-secondary", "aria-live": "polite" });
      this.windowTools = M.h("div", { class: "d-flex flex-wrap align-items-center gap-2 d-none" }, [
        label(t("viewer.window"), id + "-preset"), this.presetSelect, this.windowButton, this.windowLabel,
      ]);
      this.modeButtons = ["fill", "outline"].map(function (mode) {
        return M.h("button", { type: "button", class: "btn btn-outline-secondary btn-sm", "data-mode": mode,
          "aria-pressed": "false", text: t("viewer." + mode) });
      });
      this.colourInput = M.h("input", { type: "color", class: "form-control form-control-color form-control-sm",
        id: id + "-colour", value: this.colours[0] });
      this.opacityInput = M.h("input", { type: "range", class: "form-range viewer2d-opacity", id: id + "-opacity",
        min: 0, max: 100, step: 5, value: Math.round(this.state.opacity * 100) });
      this.compareSelect = M.h("select", { class: "form-select form-select-sm w-auto", id: id + "-compare" });
      this.overlayTools = M.h("div", { class: "d-flex flex-wrap align-items-center gap-2 d-none" }, [
        M.h("div", { class: "btn-group", role: "group", "aria-label": t("viewer.overlay") }, this.modeButtons),
        label(t("viewer.colour"), id + "-colour"), this.colourInput,
        label(t("viewer.opacity"), id + "-opacity"), this.opacityInput,
        label(t("viewer.compare"), id + "-compare"), this.compareSelect,
      ]);
      this.thresholdTools = M.h("div", { class: "d-flex align-items-center gap-2 d-none" });
      if (!this.options.thresholdInput) {
        this.thresholdInput = M.h("input", { type: "range", class: "form-range viewer2d-threshold", id: id + "-threshold",
          min: 0, max: 6, step: 1, value: 0 });
        this.thresholdLabel = M.h("strong", {});
        this.thresholdTools.append(label(t("segment.threshold"), id + "-threshold"), this.thresholdInput, this.thresholdLabel);
      } else {
        this.thresholdInput = this.options.thresholdInput;
      }
      this.stage = M.h("div", { class: "viewer2d-stage", tabindex: "0", role: "img",
        "aria-label": t("viewer.stage"), "aria-describedby": id + "-help" });
      this.legend = M.h("ul", { class: "viewer2d-legend list-unstyled small mb-0", "aria-label": t("viewer.legend") });
      const help = M.h("p", { class: "small text-body-secondary mb-0", id: id + "-help", text: t("viewer.help") });
      this.root.classList.add("viewer2d");
      this.root.replaceChildren(
        M.h("div", { class: "viewer2d-tools d-flex flex-wrap align-items-center gap-2 mb-2" }, [zoom, this.zoomLabel, this.windowTools]),
        M.h("div", { class: "viewer2d-tools d-flex flex-wrap align-items-center gap-2 mb-2" }, [this.overlayTools, this.thresholdTools]),
        this.stage, this.legend, help,
      );
      this.wire();
    }

    wire() {
      const self = this;
      this.root.addEventListener("click", function (event) {
        const action = event.target.closest("[data-action]");
        if (action) {
          const name = action.dataset.action;
          if (name === "zoom-in") self.zoomBy(1.25);
          else if (name === "zoom-out") self.zoomBy(0.8);
          else if (name === "fit") self.fit();
          else if (name === "actual") self.actualSize();
          else if (name === "window") self.setWindowing(!self.state.windowing);
          return;
        }
        const mode = event.target.closest("[data-mode]");
        if (mode) self.setMode(mode.dataset.mode);
      });
      this.presetSelect.addEventListener("change", function () {
        const p = self.presets()[Number(self.presetSelect.value)];
        if (p) self.setWindow(p.center, p.width);
      });
      this.colourInput.addEventListener("input", function () { self.colours[0] = self.colourInput.value; self.refresh(); });
      this.opacityInput.addEventListener("input", function () { self.setOpacity(Number(self.opacityInput.value) / 100); });
      this.compareSelect.addEventListener("change", function () {
        self.setCompare(self.compareSelect.value === "" ? null : Number(self.compareSelect.value));
      });
      this.thresholdInput.addEventListener("input", function () { self.setThreshold(Number(self.thresholdInput.value)); });
      // capture: before OpenSeadragon's own key handling on its canvas (it would move the image a second time)
      this.root.addEventListener("keydown", function (event) { self.key(event); }, true);
    }

    key(event) {
      if (!this.source || event.altKey || event.ctrlKey || event.metaKey) return;
      if (event.target.closest("input, select, textarea, button")) return; // their own keys
      const k = event.key, step = 0.1;
      const handled = {
        "+": () => this.zoomBy(1.25), "=": () => this.zoomBy(1.25), "-": () => this.zoomBy(0.8), "_": () => this.zoomBy(0.8),
        "0": () => this.fit(), "1": () => this.actualSize(),
        "ArrowLeft": () => this.panBy(step, 0), "ArrowRight": () => this.panBy(-step, 0),
        "ArrowUp": () => this.panBy(0, step), "ArrowDown": () => this.panBy(0, -step),
        "[": () => this.flip(-1), "]": () => this.flip(1), "PageUp": () => this.flip(-1), "PageDown": () => this.flip(1),
        "o": () => this.setMode(this.state.mode === "fill" ? "outline" : "fill"),
        "w": () => this.setWindowing(!this.state.windowing),
      }[k];
      if (!handled) return;
      event.preventDefault();
      event.stopPropagation();
      handled();
    }

    // --- opening a result --------------------------------------------------------------------------------
    /** source: {width, height, image, values, orientation, masks: [{threshold, png}], index, histology, label,
        legend}: histology opens in deep zoom, outlined in green (what shows on H&E). */
    async open(source) {
      this.close();
      this.histology = !!source.histology;
      this.colours = SCHEMES[this.histology ? "histology" : "radiology"].slice();
      this.colourInput.value = this.colours[0];
      this.state.mode = this.histology ? "outline" : "fill";
      this.setOpacity(this.histology ? 0.9 : 0.45);
      const masks = (source.masks || []).slice().sort(function (a, b) { return a.threshold - b.threshold; });
      this.values = source.values || null;
      this.bitmap = !this.values && source.image ? await loadBitmap(source.image) : null; // none: masks on black
      // an image alone (a test's overlays) is as large as it is
      const w = source.width || this.bitmap.width, h = source.height || this.bitmap.height;
      this.source = Object.assign({}, source, { masks: masks, width: w, height: h });
      this.layers = await Promise.all(masks.map(function (m) { return loadMask(m.png, w, h); }));
      this.base = M.h("canvas", {});
      this.base.width = w; this.base.height = h;
      this.overlay = M.h("canvas", {});
      this.overlay.width = w; this.overlay.height = h;
      this.outlineWidth = Math.max(1, Math.round(Math.max(w, h) / 500));
      if (this.values) this.window = Object.assign({}, this.values.window);
      this.renderBase();
      this.state.index = Math.min(Math.max(source.index || 0, 0), Math.max(masks.length - 1, 0));
      this.state.compare = null;
      this.setupControls();
      this.engine = this.histology && window.OpenSeadragon ? new SeadragonEngine(this) : new CanvasEngine(this);
      this.root.dataset.engine = this.engine.name;
      await this.engine.ready;
      this.refresh();
      this.fit();
    }

    close() {
      if (this.engine) this.engine.destroy();
      this.engine = null;
      this.source = null;
      this.stage.replaceChildren();
    }

    setupControls() {
      const masks = this.source.masks, self = this;
      this.windowTools.classList.toggle("d-none", !this.values);
      if (this.values) {
        this.presetSelect.replaceChildren.apply(this.presetSelect, this.presets().map(function (p, i) {
          return M.h("option", { value: i }, [p.name]);
        }).concat([M.h("option", { value: "", hidden: true }, [M.t("viewer.custom")])]));
        this.presetSelect.value = "0";
      }
      this.overlayTools.classList.toggle("d-none", !masks.length);
      this.thresholdTools.classList.toggle("d-none", !masks.length || !!this.options.thresholdInput);
      this.thresholdInput.max = String(Math.max(masks.length - 1, 0));
      this.thresholdInput.value = String(this.state.index);
      this.compareSelect.replaceChildren.apply(this.compareSelect, [M.h("option", { value: "" }, ["—"])].concat(
        masks.map(function (m, i) { return M.h("option", { value: i }, [m.threshold.toFixed(1)]); })));
      this.modeButtons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.mode === self.state.mode)); });
    }

    /** The window presets: the image's own window first (the organ's, as the model saw it), then the named ones. */
    presets() {
      if (!this.values) return [];
      const own = this.values.window;
      return [{ name: M.t("viewer.preset_image", { w: Math.round(own.width), l: Math.round(own.center) }), width: own.width, center: own.center }]
        .concat(PRESETS.map(function (p) {
          return { name: M.t(p.message, { w: p.width, l: p.center }), width: p.width, center: p.center };
        }));
    }

    // --- state changes -----------------------------------------------------------------------------------
    setThreshold(i) {
      if (!this.source || !this.layers.length) return;
      i = Math.min(Math.max(i, 0), this.layers.length - 1);
      this.state.index = i;
      if (Number(this.thresholdInput.value) !== i) this.thresholdInput.value = String(i);
      if (this.state.compare === i) this.state.compare = null;
      this.refresh();
      if (this.options.onThreshold) this.options.onThreshold(i);
    }

    flip(step) {
      this.setThreshold(this.state.index + step);
      // the slider's own listeners (the page's) hear it as if it had been moved
      if (this.options.thresholdInput) this.thresholdInput.dispatchEvent(new Event("input", { bubbles: true }));
    }

    setCompare(j) { this.state.compare = j === this.state.index ? null : j; this.refresh(); }
    setMode(mode) {
      this.state.mode = mode;
      this.modeButtons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.mode === mode)); });
      this.refresh();
    }
    setOpacity(o) { this.state.opacity = o; this.opacityInput.value = String(Math.round(o * 100)); this.engine && this.engine.opacity(); this.mirror(); }

    setWindow(center, width) {
      if (!this.values) return;
      this.window = { center: center, width: Math.max(1, width) };
      const match = this.presets().findIndex(function (p) { return p.center === center && p.width === width; });
      this.presetSelect.value = match >= 0 ? String(match) : "";
      this.renderBase();
      this.engine && this.engine.baseChanged();
      this.mirror();
    }

    setWindowing(on) {
      this.state.windowing = !!on && !!this.values;
      this.windowButton.setAttribute("aria-pressed", String(this.state.windowing));
      this.stage.classList.toggle("viewer2d-windowing", this.state.windowing);
    }

    // --- pixels --------------------------------------------------------------------------------------------
    renderBase() {
      const w = this.source.width, h = this.source.height, ctx = this.base.getContext("2d");
      if (!this.values) {
        ctx.fillStyle = "#000";
        ctx.fillRect(0, 0, w, h);
        if (this.bitmap) ctx.drawImage(this.bitmap, 0, 0, w, h);
        return;
      }
      const image = ctx.createImageData(w, h), px = image.data, v = this.values.data;
      const lo = this.window.center - this.window.width / 2, span = this.window.width, invert = this.values.invert;
      for (let i = 0; i < v.length; i++) {
        let g = Math.round(Math.min(Math.max((v[i] - lo) / span, 0), 1) * 255);
        if (invert) g = 255 - g;
        px[i * 4] = px[i * 4 + 1] = px[i * 4 + 2] = g;
        px[i * 4 + 3] = 255;
      }
      ctx.putImageData(image, 0, 0);
    }

    /** The overlay at image resolution: the mask at the current threshold (filled or its outline) in the first
        colour; with a second threshold, the pixels where the two masks differ in the second colour. */
    renderOverlay(target, index, compare, mode) {
      const w = this.source.width, h = this.source.height, ctx = target.getContext("2d");
      const image = ctx.createImageData(w, h), px = image.data;
      if (this.layers.length) {
        const mask = this.layers[index];
        const shown = mode === "outline" ? outline(mask, w, h, this.outlineWidth) : mask;
        const a = rgb(this.colours[0]), b = rgb(this.colours[1]);
        const other = compare === null ? null : this.layers[compare];
        for (let i = 0; i < mask.length; i++) {
          let c = null;
          if (other && mask[i] !== other[i]) c = b;
          else if (shown[i]) c = a;
          if (c) { px[i * 4] = c[0]; px[i * 4 + 1] = c[1]; px[i * 4 + 2] = c[2]; px[i * 4 + 3] = 255; }
        }
      }
      ctx.putImageData(image, 0, 0);
    }

    refresh() {
      if (!this.source || !this.engine) return;
      const s = this.state;
      this.renderOverlay(this.overlay, s.index, s.compare, s.mode);
      this.updateLegend();
      this.mirror();
      this.engine.overlayChanged();
    }

    /** What the overlay on screen shows, on root.dataset.overlay once it is drawn (the OSD engine draws later). */
    shown() {
      const d = this.root.dataset;
      d.overlay = [d.threshold, d.mode, d.compare || "-", this.colours[0]].join(" ");
    }

    /** A small picture of the anatomy with the mask at threshold `i` filled over it (the pages' small multiples). */
    thumbnail(i, side) {
      const w = this.source.width, h = this.source.height, k = side / Math.max(w, h);
      const layer = M.h("canvas", {});
      layer.width = w; layer.height = h;
      this.renderOverlay(layer, i, null, "fill");
      const c = M.h("canvas", { class: "viewer2d-thumb" });
      c.width = Math.max(1, Math.round(w * k)); c.height = Math.max(1, Math.round(h * k));
      const ctx = c.getContext("2d");
      ctx.drawImage(this.base, 0, 0, c.width, c.height);
      ctx.globalAlpha = 0.55;
      ctx.drawImage(layer, 0, 0, c.width, c.height);
      return c;
    }

    updateLegend() {
      const s = this.state, masks = this.source.masks, items = [];
      const swatch = function (colour, text, attrs) {
        const dot = M.h("span", { class: "viewer2d-swatch", "aria-hidden": "true" });
        dot.style.background = colour; // CSSOM, allowed by the pages' style-src 'self'
        return M.h("li", attrs || {}, [dot, " ", text]);
      };
      if (masks.length) {
        const t = masks[s.index].threshold.toFixed(1);
        items.push(swatch(this.colours[0], M.t(s.mode === "outline" ? "viewer.legend_outline" : "viewer.legend_mask",
          { label: this.source.label || "", t: t }), { "data-legend": "mask" }));
        if (s.compare !== null) {
          const u = masks[s.compare].threshold.toFixed(1);
          const [low, high] = Number(t) < Number(u) ? [t, u] : [u, t];
          let n = 0;
          const a = this.layers[s.index], b = this.layers[s.compare];
          for (let i = 0; i < a.length; i++) n += a[i] !== b[i] ? 1 : 0;
          items.push(swatch(this.colours[1], M.t("viewer.legend_difference", { low: low, high: high, n: n }), { "data-legend": "difference" }));
        }
      }
      (this.source.legend || []).forEach(function (entry) { items.push(swatch(entry.colour, entry.text, { "data-legend": entry.key })); });
      this.legend.replaceChildren.apply(this.legend, items);
    }

    /** The viewer's state on root.dataset (the pages' tests read it), and the visible read-outs. */
    mirror() {
      const d = this.root.dataset, s = this.state, masks = this.source ? this.source.masks : [];
      const zoom = this.engine ? this.engine.zoom() : 1;
      d.zoom = zoom.toFixed(3);
      d.mode = s.mode;
      d.threshold = masks.length ? masks[s.index].threshold.toFixed(1) : "";
      d.compare = s.compare === null || !masks.length ? "" : masks[s.compare].threshold.toFixed(1);
      d.opacity = String(s.opacity);
      // the canvas engine's view: scale, and where the image's top-left corner is on the stage (CSS px)
      d.view = s.scale.toFixed(4) + " " + s.tx.toFixed(1) + " " + s.ty.toFixed(1);
      d.orientation = this.source && this.source.orientation ? this.source.orientation.join(" ") : "";
      this.zoomLabel.textContent = Math.round(zoom * 100) + " %";
      if (this.values) {
        d.window = Math.round(this.window.center) + " " + Math.round(this.window.width);
        this.windowLabel.textContent = M.t("viewer.window_value", { w: Math.round(this.window.width), l: Math.round(this.window.center), unit: this.values.unit });
      } else {
        delete d.window;
      }
      if (this.thresholdLabel) this.thresholdLabel.textContent = d.threshold;
    }

    zoomBy(f, cx, cy) { if (this.engine) { this.engine.zoomBy(f, cx, cy); this.mirror(); } }
    panBy(fx, fy) { if (this.engine) { this.engine.panBy(fx, fy); this.mirror(); } }
    fit() { if (this.engine) { this.engine.fit(); this.mirror(); } }
    actualSize() { if (this.engine) { this.engine.actualSize(); this.mirror(); } }
  }

  /** Plain canvas: the view is a scale and an offset (screen = image × scale + offset). */
  class CanvasEngine {
    constructor(viewer) {
      this.name = "canvas";
      this.v = viewer;
      this.canvas = M.h("canvas", { class: "viewer2d-canvas" });
      viewer.stage.append(this.canvas);
      this.ready = Promise.resolve();
      const self = this, stage = viewer.stage;
      this.resizer = new ResizeObserver(function () { self.resize(); });
      this.resizer.observe(stage);
      this.onWheel = function (event) {
        event.preventDefault();
        const r = self.canvas.getBoundingClientRect();
        viewer.zoomBy(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - r.left, event.clientY - r.top);
      };
      this.onDown = function (event) {
        if (event.button !== 0) return;
        stage.focus();
        stage.setPointerCapture(event.pointerId);
        viewer.state.drag = { x: event.clientX, y: event.clientY, window: viewer.window && Object.assign({}, viewer.window) };
      };
      this.onMove = function (event) {
        const drag = viewer.state.drag;
        if (!drag) return;
        const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
        if (viewer.state.windowing && drag.window) {
          // right: a wider window; down: a higher level (as most workstations)
          viewer.setWindow(Math.round(drag.window.center + dy * drag.window.width / 200),
            Math.round(Math.max(1, drag.window.width * Math.pow(1.01, dx))));
        } else {
          viewer.state.tx += event.clientX - (drag.lastX || drag.x);
          viewer.state.ty += event.clientY - (drag.lastY || drag.y);
          self.draw();
          viewer.mirror();
        }
        drag.lastX = event.clientX; drag.lastY = event.clientY;
      };
      this.onUp = function () { viewer.state.drag = null; viewer.mirror(); };
      stage.addEventListener("wheel", this.onWheel, { passive: false });
      stage.addEventListener("pointerdown", this.onDown);
      stage.addEventListener("pointermove", this.onMove);
      stage.addEventListener("pointerup", this.onUp);
      stage.addEventListener("pointercancel", this.onUp);
      this.resize();
    }

    resize() {
      const r = this.v.stage.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
      const w = Math.max(1, Math.round(r.width)), h = Math.max(1, Math.round(r.height));
      if (this.cssW === w && this.cssH === h) return;
      const first = !this.cssW;
      this.cssW = w; this.cssH = h;
      this.canvas.width = Math.round(w * ratio); this.canvas.height = Math.round(h * ratio);
      if (!first && this.v.source) this.fit(); else this.draw();
    }

    draw() {
      const v = this.v, s = v.state, ctx = this.canvas.getContext("2d"), ratio = this.canvas.width / (this.cssW || 1);
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      if (!v.source) return;
      ctx.imageSmoothingEnabled = s.scale < 1; // magnified pixels stay square; shrunk images are averaged
      ctx.setTransform(s.scale * ratio, 0, 0, s.scale * ratio, s.tx * ratio, s.ty * ratio);
      ctx.drawImage(v.base, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = s.opacity;
      ctx.drawImage(v.overlay, 0, 0);
      ctx.globalAlpha = 1;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      this.labels(ctx);
    }

    /** The patient directions at the edges (when the image carried them): e.g. R left, L right, A top, P bottom. */
    labels(ctx) {
      const o = this.v.source.orientation;
      if (!o) return;
      const flip = function (s) { return s.split("").map(function (c) { return OPPOSITE[c] || c; }).join(""); };
      const w = this.cssW, h = this.cssH;
      ctx.font = "600 14px system-ui, sans-serif";
      ctx.fillStyle = "#ffd400";
      ctx.textBaseline = "middle";
      ctx.textAlign = "left"; ctx.fillText(flip(o[0]), 6, h / 2);
      ctx.textAlign = "right"; ctx.fillText(o[0], w - 6, h / 2);
      ctx.textAlign = "center";
      ctx.fillText(flip(o[1]), w / 2, 12);
      ctx.fillText(o[1], w / 2, h - 12);
    }

    zoom() { return this.v.state.scale; }

    zoomBy(f, cx, cy) {
      const s = this.v.state;
      if (cx === undefined) { cx = this.cssW / 2; cy = this.cssH / 2; }
      const scale = Math.min(Math.max(s.scale * f, MIN_ZOOM), MAX_ZOOM), k = scale / s.scale;
      s.tx = cx - (cx - s.tx) * k;
      s.ty = cy - (cy - s.ty) * k;
      s.scale = scale;
      this.draw();
    }

    panBy(fx, fy) {
      this.v.state.tx += fx * this.cssW;
      this.v.state.ty += fy * this.cssH;
      this.draw();
    }

    center(scale) {
      const s = this.v.state, src = this.v.source;
      s.scale = scale;
      s.tx = (this.cssW - src.width * scale) / 2;
      s.ty = (this.cssH - src.height * scale) / 2;
      this.draw();
    }

    fit() { const src = this.v.source; this.center(Math.min(this.cssW / src.width, this.cssH / src.height)); }
    actualSize() { this.center(1); }
    overlayChanged() { this.draw(); this.v.shown(); }
    baseChanged() { this.draw(); }
    opacity() { this.draw(); }

    destroy() {
      const stage = this.v.stage;
      this.resizer.disconnect();
      stage.removeEventListener("wheel", this.onWheel);
      stage.removeEventListener("pointerdown", this.onDown);
      stage.removeEventListener("pointermove", this.onMove);
      stage.removeEventListener("pointerup", this.onUp);
      stage.removeEventListener("pointercancel", this.onUp);
    }
  }

  /** OpenSeadragon: the image as a zoomable pyramid with a navigator; the overlay is a second image on it. */
  class SeadragonEngine {
    constructor(viewer) {
      this.name = "osd";
      this.v = viewer;
      const self = this;
      this.urls = [];
      this.seq = 0;
      this.current = null;
      const base = this.url(viewer.source.image instanceof Blob ? viewer.source.image : null) || viewer.source.image;
      this.osd = window.OpenSeadragon({
        element: viewer.stage,
        tileSources: { type: "image", url: base, buildPyramid: true },
        drawer: "canvas", // plain 2-D drawing: what the page and its tests read back
        showNavigationControl: false, // the viewer's own buttons, translated
        showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", navigatorAutoFade: false,
        imageSmoothingEnabled: false, maxZoomPixelRatio: 8, visibilityRatio: 0.5, animationTime: 0.2,
        gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
        crossOriginPolicy: false,
      });
      this.ready = new Promise(function (resolve, reject) {
        self.osd.addOnceHandler("open", function () { resolve(); });
        self.osd.addOnceHandler("open-failed", function (e) { reject(new Error(e.message)); });
      });
      this.osd.addHandler("animation", function () { viewer.mirror(); });
      this.osd.addHandler("animation-finish", function () { viewer.mirror(); });
    }

    url(blob) {
      if (!blob) return null;
      const url = URL.createObjectURL(blob);
      this.urls.push(url);
      return url;
    }

    /** The new overlay goes on top; once it is drawn the older ones are removed (or, when a newer one was
        asked for meanwhile, this one is), so flipping quickly through thresholds never leaves a stale one. */
    overlayChanged() {
      const v = this.v, self = this, seq = ++this.seq;
      this.osd.addTiledImage({
        tileSource: { type: "image", url: v.overlay.toDataURL("image/png"), buildPyramid: true },
        opacity: v.state.opacity,
        success: function (event) {
          const world = self.osd.world;
          if (seq !== self.seq) { world.removeItem(event.item); return; }
          for (let i = world.getItemCount() - 1; i >= 1; i--) {
            if (world.getItemAt(i) !== event.item) world.removeItem(world.getItemAt(i));
          }
          self.current = event.item;
          v.shown();
        },
      });
    }

    baseChanged() { /* histology comes windowed already: nothing to recompute */ }

    opacity() {
      if (this.current) this.current.setOpacity(this.v.state.opacity);
    }

    /** Screen pixels per image pixel; asked of the image itself (the viewport's answer is only exact for one). */
    zoom() {
      const image = this.osd.world.getItemAt(0);
      return image ? image.viewportToImageZoom(this.osd.viewport.getZoom(true)) : 1;
    }

    zoomBy(f) { this.osd.viewport.zoomBy(f); this.osd.viewport.applyConstraints(); }
    panBy(fx, fy) {
      const vp = this.osd.viewport, bounds = vp.getBounds();
      vp.panBy(new window.OpenSeadragon.Point(-fx * bounds.width, -fy * bounds.height));
    }
    fit() { this.osd.viewport.goHome(true); }
    actualSize() { this.osd.viewport.zoomTo(this.osd.world.getItemAt(0).imageToViewportZoom(1), null, true); }

    destroy() {
      this.osd.destroy();
      this.urls.forEach(function (u) { URL.revokeObjectURL(u); });
    }
  }

  const THRESHOLDS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];

  /** A result of the history as the viewer opens it: its masks (mask.png at each threshold, made from the
      stored map) and the image kept with it (image.png, values.npy), or none (masks on black). */
  async function storedResult(item) {
    const base = "/api/v1/segmentations/" + encodeURIComponent(item.id);
    const view = item.image_url ? await loadStoredView(item.image_url, base + "/values.npy")
      : { image: null, values: null, orientation: null };
    return {
      width: item.width, height: item.height, image: view.image, values: view.values, orientation: view.orientation,
      masks: THRESHOLDS.map(function (t) { return { threshold: t, png: base + "/mask.png?threshold=" + t.toFixed(1) }; }),
    };
  }

  /** A Bootstrap dialog with a viewer in it (the history: a result opened again; the model test: a case's
      overlays), a notice line above it and a section below (`extra`: the nuclei). */
  class ViewerDialog {
    constructor(box, options) {
      const self = this;
      this.box = box;
      this.title = M.h("h2", { class: "modal-title h5", id: box.id + "-title" });
      this.notice = M.h("p", { class: "small text-body-secondary d-none", role: "status" });
      this.extra = M.h("section", { class: "d-none mt-2" });
      const root = M.h("div", { id: box.id + "-viewer" });
      box.setAttribute("aria-labelledby", this.title.id);
      box.append(M.h("div", { class: "modal-dialog modal-dialog-scrollable" }, [M.h("div", { class: "modal-content" }, [
        M.h("div", { class: "modal-header" }, [this.title,
          M.h("button", { type: "button", class: "btn-close", "data-bs-dismiss": "modal", "aria-label": M.t("viewer.close") })]),
        M.h("div", { class: "modal-body" }, [this.notice, root, this.extra]),
      ])]));
      this.modal = new window.bootstrap.Modal(box);
      this.viewer = new Viewer2D(root, options);
      box.addEventListener("hidden.bs.modal", function () {
        self.viewer.close();
        if (options && options.onClose) options.onClose();
      });
    }

    /** Show the dialog and open `load()`'s source in it once the dialog is on screen (the stage has its size). */
    async open(title, load) {
      const box = this.box;
      this.title.textContent = title;
      this.say(null);
      const shown = new Promise(function (resolve) { box.addEventListener("shown.bs.modal", resolve, { once: true }); });
      this.modal.show();
      try {
        const source = await load();
        await shown;
        await this.viewer.open(source);
        return true;
      } catch (err) {
        this.say(M.t("viewer.failed", { error: M.describe(err) }));
        return false;
      }
    }

    say(text) {
      this.notice.textContent = text || "";
      this.notice.classList.toggle("d-none", !text);
    }
  }

  window.MedSeg.Viewer2D = Viewer2D;
  window.MedSeg.ViewerDialog = ViewerDialog;
  window.MedSeg.storedResult = storedResult;
  window.MedSeg.loadStoredView = loadStoredView;
  window.MedSeg.parseNpy = parseNpy;
})();
