// trajscope dashboard: the router and the run page (interactive charts fed by the JSON API).
// A live run is polled (its committed_steps) and new states are appended to the charts in place.
"use strict";

const POLL_MS = 1000;
const GONE_POLL_MS = 5000;  // a running run whose writer is gone: polled slowly, for a `trajscope resume`
const MARKER_MS = 10000;
let page = null; // the run or compare page on screen
let timer = null;

function schedule(fn, ms) {
  clearTimeout(timer);
  timer = setTimeout(fn, ms);
}

function api(path) {
  window.trajscope.requests.push(path);
  return getJSON(path);
}

function statusCell(run) {
  const td = el("td", { class: `status-${run.status}` }, run.writer_gone ? `${run.status} (writer gone)` : run.status);
  if (run.error) td.title = run.error;
  if (run.writer_gone) {  // (a run recorded from a script has no producer config: its script resumes it; a review)
    td.title = Object.keys(run.config || {}).length
      ? `its producer was killed: \`trajscope resume ${run.run_id}\` continues it`
      : "its script was killed: run it again with ModuleRecorder(..., resume=True) to continue it";
  }
  return td;
}

const keyOf = (src) => JSON.stringify(src, Object.keys(src).filter((k) => !["whole", "optional"].includes(k)).sort());

function points(chartWidth) {
  return Math.max(100, Math.min(4000, Math.round(chartWidth || 600)));
}

async function fetchSeries(runId, src, params) {
  const { q, whole, optional, ...extra } = src;
  return api(`/api/runs/${encodeURIComponent(runId)}/series/${q}${qs({ ...extra, ...params })}`);
}

// ---- the run page -------------------------------------------------------------------------------

function rangeParam(range) {
  return range ? `${range[0]}:${range[1]}` : null;
}

async function loadSources(p, keys, progressive) {
  // fetch the sources in parallel; with `progressive`, draw as each arrives (the loss comes first)
  const scale = p.logx ? "log" : "linear";
  await Promise.all(keys.map(async (key) => {
    const entry = p.sources.get(key);
    try {
      const body = await fetchSeries(p.runId, entry.src, { step: rangeParam(p.range), points: p.points, scale });
      entry.committed = body.committed_steps;  // (the version it was computed on: see showCommitted)
      entry.data = { x: body.x, series: body.series };
      entry.error = null;
    } catch (err) {
      entry.data = null;
      entry.error = err.message;
    }
    if (progressive) draw(p);
  }));
}

// The sources drawn over the run's states as they grow (not the whole-run ones, refreshed with the markers)
const tailSources = (p) => [...p.sources.values()].filter((e) => e.data && !e.src.whole);

function showCommitted(p) {
  // the "steps committed" label: the states every chart shows (each source's answer says the committed states of
  // the version it was computed on), never more, never going back; zoomed, or before any chart has data, the
  // run's own count (found by reviews: the charts ran ahead of the label, then behind it)
  const answered = tailSources(p).map((e) => e.committed).filter((c) => c !== undefined);
  const shown = p.range || !answered.length ? p.committed : Math.min(...answered);
  p.labelled = Math.max(p.labelled || 0, shown);
  setText("#committed", stepsText({ committed_steps: p.labelled, planned_states: p.planned }));
}

function chartColumns(p, spec) {
  // the chart's columns, joined on steps across its sources
  // `errors`: why a source is unavailable (shown under the chart); `pending`: a source not answered yet
  let cols = spec.cols;
  const errors = [];
  let pending = false;
  if (cols === "all") {
    const entry = spec.source ? p.sources.get(keyOf(spec.source)) : null;
    if (entry && !entry.data) {  // its columns are those of its answer: none yet, or a refusal to show
      if (entry.error) errors.push(entry.error);
      else pending = true;
    }
    const names = entry && entry.data ? Object.keys(entry.data.series).filter(spec.filter || (() => true)) : [];
    cols = names.slice(0, spec.maxSeries || 64).map((n, i) => [spec.source, n, spec.label ? spec.label(n) : n,
      { color: COLORS[i % COLORS.length] }]);
  }
  const groups = new Map();
  for (const [src, name, label, style] of cols) {
    const entry = p.sources.get(keyOf(src));
    if (!entry || !entry.data) {
      if (entry && entry.error && !src.optional) errors.push(entry.error);
      else if (entry && !entry.error && !src.optional) pending = true;
      continue;
    }
    if (!(name in entry.data.series)) continue;
    const g = groups.get(entry) || { x: entry.data.x, ys: [], labels: [] };
    g.ys.push(entry.data.series[name]);
    g.labels.push({ label, style });
    groups.set(entry, g);
  }
  const parts = [...groups.values()];
  if (!parts.length) return { x: [], cols: [], errors, pending };
  const joined = joinSources(parts);
  const labels = parts.flatMap((g) => g.labels);
  return { x: joined[0], cols: labels.map((l, i) => ({ ...l, values: joined[i + 1] })), errors, pending };
}

