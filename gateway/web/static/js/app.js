/* MedSeg page helpers: the JSON API with the session's CSRF token, the API's error shape turned into a
   readable message, translated strings, and DOM building that only ever sets text (never HTML). */
"use strict";
(function () {
  const messagesEl = document.getElementById("medseg-messages");
  const MESSAGES = messagesEl ? JSON.parse(messagesEl.textContent) : {};
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');

  const has = function (key) { return Object.prototype.hasOwnProperty.call(MESSAGES, key); };

  function t(key, params) {
    let text = has(key) ? MESSAGES[key] : key;
    if (params) {
      for (const [name, value] of Object.entries(params)) text = text.split("{" + name + "}").join(String(value));
    }
    return text;
  }

  /** An organ's name in the page's language (the server's display name for an organ it has no word for). */
  function organ(name) { return has("organ." + name) ? t("organ." + name) : name; }

  /** "1.0 (default)": a model version with its state, in the page's language. */
  function versionLabel(v) { return t("models.version_option", { version: v.version, state: t("models.state." + v.state) }); }

  /** A number as people read it: integers as they are, fractions to `digits` places; "—" for none. */
  function number(x, digits) {
    if (typeof x !== "number" || !isFinite(x)) return "—";
    return Number.isInteger(x) ? String(x) : x.toFixed(digits === undefined ? 3 : digits);
  }

  class ApiError extends Error {
    constructor(status, code, message, params) {
      super(message);
      this.status = status;
      this.code = code;
      this.params = params || {};
    }
  }

  // The error's values, worded for the page: organs and roles by name, byte limits in KB/MB, field names.
  const BYTE_LIMITS = ["file_too_large", "dataset_file_too_large", "dataset_too_large"];
  function errorParams(err) {
    const p = Object.assign({}, err.params);
    if (p.organ) p.organ = organ(p.organ);
    if (p.dataset_organ) p.dataset_organ = organ(p.dataset_organ);
    if (p.role && has("role." + p.role)) p.role = t("role." + p.role);
    if (p.state && has("training.status." + p.state)) p.state = t("training.status." + p.state);
    if (p.field && has("field." + p.field)) p.field = t("field." + p.field);
    if (typeof p.limit === "number" && BYTE_LIMITS.indexOf(err.code) >= 0) p.limit = bytes(p.limit);
    for (const name of ["images", "labels"]) if (p[name] === "") p[name] = "—";
    return p;
  }

  /** A message a person can act on, in the page's language: the words for the error's code (a schema's
      failed field by its rule), filled with the error's values; the API's own message for a code the pages
      do not know yet. */
  function describe(err) {
    if (!(err instanceof ApiError)) return t("common.network");
    const rule = err.code === "invalid_input" && err.params && err.params.rule ? "err.invalid_input." + err.params.rule : null;
    const key = rule && has(rule) ? rule : "err." + err.code;
    if (has(key) && (key !== "err.invalid_input" || err.params.field)) return t(key, errorParams(err));
    return t("err.prefix") + " " + err.message;
  }

  function errorFrom(status, bodyText) {
    let code = "error", message = "HTTP " + status, params = {};
    try {
      const body = JSON.parse(bodyText);
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
        params = body.error.params || {};
      }
    } catch (_) { /* not JSON (a proxy's page): keep the status; never show its markup */ }
    return new ApiError(status, code, message, params);
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (csrfMeta) h["X-CSRF-Token"] = csrfMeta.content;
    return h;
  }

  /** fetch() against /api/v1: resolves to the parsed JSON (or null), rejects with an ApiError. */
  async function api(method, path, options) {
    options = options || {};
    const init = { method: method, headers: headers(options.headers), credentials: "same-origin" };
    if (options.json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
    } else if (options.form) {
      init.body = options.form;
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, "network", t("common.network"));
    }
    const text = await response.text();
    if (!response.ok) {
      const err = errorFrom(response.status, text);
      if (response.status === 401 && !options.noRedirect) signInAgain();
      throw err;
    }
    return text ? JSON.parse(text) : null;
  }

  /** A multipart upload with progress (fetch cannot report upload progress). */
  function upload(path, form, onProgress) {
    return new Promise(function (resolve, reject) {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      const h = headers();
      for (const name of Object.keys(h)) xhr.setRequestHeader(name, h[name]);
      xhr.upload.onprogress = function (e) { if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total); };
      xhr.onload = function () {
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve(xhr.responseText ? JSON.parse(xhr.responseText) : null);
        } else {
          if (xhr.status === 401) signInAgain();
          reject(errorFrom(xhr.status, xhr.responseText));
        }
      };
      xhr.onerror = function () { reject(new ApiError(0, "network", t("common.network"))); };
      xhr.send(form);
    });
  }

  function signInAgain() {
    const here = location.pathname + location.search;
    setTimeout(function () { location.assign("/sign-in?next=" + encodeURIComponent(here)); }, 1500);
  }

  /** Element builder: text children become text nodes, so data from the API is never parsed as HTML. */
  function h(tag, attrs, children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of [].concat(children || [])) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function show(el, text, kind) {
    if (!el) return;
    el.textContent = text;
    if (kind) el.className = "alert alert-" + kind;
    el.classList.remove("d-none");
  }
  function hide(el) { if (el) { el.classList.add("d-none"); el.textContent = ""; } }
  function showError(el, err) { show(el, typeof err === "string" ? err : describe(err), "danger"); }

  function bytes(n) {
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  /** Check a chosen file's type and size before sending it; returns a message, or null when it is fine. */
  function checkFile(file, extensions, limit) {
    if (!file) return t("common.choose_file");
    const name = file.name.toLowerCase();
    if (extensions && !extensions.some(function (ext) { return name.endsWith(ext); })) {
      return t("common.file_type", { name: file.name, types: extensions.join(", ") });
    }
    if (limit && file.size > limit) return t("common.file_too_big", { name: file.name, size: bytes(file.size), limit: bytes(limit) });
    return null;
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString(document.documentElement.lang);
  }

  function busy(button, isBusy, label) {
    if (!button) return;
    if (isBusy) {
      button.dataset.label = button.textContent;
      button.textContent = label || t("common.loading");
      button.disabled = true;
    } else {
      if (button.dataset.label) button.textContent = button.dataset.label;
      button.disabled = false;
    }
  }

  function b64ToBlob(b64, type) {
    const raw = atob(b64);
    const buf = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) buf[i] = raw.charCodeAt(i);
    return new Blob([buf], { type: type || "application/octet-stream" });
  }

  /** A small SVG line plot: series = [{points: [[x, y], ...], label, cls}], with axes and ticks. */
  function plot(svgParent, series, opts) {
    opts = opts || {};
    const W = 480, H = 240, L = 56, R = 12, T = 12, B = 34;
    const ns = "http://www.w3.org/2000/svg";
    const all = [].concat.apply([], series.map(function (s) { return s.points; }));
    if (!all.length) return null;
    const xs = all.map(function (p) { return p[0]; }), ys = all.map(function (p) { return p[1]; });
    const x0 = opts.xMin !== undefined ? opts.xMin : Math.min.apply(null, xs);
    const x1 = opts.xMax !== undefined ? opts.xMax : Math.max.apply(null, xs);
    const y0 = opts.yMin !== undefined ? opts.yMin : Math.min(0, Math.min.apply(null, ys));
    const y1 = opts.yMax !== undefined ? opts.yMax : Math.max.apply(null, ys) || 1;
    const sx = function (x) { return L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R); };
    const sy = function (y) { return H - B - (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0)) * (H - T - B); };
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("class", "plot");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", opts.label || "");
    function add(tag, attrs, text) {
      const el = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      if (text !== undefined) el.textContent = text;
      svg.appendChild(el);
      return el;
    }
    add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
    add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
    for (let i = 0; i <= 4; i++) {
      const y = y0 + (y1 - y0) * i / 4;
      add("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end" }, Math.abs(y1) >= 100 ? Math.round(y) : y.toFixed(2));
    }
    const xticks = opts.xTicks || [x0, (x0 + x1) / 2, x1];
    for (const x of xticks) add("text", { x: sx(x), y: H - B + 16, "text-anchor": "middle" }, opts.xFormat ? opts.xFormat(x) : x);
    if (opts.xLabel) add("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle" }, opts.xLabel);
    series.forEach(function (s) {
      const d = s.points.map(function (p, i) { return (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" ");
      add("path", { d: d, class: "line " + (s.cls || "") });
      s.points.forEach(function (p) {
        const dot = add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, class: p[2] ? "best" : "dot" });
        const title = document.createElementNS(ns, "title");
        title.textContent = (s.label ? s.label + ": " : "") + p[0] + " → " + Number(p[1]).toFixed(3);
        dot.appendChild(title);
      });
    });
    svgParent.replaceChildren(svg);
    return svg;
  }

  /** Loaders that fill a list after a fetch can overlap (the page's first load and a change of organ): `const turn =
      M.latest();` once, then `const mine = turn();` before the fetch and `if (!mine()) return;` after it, so a call
      overtaken by a later one puts nothing on the page (two overlapping loads listed every version twice). */
  function latest() {
    let calls = 0;
    return function () { const call = ++calls; return function () { return call === calls; }; };
  }

  window.MedSeg = {
    t, api, upload, h, show, hide, showError, describe, checkFile, bytes, when, busy, b64ToBlob, plot, ApiError,
    organ, versionLabel, number, latest,
  };

  // The organ a person works on follows them from page to page (this browser remembers the last choice);
  // until they choose, the page starts on the organ the server picked (the first they have data for).
  const ORGAN_KEY = "medseg.organ";
  document.querySelectorAll('select[data-remember="organ"]').forEach(function (select) {
    let remembered = null;
    try { remembered = localStorage.getItem(ORGAN_KEY); } catch (_) { /* storage off: the server's default */ }
    if (remembered && Array.from(select.options).some(function (o) { return o.value === remembered; })) select.value = remembered;
    select.addEventListener("change", function () {
      try { localStorage.setItem(ORGAN_KEY, select.value); } catch (_) { /* not remembered */ }
    });
  });

  // Tables marked .table-stack become one card per row on a phone (app.css): each cell shows its column's
  // heading beside it, taken from the table's own header whenever the page (re)fills the rows.
  function labelCells(table) {
    const headings = Array.from(table.querySelectorAll("thead th")).map(function (th) { return th.textContent.trim(); });
    table.querySelectorAll("tbody tr").forEach(function (row) {
      Array.from(row.children).forEach(function (cell, i) {
        if (cell.colSpan === 1 && headings[i]) cell.setAttribute("data-label", headings[i]);
      });
    });
  }
  document.querySelectorAll("table.table-stack").forEach(function (table) {
    labelCells(table);
    new MutationObserver(function () { labelCells(table); }).observe(table.tBodies[0] || table, { childList: true });
  });

  // Said once, on the first page after signing in: the account was approved since the last sign-in.
  try {
    if (csrfMeta && sessionStorage.getItem("medseg.approved")) {
      sessionStorage.removeItem("medseg.approved");
      show(document.getElementById("page-alert"), t("auth.approved"), "success");
    }
  } catch (_) { /* storage off: nothing to say */ }

  // Language links: a signed-in person's choice is saved to the account first (PATCH with the CSRF token),
  // so every browser they sign in on uses it; the link itself then sets this browser's cookie.
  document.addEventListener("click", async function (event) {
    const link = event.target.closest ? event.target.closest("a[data-language]") : null;
    if (!link || !csrfMeta || event.defaultPrevented || event.button !== 0 || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    try { await api("PATCH", "/api/v1/users/me", { json: { language: link.dataset.language }, noRedirect: true }); }
    catch (_) { /* not saved to the account: this browser still switches */ }
    location.assign(link.href);
  });

  const signOut = document.getElementById("sign-out");
  if (signOut) {
    signOut.addEventListener("click", async function () {
      try { await api("POST", "/api/v1/auth/sign-out", { noRedirect: true }); } catch (_) { /* gone already */ }
      location.assign("/sign-in");
    });
  }
})();
