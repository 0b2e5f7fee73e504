// trajscope dashboard: the runs, and per run its summary and figures. Plain JS, no build step.
// A live run (status "running") is polled and its figures redrawn when more steps are committed.
"use strict";

const REFRESH_MS = 3000;
let timer = null;
let shown = null; // {run, committed, status} of the run page on screen

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || `${url}: HTTP ${r.status}`);
  return body;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return v.toLocaleString("en");
    return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toPrecision(4);
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

function statusCell(run) {
  const td = el("td", { class: `status-${run.status}` }, run.status);
  if (run.error) td.title = run.error;
  return td;
}

function schedule(fn) {
  clearTimeout(timer);
  timer = setTimeout(fn, REFRESH_MS);
}

async function showRuns() {
  shown = null;
  const data = await getJSON("/api/runs?size=true");
  $("#root").textContent = data.root;
  const rows = data.runs.map((run) => el("tr", { "data-run": run.run_id },
    el("td", {}, el("a", { href: `#/run/${encodeURIComponent(run.run_id)}` }, run.run_id)),
    statusCell(run),
    el("td", { class: "num" }, `${fmt(run.committed_steps)} / ${fmt(run.capacity)}`),
    el("td", {}, el("progress", { max: "1", value: String(run.progress ?? 0) })),
    el("td", {}, run.created ?? "–"),
    el("td", { class: "num" }, bytes(run.size_bytes)),
  ));
  const table = el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ...["run", "status", "steps", "progress", "created", "size"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
  const view = $("#view");
  view.replaceChildren(data.runs.length ? table : el("p", { class: "muted" }, "no runs under this root yet"));
  const live = data.runs.some((r) => r.status === "running");
  $("#live").textContent = live ? "live: refreshing" : "";
  schedule(route);
}

function summaryTable(result) {
  const vars = (result && result.variables) || {};
  const rows = Object.entries(vars)
    .filter(([, v]) => v.shape.length === 0)
    .map(([name, v]) => el("tr", {},
      el("td", {}, name),
      el("td", { class: "num" }, fmt(v.values)),
      el("td", { class: `kind-${v.attrs.kind || ""}` }, v.attrs.kind || ""),
      el("td", { class: "muted" }, v.attrs.status || v.attrs.units || "")));
  return el("table", { id: "summary" },
    el("thead", {}, el("tr", {}, ...["quantity", "value", "kind", "note"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

async function showRun(runId) {
  const run = await getJSON(`/api/runs/${encodeURIComponent(runId)}`);
  const again = shown && shown.run === runId;
  const changed = !again || shown.committed !== run.committed_steps || shown.status !== run.status;
  $("#live").textContent = run.status === "running" ? "live: refreshing" : "";
  if (!changed) { schedule(route); return; }
  shown = { run: runId, committed: run.committed_steps, status: run.status };
  const version = `${run.status}-${run.committed_steps}`;
  const info = el("table", { id: "info" }, el("tbody", {},
    el("tr", {}, el("th", {}, "status"), statusCell(run)),
    el("tr", {}, el("th", {}, "steps committed"), el("td", { class: "num", id: "committed" }, `${fmt(run.committed_steps)} / ${fmt(run.capacity)}`)),
    el("tr", {}, el("th", {}, "created"), el("td", {}, run.created ?? "–")),
    el("tr", {}, el("th", {}, "size"), el("td", {}, bytes(run.size_bytes))),
    el("tr", {}, el("th", {}, "open remotely"), el("td", {}, el("code", {}, `xr.open_zarr("${location.origin}/zarr/${run.run_id}")`))),
    ...Object.entries(run.config).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, fmt(v))))));
  const parts = [el("h2", {}, run.run_id), info];
  if (run.error) parts.push(el("p", { id: "run-error", class: "status-failed" }, run.error));
  const [quantities, plots] = await Promise.all([
    getJSON(`/api/runs/${encodeURIComponent(runId)}/analysis`),
    getJSON(`/api/runs/${encodeURIComponent(runId)}/plots?check=true`),
  ]);
  if (run.committed_steps > 0 && quantities.items.summary) {
    try {
      const s = await getJSON(`${quantities.items.summary}?v=${version}`);
      parts.push(el("h3", {}, "summary"), summaryTable(s.result));
    } catch (err) {
      parts.push(el("p", { class: "muted" }, `summary unavailable: ${err.message}`));
    }
  }
  const figures = run.committed_steps > 0 ? Object.entries(plots.items).map(([kind, url]) =>
    el("figure", {}, el("img", { src: `${url}?v=${version}`, alt: kind, loading: "eager" }), el("figcaption", {}, kind))) : [];
  parts.push(el("h3", {}, "figures"), figures.length ? el("div", { class: "figures" }, ...figures)
    : el("p", { class: "muted" }, run.committed_steps > 0 ? "no figure kinds available" : "no committed steps yet"));
  const skipped = Object.entries(plots.unavailable || {});
  if (skipped.length) {
    parts.push(el("details", { id: "unavailable" }, el("summary", { class: "muted" }, `${skipped.length} figure(s) not shown`),
      el("ul", {}, ...skipped.map(([k, why]) => el("li", {}, el("b", {}, k), `: ${why}`)))));
  }
  $("#view").replaceChildren(...parts);
  if (run.status === "running") schedule(route); else clearTimeout(timer);
}

async function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/run\/(.+)$/);
  try {
    $("#error").textContent = "";
    if (m) await showRun(decodeURIComponent(m[1])); else await showRuns();
  } catch (err) {
    $("#error").textContent = err.message;
    schedule(route);
  }
}

window.addEventListener("hashchange", () => { shown = null; route(); });
route();