function draw(p) {
  if (page !== p) return;
  for (const chart of p.charts) {
    const { x, cols, errors, pending } = chartColumns(p, chart.spec);
    chart.note.textContent = errors.length ? `unavailable: ${[...new Set(errors)].join("; ")}`
      : pending && p.committed > 0 ? "loading…"
      : p.range && !x.length ? "no value in this range (e.g. an update norm needs two states in it)" : "";
    chart.setData(x, cols);
    if (x.length && !window.trajscope.firstChartAt) window.trajscope.firstChartAt = performance.now();
  }
  const shown = p.range ? `steps ${fmt(p.range[0])}–${fmt(p.range[1])}` : "all steps";
  setText("#range-note", `${shown}, min–max per pixel bucket (${p.points} buckets)`);
  showCommitted(p);
}

async function reload(p) {
  // the loss first (cheap): the first chart is not kept waiting behind the heavier analyses
  const keys = [...p.sources.keys()];
  const cheap = keys.filter((k) => p.sources.get(k).src.q === "loss");
  p.reloading = (p.reloading || 0) + 1;  // (no catch-up append meanwhile: see poll)
  try {
    await loadSources(p, cheap, true);
    await loadSources(p, keys.filter((k) => !cheap.includes(k)), true);
  } finally {
    p.reloading -= 1;
  }
  if (page !== p) return;
  draw(p);
  p.loadedAt = performance.now();
  window.trajscope.loadedAt = p.loadedAt;
  window.trajscope.loads = (window.trajscope.loads || 0) + 1;
}

async function zoom(p, range) {
  // a typed range is first asked of one source (the loss where the run records one): one the server refuses (no
  // recorded state in it, past the run's end or between its recorded steps, or no state committed yet) is said
  // once, beside the range note (which each redraw rewrites), and the charts stay as they are (found by reviews:
  // each chart showed the refusal, blank); the last zoom asked wins (a double-click during a drag's probe)
  const asked = p.zooms = (p.zooms || 0) + 1;
  setText("#range-refused", "");
  const probe = range && ([...p.sources.values()].find((e) => e.src.q === "loss") || [...p.sources.values()][0]);
  if (probe) {
    try {
      await fetchSeries(p.runId, probe.src, { step: rangeParam(range), points: p.points, scale: p.logx ? "log" : "linear" });
    } catch (err) {
      if (page !== p || asked !== p.zooms) return;
      setText("#range-refused", `range not shown: ${err.message}; the charts are unchanged`);
      $("#step-from").value = p.range ? p.range[0] : "";  // (the boxes show the range the charts show)
      $("#step-to").value = p.range ? p.range[1] : "";
      window.trajscope.refusedRanges = (window.trajscope.refusedRanges || 0) + 1;
      return;
    }
  }
  if (page !== p || asked !== p.zooms) return;
  p.range = range;
  $("#step-from").value = range ? range[0] : "";
  $("#step-to").value = range ? range[1] : "";
  reload(p);
}

async function loadMarkers(p) {
  if (!p.listing.items.phases || p.committed === 0) return;
  try {
    const body = await api(`/api/runs/${encodeURIComponent(p.runId)}/analysis/phases`);
    const v = body.result.variables;
    p.markers = [{ step: v.t1_step && v.t1_step.values, label: "t1", color: "#2a2" },
      { step: v.t2_step && v.t2_step.values, label: "t2", color: "#c60" }];
    p.markersAt = performance.now();
    for (const c of p.charts) if (c.u) c.u.redraw(false);
    setText("#phases", `empirical t1 = ${fmt(p.markers[0].step)}, t2 = ${fmt(p.markers[1].step)} (steps)`);
  } catch (err) {
    setText("#phases", `phases unavailable: ${err.message}`);
  }
}

