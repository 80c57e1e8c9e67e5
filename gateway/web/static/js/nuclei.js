/* Nuclei of a histology result, as pathologists count them: how many at the threshold on screen (touching
   nuclei split on the server: GET /api/v1/segmentations/{id}/nuclei) and a histogram of their areas (µm² when
   the image carried its pixel spacing, else px). A small SVG bar chart: no chart library on the pages yet. */
"use strict";
(function () {
  const M = window.MedSeg;
  const BINS = 16;

  /** Bars of `values` in BINS equal bins from 0 to the 98th percentile (larger ones counted in the last). */
  function histogram(values) {
    const sorted = values.slice().sort(function (a, b) { return a - b; });
    const top = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.98))] || 1;
    const width = top / BINS, counts = new Array(BINS).fill(0);
    values.forEach(function (v) { counts[Math.min(BINS - 1, Math.floor(v / width))] += 1; });
    return { counts: counts, width: width, median: sorted[Math.floor(sorted.length / 2)] };
  }

  function chart(h, unit, label) {
    const W = 480, H = 200, L = 44, R = 10, T = 10, B = 34, ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("class", "nuclei-histogram");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    function add(tag, attrs, text) {
      const el = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      if (text !== undefined) el.textContent = text;
      svg.appendChild(el);
      return el;
    }
    const most = Math.max.apply(null, h.counts) || 1, bw = (W - L - R) / BINS;
    h.counts.forEach(function (n, i) {
      const bh = (n / most) * (H - T - B);
      const bar = add("rect", { x: L + i * bw + 1, y: H - B - bh, width: bw - 2, height: bh, class: "bar" });
      const title = document.createElementNS(ns, "title");
      title.textContent = Math.round(i * h.width) + "–" + Math.round((i + 1) * h.width) + " " + unit + ": " + n;
      bar.appendChild(title);
    });
    add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
    add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
    add("text", { x: L - 6, y: T + 8, "text-anchor": "end" }, String(most));
    add("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0");
    [0, BINS / 2, BINS].forEach(function (i) {
      add("text", { x: L + i * bw, y: H - B + 14, "text-anchor": "middle" }, String(Math.round(i * h.width)));
    });
    add("text", { x: (L + W - R) / 2, y: H - 3, "text-anchor": "middle" }, M.t("nuclei.area_axis", { unit: unit }));
    return svg;
  }

  /** The panel in `box` for the result `id` at `threshold`; answers that arrive after a newer request are dropped. */
  function NucleiPanel(box) {
    this.box = box;
    this.seq = 0;
  }

  NucleiPanel.prototype.show = async function (id, threshold) {
    const seq = ++this.seq, box = this.box, t = threshold.toFixed(1);
    box.classList.remove("d-none");
    box.setAttribute("aria-busy", "true");
    try {
      const q = new URLSearchParams({ threshold: t });
      const body = await M.api("GET", "/api/v1/segmentations/" + encodeURIComponent(id) + "/nuclei?" + q);
      if (seq !== this.seq) return;
      const um2 = Array.isArray(body.areas_um2);
      const unit = um2 ? "µm²" : M.t("unit.px");
      const areas = um2 ? body.areas_um2 : body.areas_px;
      const heading = M.h("p", { class: "mb-1" }, [
        M.t("nuclei.count", { t: t }), " ", M.h("strong", { "data-field": "nuclei-count", text: String(body.count) }),
      ]);
      if (!areas.length) { box.replaceChildren(heading); return; }
      const h = histogram(areas);
      box.replaceChildren(heading,
        M.h("p", { class: "small text-body-secondary mb-1", text: M.t("nuclei.median", { area: Math.round(h.median), unit: unit }) }),
        chart(h, unit, M.t("nuclei.histogram", { t: t, n: body.count })));
    } catch (err) {
      if (seq === this.seq) box.replaceChildren(M.h("p", { class: "text-body-secondary", text: M.describe(err) }));
    } finally {
      if (seq === this.seq) box.removeAttribute("aria-busy");
    }
  };

  NucleiPanel.prototype.hide = function () { this.seq++; this.box.classList.add("d-none"); this.box.replaceChildren(); };

  window.MedSeg.NucleiPanel = NucleiPanel;
})();
