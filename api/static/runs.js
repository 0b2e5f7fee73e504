// trajscope dashboard: the run list (status, progress, final loss, duration, tags; filter, sort, select)
// and the comparison page (several runs overlaid, legend keyed by the config fields that differ).
"use strict";

const LIST_MS = 2000;
const list = { filter: "", sort: "run_id", dir: 1, selected: new Set(), runs: [], finalLoss: new Map(), sizes: new Map(),
  variables: new Map() };

// the run's tags (`trajscope tag`), as GET /api/runs lists them
const tagsOf = (run) => (Array.isArray(run.tags) ? run.tags.map(String) : []);

const COLUMNS = [
  ["run_id", "run", (r) => r.run_id],
  ["status", "status", (r) => r.status],
  ["committed_steps", "steps", (r) => r.committed_steps],
  ["progress", "progress", (r) => r.progress ?? 0],
  ["final_loss", "final loss", (r) => (list.finalLoss.get(r.run_id) || {}).value ?? Infinity],
  ["duration", "duration", (r) => seconds(r) ?? -1],
  ["created", "created", (r) => r.created || ""],
  ["tags", "tags", (r) => tagsOf(r).join(",")],
  ["size", "size", (r) => list.sizes.get(r.run_id) ?? -1],
];

// Every word of the filter must match: `key=value` a config field's value or a tag exactly
// (train.steps=300 is not train.steps=3000), any other word a part of the id, the status or a tag.
function matches(run, text) {
  if (!text.trim()) return true;
  const tags = tagsOf(run).map((t) => t.toLowerCase());
  const pairs = new Set([...tags, ...Object.entries(run.config || {}).map(([k, v]) => `${k}=${v}`.toLowerCase())]);
  // a value written another way (train.lr=5e-4 for 0.0005) matches as a number (found by a review)
  const numeric = (w) => {
    const [k, v] = [w.slice(0, w.indexOf("=")), w.slice(w.indexOf("=") + 1)];
    const have = Object.entries(run.config || {}).find(([key]) => key.toLowerCase() === k);
    return have !== undefined && v.trim() !== "" && typeof have[1] === "number" && Number(v) === have[1];
  };
  const hay = [run.run_id, run.status, run.writer_gone ? "writer gone" : "", ...tags].join(" ").toLowerCase();
  return text.toLowerCase().split(/\s+/).filter(Boolean).every((w) => (w.includes("=") ? pairs.has(w) || numeric(w)
    : hay.includes(w)));
}

function runRow(run) {
  const loss = list.finalLoss.get(run.run_id);
  return el("tr", { "data-run": run.run_id },
    el("td", {}, el("input", { type: "checkbox", class: "pick", checked: list.selected.has(run.run_id),
      onchange: (e) => { if (e.target.checked) list.selected.add(run.run_id); else list.selected.delete(run.run_id); compareButton(); } })),
    el("td", {}, el("a", { href: `#/run/${encodeURIComponent(run.run_id)}`, title: run.note || null }, run.run_id)),
    statusCell(run),
    el("td", { class: "num steps" }, stepsText(run)),
    el("td", {}, el("progress", { max: "1", value: String(run.progress ?? 0) })),
    el("td", { class: "num final-loss" }, (run.not_finite || {}).final_loss ? `${run.not_finite.final_loss} (diverged)`
      : loss ? fmt(loss.value) : "–"),
    el("td", { class: "num" }, duration(seconds(run))),
    el("td", {}, run.created ?? "–"),
    el("td", {}, ...tagsOf(run).map((t) => el("span", { class: "tag" }, t))),
    el("td", { class: "num" }, bytes(list.sizes.get(run.run_id))));
}

function renderRows() {
  const col = COLUMNS.find((c) => c[0] === list.sort) || COLUMNS[0];
  const rows = list.runs.filter((r) => matches(r, list.filter)).sort((a, b) => {
    const x = col[2](a), y = col[2](b);
    return (x < y ? -1 : x > y ? 1 : 0) * list.dir || a.run_id.localeCompare(b.run_id);
  });
  const tbody = $("#runs tbody");
  if (tbody) tbody.replaceChildren(...rows.map(runRow));
  for (const th of document.querySelectorAll("#runs th[data-sort]")) {
    th.className = th.dataset.sort === list.sort ? (list.dir > 0 ? "sorted-asc" : "sorted-desc") : "";
  }
}