// Live: append the states committed since the last poll to every source (or to `only`), in place.
async function appendNew(p, only = null) {
  const scale = p.logx ? "log" : "linear";
  // sources computed over the whole run (the envelope: its t2 needs the start) are refreshed with the
  // t1/t2 markers, not on every commit
  const tails = only || tailSources(p);
  // one request first: it opens the run's new version on the server, which the others then reuse
  for (const batch of [tails.slice(0, 1), tails.slice(1)]) await Promise.all(batch.map(async (entry) => {
    const data = entry.data;
    const last = data.x.length ? data.x[data.x.length - 1] : null;
    let body;
    try {
      // from the last drawn state on: one state of overlap, so a quantity of consecutive states (the
      // update norms) has its first new value; rows up to `last` are dropped
      body = await fetchSeries(p.runId, entry.src, { step: last === null ? null : `${last}:`, points: p.points, scale });
    } catch (err) { return; }
    // a reload replaced the source's data meanwhile (a zoom, or "all steps"): this tail is not of it (found by a
    // review: the whole run was appended after itself, out of order)
    if (entry.data !== data || p.range) return;
    entry.committed = body.committed_steps;
    appendRows(entry.data, body, last);
    // too many rows appended: downsample again here (min–max per pixel bucket), not on the server
    if (entry.data.x.length > 4 * p.points) entry.data = minmaxDownsample(entry.data, p.points, scale);
  }));
  if (page !== p) return;
  draw(p);
  window.trajscope.appends = (window.trajscope.appends || 0) + 1;
}

async function poll(p) {
  if (page !== p) return;
  try {
    // only the running runs are described (cheap on a root with many runs); once ours is not among
    // them any more, one full listing gives its final status
    let run = (await api("/api/runs?size=false&status=running")).runs.find((r) => r.run_id === p.runId);
    if (!run) run = (await api("/api/runs?size=false")).runs.find((r) => r.run_id === p.runId);
    pollWorked();
    if (!run) {  // deleted (`trajscope rm`) while on screen: said once, and no longer polled
      setText("#live", "");
      setText("#error", `run ${p.runId} is no longer under the served root (deleted?); what is drawn is what it held. `
        + "Reload the page if it is made again.");
      p.gone = true;
      return;
    }
    if (run && isLive(run) !== p.live) {  // its producer was killed (nothing more until a resume) or resumed
      p.live = isLive(run);
      const status = $("#status");
      if (status) status.replaceChildren(statusCell(run));
    }
    // a source behind the run's count (its answer computed on an older version than another's, or than the
    // poll's) is appended to at the next poll, the count unchanged (found by a review: it stayed behind for good)
    // (whole-run sources too, once the count stops changing: a killed producer's run kept its old envelope)
    const idle = !p.range && !p.gone && !p.reloading;
    const behind = idle ? tailSources(p).filter((e) => e.committed < run.committed_steps) : [];
    const wholeBehind = !idle ? [] : [...p.sources].filter(([, e]) => e.src.whole && e.data
      && e.committed < run.committed_steps).map(([k]) => k);
    if (run && (run.committed_steps > p.committed || run.status !== p.status)) {
      const detected = performance.now();
      const first = p.committed === 0;
      const finished = run.status !== p.status;
      p.committed = Math.max(p.committed, run.committed_steps);
      p.planned = run.planned_states;
      p.status = run.status;
      p.live = isLive(run);
      showCommitted(p);  // (zoomed or nothing drawn yet: the count; else once the charts show the new states)
      if (p.committed > 0) { const waiting = $("#waiting"); if (waiting) waiting.remove(); }
      const status = $("#status");
      if (status) status.replaceChildren(statusCell(run));
      if (finished) setText("#live", "");  // (not "following" through the final reload)
      if (first || finished || p.range) {
        if (!p.range || finished) await reload(p);
      } else {
        // a source whose last request failed (a network blip) is asked again whole; the others get the new states
        const failed = [...p.sources].filter(([, e]) => !e.data && e.error).map(([k]) => k);
        if (failed.length) await loadSources(p, failed, false);
        await appendNew(p);
      }
      window.trajscope.lastUpdate = { committed: run.committed_steps, detected, drawn: performance.now() };
      if (finished || performance.now() - (p.markersAt || 0) > MARKER_MS) {
        p.markersAt = performance.now();
        loadMarkers(p);
        refreshSize(p);  // (found by a review: a live run's size stayed what it was when the page opened)
        if (!p.range && !finished) {
          const whole = [...p.sources].filter(([, e]) => e.src.whole).map(([k]) => k);
          loadSources(p, whole, false).then(() => draw(p));
        }
      }
    } else if (behind.length || wholeBehind.length) {
      if (behind.length) await appendNew(p, behind);
      if (wholeBehind.length && performance.now() - (p.markersAt || 0) > MARKER_MS) {
        p.markersAt = performance.now();
        loadMarkers(p);
        await loadSources(p, wholeBehind, false);
        draw(p);
      }
    }
    if (page === p) setText("#live", p.live ? "live: following the run" : "");
  } catch (err) {
    if (page === p) pollFailed(err);
  }
  if (page === p) followLater(p);
}

