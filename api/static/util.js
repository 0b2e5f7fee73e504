// trajscope dashboard: small helpers (DOM, fetch, formatting, downloads). Plain JS, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setText(sel, text) {
  // set a node's text if it is still on screen (a late answer may arrive after navigating away)
  const node = document.querySelector(sel);
  if (node) node.textContent = text;
}

function axisNumber(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-2 || a >= 1e5)) return v.toExponential(0);
  return Number.isInteger(v) ? v.toLocaleString("en") : String(+v.toPrecision(3));
}

// a chart legend's value (uPlot's series.value): as fmt writes it, "–" where a series has none
const legendNumber = (u, v) => fmt(v);

async function getJSON(url) {
  let r;
  try {
    r = await fetch(url, { cache: "no-store" });
  } catch (err) {  // no answer at all (the server stopped, the network went away): say so, not "Failed to fetch"
    throw new Error(`cannot reach the server (${err.message})`);
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || `${url}: HTTP ${r.status}`);
  return body;
}

function qs(params) {
  const parts = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

// A value as every table, legend and note of the dashboard writes it (the axes' ticks are shorter: axisNumber):
// with thousands separators, an integer whole, another number to 4 significant digits without trailing zeros (0.5,
// 0.01235, 1,235, 12,350); below 0.001 or from 10^15 on (once rounded so) in powers of ten (1.5e-5, 1e+21)
function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return String(v);
    const r = Number.isInteger(v) ? v : +v.toPrecision(4);
    const a = Math.abs(r);
    if (a >= 1e15 || (a < 1e-3 && r !== 0)) return r.toExponential();
    return r.toLocaleString("en", Number.isInteger(r) ? {} : { maximumSignificantDigits: 4 });
  }
  if (Array.isArray(v)) return v.map(fmt).join(", ");
  return String(v);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

// "committed / planned" states ("/ ?" while a run of unknown length records)
const stepsText = (run) => `${fmt(run.committed_steps)} / ${run.planned_states == null ? "?" : fmt(run.planned_states)}`;

// a run that may still grow: marked running and held by a writer (a killed producer's run is `writer_gone`)
const isLive = (run) => run.status === "running" && !run.writer_gone;

function seconds(run) {
  // wall-clock duration: created → updated (finished runs) or → now (running runs)
  const t0 = Date.parse(run.created || "");
  const t1 = isLive(run) ? Date.now() : Date.parse(run.updated || "");
  return Number.isFinite(t0) && Number.isFinite(t1) && t1 >= t0 ? (t1 - t0) / 1000 : null;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function save(name, blob) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
}

// one CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break (labels such as
// "cos(w̄+, x+)" or a legend's "train.steps=2,000"), its quotes doubled
const csvField = (v) => (/[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);

function tableCSV(names, columns) {
  // columns: arrays of equal length; null → empty cell
  const rows = [names.map((n) => csvField(String(n))).join(",")];
  for (let i = 0; i < columns[0].length; i++) {
    rows.push(columns.map((c) => (c[i] === null || c[i] === undefined ? "" : String(c[i]))).join(","));
  }
  return rows.join("\n") + "\n";
}

// What a poll's failure shows, and its clearing once a later poll gets through: `#error` is cleared only
// when a poll put its message there (an error of the page itself stays).
function pollFailed(err) {
  window.trajscope.pollError = `${err.message}; retrying`;
  setText("#error", window.trajscope.pollError);
  setText("#live", "");
}

function pollWorked() {
  const node = document.querySelector("#error");
  if (window.trajscope.pollError && node && node.textContent === window.trajscope.pollError) node.textContent = "";
  window.trajscope.pollError = null;
}

function tableNPY(columns) {
  // a (rows, columns) float64 array in NumPy's .npy format 1.0 (null → NaN)
  const rows = columns[0].length, cols = columns.length;
  let header = `{'descr': '<f8', 'fortran_order': False, 'shape': (${rows}, ${cols}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += " ".repeat(pad % 64) + "\n";
  const buf = new ArrayBuffer(10 + header.length + 8 * rows * cols);
  const bytesView = new Uint8Array(buf);
  bytesView.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0);
  new DataView(buf).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) bytesView[10 + i] = header.charCodeAt(i);
  const data = new Float64Array(buf, 10 + header.length);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const v = columns[j][i];
      data[i * cols + j] = v === null || v === undefined ? NaN : v;
    }
  }
  return new Blob([buf], { type: "application/x-npy" });
}

// Append a series answer ({x, series}) to a source's data, keeping only rows after step `last` (null: all).
// A column missing on one side is filled with null, so every column stays aligned with x.
function appendRows(data, body, last) {
  const keep = body.x.map((x) => last === null || x > last);
  const n = keep.filter(Boolean).length;
  if (!n) return;
  const pick = (arr) => arr.filter((_, i) => keep[i]);
  const before = data.x.length;
  data.x = data.x.concat(pick(body.x));
  for (const k of new Set([...Object.keys(data.series), ...Object.keys(body.series)])) {
    const old = data.series[k] || new Array(before).fill(null);
    data.series[k] = old.concat(body.series[k] ? pick(body.series[k]) : new Array(n).fill(null));
  }
}

// Min–max downsampling of {x, series} to at most 2·points rows, as the server's
// trajscope.analysis.downsample.minmax_downsample: `points` equal buckets on u(x) = x - x0 (linear) or
// log(1 + x - x0) (log); per bucket its first and last x, and per series the bucket's min and max in
// the order they occur (null/NaN ignored; a bucket of one row keeps that row).
function minmaxDownsample(data, points, scale) {
  const x = data.x, n = x.length;
  if (n <= 2 * points) return data;
  const x0 = x[0];
  const u = (v) => (scale === "log" ? Math.log1p(v - x0) : v - x0);
  const span = u(x[n - 1]);
  const starts = [];
  let prev = -1;
  for (let i = 0; i < n; i++) {
    const b = span > 0 ? Math.min(points - 1, Math.floor((points * u(x[i])) / span)) : 0;
    if (b !== prev) { starts.push(i); prev = b; }
  }
  const out = { x: [], series: {} };
  for (const k of Object.keys(data.series)) out.series[k] = [];
  for (let s = 0; s < starts.length; s++) {
    const a = starts[s], e = (s + 1 < starts.length ? starts[s + 1] : n) - 1;
    out.x.push(x[a]);
    if (e > a) out.x.push(x[e]);
    for (const [k, vals] of Object.entries(data.series)) {
      let lo = null, hi = null, ilo = -1, ihi = -1;
      for (let i = a; i <= e; i++) {
        const v = vals[i];
        if (v === null || v === undefined || Number.isNaN(v)) continue;
        if (lo === null || v < lo) { lo = v; ilo = i; }
        if (hi === null || v > hi) { hi = v; ihi = i; }
      }
      if (e === a) out.series[k].push(lo);
      else if (ilo <= ihi) out.series[k].push(lo, hi);
      else out.series[k].push(hi, lo);
    }
  }
  return out;
}