function compareButton() {
  const b = $("#compare");
  if (b) { b.disabled = list.selected.size < 2; b.textContent = `compare selected (${list.selected.size})`; }
}

async function seriesVariables(run) {
  // the run's per-step variables (fixed when the run is created), asked once per run
  const key = `${run.run_id}@${run.created}`;
  if (!list.variables.has(key)) {
    list.variables.set(key, api(`/api/runs/${encodeURIComponent(run.run_id)}/series`)
      .then((b) => Object.keys(b.variables)).catch(() => { list.variables.delete(key); return []; }));
  }
  return list.variables.get(key);
}

function refreshLosses() {
  // one round of finalLosses at a time; a change seen meanwhile asks for one more round after it
  if (list.lossRound) { list.lossAgain = true; return list.lossRound; }
  list.lossRound = finalLosses().catch(() => {}).finally(() => {
    list.lossRound = null;
    renderRows();
    if (list.lossAgain) { list.lossAgain = false; refreshLosses(); }
  });
  return list.lossRound;
}

async function finalLosses() {
  // the last recorded loss of each run that records one, fetched again only when the run has committed more
  await Promise.all(list.runs.filter((r) => r.committed_steps > 0).map(async (r) => {
    const known = list.finalLoss.get(r.run_id);
    if (known && known.committed === r.committed_steps) return;
    if (r.status !== "running" && (r.final_loss != null || (r.not_finite || {}).final_loss)) {  // an ended run's is in the listing: no request (found by
      list.finalLoss.set(r.run_id, { committed: r.committed_steps, value: r.final_loss });  // a review: 2 a run,
      return;  // 77 s for the first load of 974 runs)
    }
    if (!(await seriesVariables(r)).includes("loss")) {
      list.finalLoss.set(r.run_id, { committed: r.committed_steps, value: null });
      return;
    }
    try {
      const body = await api(`/api/runs/${encodeURIComponent(r.run_id)}/series/loss?tail=1`);
      list.finalLoss.set(r.run_id, { committed: r.committed_steps, value: body.series.loss[0] });
    } catch (err) {
      list.finalLoss.set(r.run_id, { committed: r.committed_steps, value: null });
    }
  }));
}

// what a row shows that a listing can change (the writer's fate, labels): a change redraws the rows
const rowKey = (r) => [r.run_id, r.status, r.committed_steps, r.writer_gone, r.tags, r.note];

async function refreshRuns(first) {
  // sizes (a walk of each run's files) are asked for at first, and again once a run appeared or ended
  const sized = first || list.needSizes;
  const data = await api(`/api/runs?size=${sized ? "true" : "false"}`);
  $("#root").textContent = data.root;
  if (sized) for (const r of data.runs) list.sizes.set(r.run_id, r.size_bytes);
  const was = new Map(list.runs.map((r) => [r.run_id, r.status]));
  list.needSizes = !first && data.runs.some((r) => was.get(r.run_id) !== r.status);
  const before = JSON.stringify(list.runs.map(rowKey));
  list.runs = data.runs;
  const changed = first || before !== JSON.stringify(list.runs.map(rowKey));
  if (changed) {
    renderRows();
    refreshLosses();  // not awaited: the listing goes on polling while the losses of many runs are asked
  } else if (sized || list.runs.some((r) => isLive(r))) {
    renderRows();  // new sizes (a run that ended: found by a review), or the durations of running runs go on
  }
  setText("#live", data.runs.some((r) => isLive(r)) ? "live: following running runs" : "");
}

