/* A patient's trend on the history page (Chart.js, time axis from the date-fns adapter): real dates on the
   x-axis, one unit per line and per axis, never mixed: the organ volume in mL per study and label (each study
   at its saved threshold, else the organ's default: GET /api/v1/patients/{id}/trend → studies), and the 2-D
   images' area on axes of their own, in mm² where the image carried its pixel spacing, else px (→ points;
   filled where the doctor saved the threshold, hollow at the default). A study's point opens it in the
   viewer; the studies are listed under the chart with their links. */
"use strict";
(function () {
  const M = window.MedSeg;
  const COLOURS = ["#d62839", "#1d6fd8", "#2a9d5c", "#9b4dca", "#e07a10", "#008b8b"];
  const AREA_COLOURS = { mm2: "#6c757d", px: "#b8860b" };
  const DATE = "yyyy-MM-dd";

  function labelName(label) { return window.MedSegStudy ? window.MedSegStudy.labelName(label) : label; }
  function unitName(unit) { return M.t(unit === "mm2" ? "unit.mm2" : "unit.px"); }
  function day(iso) { const [y, m, d] = iso.split("-").map(Number); return new Date(y, m - 1, d).getTime(); }
  function isoDay(ms) { const d = new Date(ms); return d.getFullYear() + "-" + String(d.getMonth() + 1).padStart(2, "0") + "-" + String(d.getDate()).padStart(2, "0"); }

  /** Chart.js datasets and axes: a line per organ label in mL (axis "ml"), a line per area unit (axes "mm2",
      "px"); each point keeps what its tooltip and click need. */
  function series(body) {
    const datasets = [], axes = {};
    const byLabel = new Map();
    for (const s of body.studies || []) {
      for (const [label, ml] of Object.entries(s.volumes_ml)) {
        const key = s.organ + "/" + label;
        if (!byLabel.has(key)) byLabel.set(key, { label: label, organ: s.organ, points: [] });
        byLabel.get(key).points.push({ x: day(s.study_date), y: ml, study: s });
      }
    }
    let i = 0;
    for (const line of byLabel.values()) {
      const colour = COLOURS[i++ % COLOURS.length];
      datasets.push({
        label: M.t("history.trend_volume", { label: labelName(line.label) }), data: line.points, yAxisID: "ml",
        unit: M.t("unit.ml"), borderColor: colour, backgroundColor: colour, pointRadius: 5, pointHoverRadius: 7,
      });
      axes.ml = M.t("history.trend_volume", { label: M.t("studies.volume") });
    }
    const byUnit = new Map();
    for (const p of body.points || []) {
      if (!byUnit.has(p.unit)) byUnit.set(p.unit, []);
      byUnit.get(p.unit).push({ x: new Date(p.at).getTime(), y: p.area, point: p });
    }
    for (const [unit, points] of byUnit) {
      const colour = AREA_COLOURS[unit] || "#6c757d";
      datasets.push({
        label: M.t("history.trend_area", { unit: unitName(unit) }), data: points, yAxisID: unit, unit: unitName(unit),
        borderColor: colour, backgroundColor: points.map(function (p) { return p.point.chosen ? colour : "#ffffff"; }),
        borderDash: [4, 3], pointRadius: 4, pointBorderWidth: 2,
      });
      axes[unit] = M.t("history.trend_area", { unit: unitName(unit) });
    }
    return { datasets: datasets, axes: axes };
  }

  function tooltip(context) {
    const raw = context.raw, ds = context.dataset;
    const source = raw.study || raw.point;
    const date = raw.study ? raw.study.study_date + (raw.study.date_from === "upload" ? " (" + M.t("history.trend_upload_day") + ")" : "") : isoDay(raw.x);
    return M.t("history.trend_point", {
      date: date, value: M.number(raw.y, raw.study ? 1 : 0), unit: ds.unit,
      t: Number(source.threshold).toFixed(1), saved: source.chosen ? M.t("history.trend_saved") : "",
    });
  }

  function studyList(studies) {
    if (!studies.length) return null;
    return M.h("ul", { class: "list-unstyled small mt-2", id: "trend-studies" }, studies.map(function (s) {
      const volumes = Object.entries(s.volumes_ml).map(function (e) {
        return M.t("volume.volume", { label: labelName(e[0]), ml: M.number(e[1], 1) });
      });
      const text = M.t("history.trend_study", {
        date: s.study_date, volumes: volumes.join(" · "), t: Number(s.threshold).toFixed(1),
        state: M.t(s.chosen ? "volume.saved" : "volume.default"),
      });
      return M.h("li", { "data-study-id": s.study_id }, [text + " · ",
        M.h("a", { href: "/studies/" + encodeURIComponent(s.study_id), "data-action": "open-study", text: M.t("studies.open") })]);
    }));
  }

  let chart = null;
  /** Draw the trend into `holder` (replacing what was there); `label` names the chart for screen readers. */
  function render(holder, body, label) {
    if (chart) { chart.destroy(); chart = null; }
    const built = series(body);
    if (!built.datasets.length) { holder.replaceChildren(M.h("p", { text: M.t("history.trend_none") })); return null; }
    const canvas = M.h("canvas", { id: "trend-chart", role: "img", "aria-label": label });
    holder.replaceChildren(M.h("div", { class: "trend-chart" }, [canvas]), studyList(body.studies || []) || "");
    const scales = {
      x: {
        type: "time", time: { tooltipFormat: DATE, displayFormats: { day: DATE, week: DATE, month: "yyyy-MM", quarter: "yyyy-MM", year: "yyyy" } },
        title: { display: true, text: M.t("history.trend_date") }, ticks: { maxRotation: 0, autoSkip: true },
      },
    };
    let side = "left";
    for (const [id, title] of Object.entries(built.axes)) {
      scales[id] = { type: "linear", position: side, beginAtZero: true, title: { display: true, text: title }, grid: { drawOnChartArea: side === "left" } };
      side = "right";
    }
    chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets: built.datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, parsing: false, normalized: true,
        interaction: { mode: "nearest", intersect: true },
        scales: scales,
        plugins: { legend: { position: "bottom" }, tooltip: { callbacks: { label: tooltip } } },
        onClick: function (_, elements) {
          const hit = elements[0];
          const raw = hit && chart.data.datasets[hit.datasetIndex].data[hit.index];
          if (raw && raw.study) location.assign("/studies/" + encodeURIComponent(raw.study.study_id));
        },
      },
    });
    return chart;
  }

  window.MedSegTrend = { render: render, series: series };
})();