async function refreshSize(p) {
  // the run's size on storage, as its detail gives it (not in the cheap listing the poll reads)
  try {
    const run = await api(`/api/runs/${encodeURIComponent(p.runId)}`);
    if (page === p) setText("#size", bytes(run.size_bytes));
  } catch (err) { /* said by the poll if the server is gone; the next refresh tries again */ }
}

function summaryTable(result) {
  // a number each, or one per entry of a 1-D quantity (a module run's per-parameter summary: `distance[fc1.weight]`)
  const vars = (result && result.variables) || {};
  const entries = Object.entries(vars).flatMap(([name, v]) => {
    if (v.shape.length === 0) return [[name, v.values, v]];
    const labels = v.shape.length === 1 ? (v.coords[v.dims[0]] || []) : [];
    return labels.length === v.shape[0] ? labels.map((lab, i) => [`${name}[${lab}]`, v.values[i], v]) : [];
  });
  const rows = entries.map(([name, value, v]) => el("tr", {},
    el("td", {}, name), el("td", { class: "num" }, fmt(value)),
    el("td", { class: `kind-${v.attrs.kind || ""}` }, v.attrs.kind || ""),
    el("td", { class: "muted" }, v.attrs.status || (v.attrs.units === "1" ? "" : v.attrs.units) || "")));
  return el("table", { id: "summary" },
    el("thead", {}, el("tr", {}, ...["quantity", "value", "kind", "note"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

function angleModes(p) {
  // what the rows of the chosen parameter can be followed by (a two-layer run's W: also the angle to x±)
  const m = p.matrices[p.param] || {};
  const modes = [];
  if (p.param === "W" && "neuron_angles" in p.listing.items) modes.push(["to_target", "angle to x± (its class sum)"]);
  modes.push(["to_init", "angle to its initial direction"]);
  if (m.row_length === 2) modes.push(["polar", "direction in the plane"]);
  return modes;
}

function defaultRows(p) {
  return `0:${Math.min(6, (p.matrices[p.param] || {}).rows || 6)}`;
}

function neuronControls(p) {
  const modeSelect = el("select", { id: "angle-mode" });
  const fillModes = () => modeSelect.replaceChildren(...angleModes(p).map(([v, t]) =>
    el("option", { value: v, selected: v === p.angleMode }, t)));
  fillModes();
  const params = Object.keys(p.matrices);
  return el("div", { class: "toolbar" },
    el("label", {}, "parameter ", el("select", { id: "row-param", onchange: (e) => {
      p.param = e.target.value;
      p.angleMode = angleModes(p)[0][0];
      $("#neurons").value = defaultRows(p);
      fillModes();
    } }, ...params.map((n) => el("option", { value: n, selected: n === p.param }, n)))),
    el("label", {}, "rows ", el("input", { id: "neurons", value: p.neurons, title: "e.g. 0,3,7 or 0:8" })),
    modeSelect,
    el("button", { id: "apply-neurons", onclick: () => {
      p.neurons = $("#neurons").value.trim() || defaultRows(p);
      p.angleMode = $("#angle-mode").value;
      setupNeuronChart(p);
      reload(p);
    } }, "show"));
}

function setupNeuronChart(p) {
  const src = { q: "row_angles", parameter: p.param, row: p.neurons };
  for (const [k, e] of [...p.sources]) if (e.src.q === "row_angles") p.sources.delete(k);
  p.sources.set(keyOf(src), { src, data: null });
  const chart = p.charts.find((c) => c.spec.id === "neurons");
  chart.spec.source = src;
  chart.spec.filter = (name) => name.startsWith(`${p.angleMode}[`);
  const what = p.param === "W" && p.matrices.W && p.matrices.W.dim === "neuron" ? "neuron" : "row";
  chart.spec.label = (name) => name.replace(/^.*\[(\d+)\]$/, `${what} $1`);
  chart.setTitle(`${p.param}: ${what}s' ${(angleModes(p).find(([v]) => v === p.angleMode) || [, ""])[1]} (degrees)`);
}

async function showRun(runId) {
  const [run, listing, offered] = await Promise.all([
    api(`/api/runs/${encodeURIComponent(runId)}`),
    api(`/api/runs/${encodeURIComponent(runId)}/analysis`),
    api(`/api/runs/${encodeURIComponent(runId)}/series`),
  ]);
  const vars = new Set(Object.keys(offered.variables));
  const matrices = offered.matrices || {};
  const param = "W" in matrices ? "W" : Object.keys(matrices)[0];
  const p = { runId, name: runId, listing, committed: run.committed_steps, planned: run.planned_states, status: run.status,
    range: null, labelled: run.committed_steps,
    logx: true, points: 600, sources: new Map(), charts: [], markers: [], matrices, param, neurons: "", angleMode: "" };
  if (param) { p.neurons = defaultRows(p); p.angleMode = angleModes(p)[0][0]; }
  page = p;
  window.trajscope.page = p;
  window.trajscope.charts = {};
  const usable = (spec) => spec.needs.every((n) => n in listing.items) && (spec.vars || []).every((v) => vars.has(v));
  const specs = RUN_CHARTS.filter(usable).map((s) => ({ ...s }));
  for (const name of GENERIC_CHARTS) {
    // on a two-layer run the W chart already shows what a generic one would (‖W‖₂, the stable rank of W;
    // v is a vector: its spectral norm is its Frobenius norm): not computed twice
    if (COVERED[name] && specs.some((s) => s.id === COVERED[name])) continue;
    if (name in listing.items) specs.push({ id: name, title: GENERIC_TITLES[name] || name.replace(/_/g, " "),
      ylabel: GENERIC_YLABELS[name], logx: true, logy: true, needs: [], cols: "all", source: { q: name, first: 32 }, maxSeries: 32 });  // (first: a model of
      // over 64 tensors was refused its charts, the server's limit of series a request; found by a review)
  }
  const hasNeurons = param && "row_angles" in listing.items;
  if (hasNeurons) {
    specs.push({ id: "neurons", title: "rows: angle over time (degrees)", ylabel: "degrees", logx: true, needs: [], cols: "all",
      source: null });
  }
  const onZoom = (range) => zoom(p, range);
  p.charts = specs.map((spec) => new Chart(spec, { onZoom, markers: () => p.markers }));
  for (const spec of specs) {
    const srcs = spec.cols === "all" ? (spec.source ? [spec.source] : []) : spec.cols.map((c) => c[0]);
    for (const src of srcs) if (!src.optional || src.optional in listing.items) p.sources.set(keyOf(src), { src, data: null });
  }
  if (hasNeurons) setupNeuronChart(p);

  const origin = location.origin;
  const head = el("div", {},
    el("h2", {}, run.run_id),
    el("table", { id: "info" }, el("tbody", {},
      el("tr", {}, el("th", {}, "status"), el("td", { id: "status" }, statusCell(run)),
        el("th", {}, "steps committed"), el("td", { class: "num", id: "committed" }, stepsText(run)),
        el("th", {}, "created"), el("td", {}, run.created ?? "–"), el("th", {}, "size"), el("td", { class: "num", id: "size" }, bytes(run.size_bytes))))),
    run.error ? el("p", { id: "run-error", class: "status-failed" }, run.error) : null,
    run.tags && run.tags.length ? el("p", { id: "run-tags" }, "tags ", ...run.tags.map((t) => el("span", { class: "tag" }, t))) : null,
    run.note ? el("p", { id: "run-note", class: "muted" }, `note: ${run.note}`) : null,
    el("div", { class: "toolbar" },
      el("label", {}, "steps ", el("input", { id: "step-from", class: "steps", placeholder: "from" })),
      el("label", {}, "to ", el("input", { id: "step-to", class: "steps", placeholder: "to" })),
      el("button", { id: "apply-range", onclick: () => {
        const a = parseInt($("#step-from").value, 10), b = parseInt($("#step-to").value, 10);
        zoom(p, Number.isFinite(a) && Number.isFinite(b) && b >= a ? [a, b] : null);
      } }, "show range"),
      el("button", { id: "reset-range", onclick: () => zoom(p, null) }, "all steps"),
      el("span", { class: "muted", id: "range-note" }),
      el("span", { class: "status-failed", id: "range-refused" }),
      el("span", { class: "muted" }, "drag on a chart to zoom, double-click to show all"),
      el("span", { id: "phases", class: "muted" })));
  const parts = [head];
  if (run.committed_steps === 0) parts.push(el("p", { class: "muted", id: "waiting" }, "no committed steps yet: the charts appear with the first commit"));
  parts.push(el("div", { class: "charts" }, ...p.charts.filter((c) => c.spec.id !== "neurons").map((c) => c.card)));
  if (hasNeurons) {
    parts.push(el("h3", {}, "neuron view: follow rows of a parameter"), neuronControls(p),
      el("div", { class: "charts" }, p.charts.find((c) => c.spec.id === "neurons").card));
  }
  const unavailable = RUN_CHARTS.filter((s) => !usable(s));
  if (unavailable.length) {
    parts.push(el("p", { class: "muted", id: "unavailable" }, `not shown (do not apply to this run): ${unavailable.map((s) => s.id).join(", ")}`));
  }
  parts.push(el("h3", {}, "open this run remotely"),
    el("code", { class: "snippet", id: "snippet" }, `import xarray as xr\nds = xr.open_zarr("${origin}${run.links.zarr_pinned || run.links.zarr}")  # trimmed to committed steps; an error, not another run's data, once this run is deleted or replaced`));
  // a run of another model has no two-layer summary: its per-parameter one (found by a review: the box stayed empty)
  const summaryUrl = listing.items.summary || listing.items.parameter_summary;
  const summaryBox = el("details", { id: "summary-box" }, el("summary", {}, "summary (computed on opening)"), el("div", { id: "summary-body" }));
  summaryBox.addEventListener("toggle", async () => {
    if (!summaryBox.open || !summaryUrl || p.committed === 0) return;
    if (summaryBox.dataset.loaded === `${p.status}-${p.committed}`) return;
    summaryBox.dataset.loaded = `${p.status}-${p.committed}`;
    $("#summary-body").replaceChildren(el("p", { class: "muted" }, "computing…"));
    try {
      const s = await api(`${summaryUrl}?v=${p.status}-${p.committed}`);
      $("#summary-body").replaceChildren(summaryTable(s.result));
    } catch (err) {
      $("#summary-body").replaceChildren(el("p", { class: "muted" }, `summary unavailable: ${err.message}`));
    }
  });
  parts.push(summaryBox, el("details", { id: "config-box" }, el("summary", {}, `config (${Object.keys(run.config).length} fields)`),
    el("table", { id: "config" }, el("tbody", {}, ...Object.entries(run.config).map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", {}, fmt(v))))))));
  $("#view").replaceChildren(...parts.filter(Boolean));
  p.live = isLive(run);
  $("#live").textContent = p.live ? "live: following the run" : "";
  if (run.committed_steps > 0) {
    await reload(p);
    loadMarkers(p);
  }
  followLater(p);
}

// a live run is polled every second; one still `running` whose writer is gone every few seconds, so a
// `trajscope resume` is followed without a reload; a finished one not at all
function followLater(p) {
  if (p.live) schedule(() => poll(p), POLL_MS);
  else if (p.status === "running") schedule(() => poll(p), GONE_POLL_MS);
}

// ---- router -------------------------------------------------------------------------------------

async function route() {
  clearTimeout(timer);
  page = null;
  const hash = location.hash || "#/";
  const run = hash.match(/^#\/run\/(.+)$/);
  const compare = hash.match(/^#\/compare\/(.+)$/);
  $("#view").replaceChildren(el("p", { class: "muted", id: "loading" }, "loading…"));
  try {
    $("#error").textContent = "";
    if (run) await showRun(decodeURIComponent(run[1]));
    else if (compare) await showCompare(compare[1].split(",").map(decodeURIComponent));
    else await showRuns();
  } catch (err) {
    $("#error").textContent = err.message;
    const loading = $("#loading");  // not "loading…" under an error: nothing is loading any more
    if (loading) loading.remove();
  }
}

window.addEventListener("hashchange", route);
route();