async function showRuns() {
  const p = { name: "runs" };
  page = p;
  window.trajscope.page = p;
  list.runs = [];
  const view = $("#view");
  view.replaceChildren(
    el("div", { class: "toolbar" },
      el("input", { id: "filter", placeholder: "filter: id, status, tag, key=value", value: list.filter,
        oninput: (e) => { list.filter = e.target.value; renderRows(); } }),
      el("button", { id: "compare", disabled: true, onclick: () => {
        location.hash = `#/compare/${[...list.selected].map(encodeURIComponent).join(",")}`;
      } }, "compare selected")),
    el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, el("th", {}, ""), ...COLUMNS.map(([key, label]) => el("th", { "data-sort": key,
        onclick: () => { list.dir = list.sort === key ? -list.dir : 1; list.sort = key; renderRows(); } }, label)))),
      el("tbody", {})),
    el("p", { class: "muted", id: "empty" }));
  compareButton();
  await refreshRuns(true);
  $("#empty").textContent = list.runs.length ? "" : "no runs under this root yet";
  const tick = async () => {
    if (page !== p) return;
    try {
      await refreshRuns(false);
      pollWorked();
      $("#empty").textContent = list.runs.length ? "" : "no runs under this root yet";
    } catch (err) { pollFailed(err); }
    if (page === p) schedule(tick, LIST_MS);
  };
  schedule(tick, LIST_MS);
}

// ---- comparison ---------------------------------------------------------------------------------

const COMPARE_CHARTS = [
  { id: "cmp-loss", title: "loss", ylabel: "loss", logx: true, logy: true, q: "loss", col: "loss" },
  { id: "cmp-alignment", title: "alignment cos(w̄+, x+) (solid) and cos(w̄−, x−) (dashed)", ylabel: "cosine", logx: true,
    q: "step_series", col: ["mean_alignment_pos", "mean_alignment_neg"], needs: "mean_neuron_alignment" },
  { id: "cmp-rank", title: "stable rank", ylabel: "stable rank", logx: true, q: "step_series", col: "stable_rank",
    needs: "stable_rank" },
  { id: "cmp-distance", title: "distance from initialization ‖θ(k) − θ(0)‖ (all parameters)", ylabel: "‖θ(k) − θ(0)‖",
    logx: true, logy: true, q: "distance_from_init", col: "(all)", needs: "distance_from_init" },
];

function differing(runs) {
  // config fields whose values are not the same in all the runs that have a config (run ids alone when none
  // differ); a run recorded from a script has none, and made every field "differ" (found by a review)
  const configured = runs.filter((r) => Object.keys(r.config || {}).length);
  const keys = new Set(configured.flatMap((r) => Object.keys(r.config)));
  return [...keys].filter((k) => new Set(configured.map((r) => JSON.stringify(r.config[k]))).size > 1).sort();
}

