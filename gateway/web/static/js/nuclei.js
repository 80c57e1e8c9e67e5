/* Nuclei of a histology result, as pathologists count them: how many at the threshold on screen (touching
   nuclei split on the server: GET /api/v1/segmentations/{id}/nuclei) and a histogram of their areas (µm² when
   the image carried its pixel spacing, else px), drawn with Chart.js. */
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

  /** The histogram as a Chart.js bar chart (npm chart.js, bundled by `make assets`) in a new canvas. */
  function chart(h, unit, label) {
    const canvas = M.h("canvas", { role: "img", "aria-label": label });
    const holder = M.h("div", { class: "nuclei-histogram" }, [canvas]);
    const labels = h.counts.map(function (_, i) { return Math.round(i * h.width) + "–" + Math.round((i + 1) * h.width); });
    const chartInstance = new window.Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: [{ label: M.t("nuclei.title"), data: h.counts, backgroundColor: "#198754" }] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { display: false } },
        scales: {
          x: { title: { display: true, text: M.t("nuclei.area_axis", { unit: unit }) }, ticks: { maxRotation: 0, autoSkip: true } },
          y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: M.t("nuclei.title") } },
        },
      },
    });
    return { holder: holder, chart: chartInstance };
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
      if (this.chart) { this.chart.destroy(); this.chart = null; }
      if (!areas.length) { box.replaceChildren(heading); return; }
      const h = histogram(areas);
      const drawn = chart(h, unit, M.t("nuclei.histogram", { t: t, n: body.count }));
      box.replaceChildren(heading,
        M.h("p", { class: "small text-body-secondary mb-1", text: M.t("nuclei.median", { area: Math.round(h.median), unit: unit }) }),
        drawn.holder);
      this.chart = drawn.chart;
    } catch (err) {
      if (seq === this.seq) box.replaceChildren(M.h("p", { class: "text-body-secondary", text: M.describe(err) }));
    } finally {
      if (seq === this.seq) box.removeAttribute("aria-busy");
    }
  };

  NucleiPanel.prototype.hide = function () {
    this.seq++;
    if (this.chart) { this.chart.destroy(); this.chart = null; }
    this.box.classList.add("d-none");
    this.box.replaceChildren();
  };

  window.MedSeg.NucleiPanel = NucleiPanel;
})();