async function showCompare(ids) {
  const p = { name: `compare-${ids.join("+")}` };
  page = p;
  window.trajscope.page = p;
  window.trajscope.charts = {};
  const data = await api("/api/runs?size=false");
  const runs = ids.map((id) => data.runs.find((r) => r.run_id === id)).filter(Boolean);
  const missing = ids.filter((id) => !runs.some((r) => r.run_id === id));
  const keys = differing(runs);
  const shownKeys = keys.filter((k) => k !== "name").slice(0, 3);
  const legend = (r) => shownKeys.length && Object.keys(r.config || {}).length
    ? `${r.run_id} (${shownKeys.map((k) => `${k}=${fmt(r.config[k])}`).join(", ")})` : r.run_id;
  const listings = await Promise.all(runs.map((r) => api(`/api/runs/${encodeURIComponent(r.run_id)}/analysis`)));
  const offered = await Promise.all(runs.map((r) => api(`/api/runs/${encodeURIComponent(r.run_id)}/series`)));
  // a chart applies to a run when the run records its variable (a module run may have no loss) or the
  // analysis offers its quantity
  const applies = (spec, i) => (spec.needs ? spec.needs in listings[i].items
    : spec.q in offered[i].variables || spec.q in offered[i].quantities);
  const charts = COMPARE_CHARTS.map((spec) => new Chart(spec, {}));
  $("#view").replaceChildren(el("div", {},
    el("h2", {}, `comparing ${runs.length} run${runs.length === 1 ? "" : "s"}`),
    el("p", { class: "muted", id: "differing" }, keys.length ? `legend keyed by the config fields that differ: ${keys.join(", ")}`
      : runs.filter((r) => Object.keys(r.config || {}).length).length > 1 ? "the runs' configs are identical"
        : "legend keyed by run id (runs recorded from a script have no config to compare)"),
    missing.length ? el("p", { class: "status-failed" }, `not found: ${missing.join(", ")}`) : null,
    el("div", { class: "charts" }, ...charts.map((c) => c.card))));
  // per run and series quantity: its data ({x, series}) or {error}; a running run's grow in place
  const store = new Map();
  const needed = (i) => [...new Set(COMPARE_CHARTS.filter((spec) => applies(spec, i)).map((spec) => spec.q))];
  const fetchAll = (i, tail) => Promise.all(needed(i).map(async (q) => {
    const key = `${runs[i].run_id}/${q}`;
    const have = store.get(key);
    const last = tail && have && have.x && have.x.length ? have.x[have.x.length - 1] : null;
    try {
      const body = await fetchSeries(runs[i].run_id, { q }, { points: 600, scale: "log", step: last === null ? null : `${last}:` });
      if (last === null) store.set(key, { x: body.x, series: body.series });
      else {
        appendRows(have, body, last);
        if (have.x.length > 2400) store.set(key, minmaxDownsample(have, 600, "log"));
      }
    } catch (err) {
      if (last === null) store.set(key, { error: err.message });
    }
  }));
  const redraw = () => {
    for (const chart of charts) {
      const spec = chart.spec;
      const present = [], notes = [];
      runs.forEach((r, i) => {
        if (!applies(spec, i)) { notes.push(`${r.run_id}: not recorded or not applicable`); return; }
        const got = store.get(`${r.run_id}/${spec.q}`);
        if (!got) return;
        if (got.error) { notes.push(`${r.run_id}: ${got.error}`); return; }
        const cols = Array.isArray(spec.col) ? spec.col : [spec.col];
        present.push([{ x: got.x, ys: cols.map((c) => got.series[c]) }, cols.map((c, j) => ({
          label: cols.length > 1 ? `${legend(r)} ${c.endsWith("neg") ? "−" : "+"}` : legend(r),
          style: { color: COLORS[i % COLORS.length], width: 1.5, dash: j ? [5, 4] : undefined } }))]);
      });
      chart.note.textContent = notes.join("; ");
      if (!present.length) continue;
      const joined = joinSources(present.map(([part]) => part));
      const flat = present.flatMap(([, l]) => l);
      chart.setData(joined[0], flat.map((l, i) => ({ ...l, values: joined[i + 1] })));
    }
  };
  await Promise.all(runs.map((r, i) => (r.committed_steps > 0 ? fetchAll(i, false) : null)));
  if (page !== p) return;
  redraw();
  window.trajscope.loads = (window.trajscope.loads || 0) + 1;
  // live: the running runs among them are polled; states committed since are appended, as on a run page
  const follow = async () => {
    if (page !== p) return;
    try {
      const running = (await api("/api/runs?size=false&status=running")).runs;
      let latest = running;
      if (runs.some((r) => isLive(r) && !running.some((x) => x.run_id === r.run_id))) {
        latest = (await api("/api/runs?size=false")).runs; // one of ours ended: its final status
      }
      const moved = [];
      runs.forEach((r, i) => {
        const now = latest.find((x) => x.run_id === r.run_id);
        if (now && (now.committed_steps !== r.committed_steps || now.status !== r.status)) {
          moved.push(fetchAll(i, r.committed_steps > 0));
          runs[i] = now;
        }
      });
      if (moved.length) {
        await Promise.all(moved);
        if (page !== p) return;
        redraw();
        window.trajscope.appends = (window.trajscope.appends || 0) + 1;
      }
      pollWorked();
      setText("#live", runs.some((r) => isLive(r)) ? "live: following the running runs" : "");
    } catch (err) {
      if (page === p) pollFailed(err);
    }
    if (page === p && runs.some((r) => isLive(r))) schedule(follow, POLL_MS);
  };
  setText("#live", runs.some((r) => isLive(r)) ? "live: following the running runs" : "");
  if (runs.some((r) => isLive(r))) schedule(follow, POLL_MS);
}
