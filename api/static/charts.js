// trajscope dashboard: one interactive chart (uPlot) in a card with its tools, and the chart specs.
// A Chart draws columns of one or more series sources (each {x, series: {name: values}}, as
// GET /api/runs/{id}/series/{quantity} returns them); tests read window.trajscope.charts[id].u.data.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];

window.trajscope = { charts: {}, requests: [] };

// Chart specs of the run page. `cols`: [source, column, label, style]; a source is a series quantity
// (plus its query parameters); `needs`: analysis quantities that must apply to the run (data-driven).
const STEP_SERIES = { q: "step_series" };
const RUN_CHARTS = [
  { id: "loss", title: "loss", ylabel: "loss", logx: true, logy: true, needs: [], vars: ["loss"],
    cols: [[{ q: "loss" }, "loss", "loss L(t)", { color: COLORS[0], width: 1.5 }],
      [{ q: "loss_envelope", whole: true, optional: "loss_envelope" }, "loss_envelope", "O(1/t) envelope from t2 (theory)",
        { color: "#66c", dash: [6, 4] }]] },
  { id: "alignment", title: "alignment cos(w̄±, x±) with the min–max band over V±", ylabel: "cosine", logx: true,
    needs: ["mean_neuron_alignment"],
    cols: [[STEP_SERIES, "mean_alignment_pos", "cos(w̄+, x+)", { color: COLORS[0], width: 1.5 }],
      [STEP_SERIES, "mean_alignment_neg", "cos(w̄−, x−)", { color: COLORS[1], width: 1.5 }],
      [STEP_SERIES, "band_min_pos", "min over V+", { color: COLORS[0] + "66", width: 0.5 }],
      [STEP_SERIES, "band_max_pos", "max over V+", { color: COLORS[0] + "66", width: 0.5 }],
      [STEP_SERIES, "band_min_neg", "min over V−", { color: COLORS[1] + "66", width: 0.5 }],
      [STEP_SERIES, "band_max_neg", "max over V−", { color: COLORS[1] + "66", width: 0.5 }]],
    bands: [[4, 3, COLORS[0] + "22"], [6, 5, COLORS[1] + "22"]] },
  { id: "cones", title: "cone membership fractions", ylabel: "fraction of neurons", logx: true, needs: ["cone_fractions"],
    cols: [[STEP_SERIES, "frac_S_pos", "in S+", { color: COLORS[0] }], [STEP_SERIES, "frac_S_neg", "in S−", { color: COLORS[1] }],
      [STEP_SERIES, "frac_dead", "in S_dead", { color: COLORS[7] }], [STEP_SERIES, "frac_other", "other", { color: COLORS[3] }],
      [STEP_SERIES, "aligned_fraction", "aligned (target cone or dead)", { color: COLORS[2], dash: [4, 3] }]] },
  { id: "rank", title: "stable rank ‖W‖F²/‖W‖₂² and effective rank", ylabel: "rank", logx: true, needs: ["stable_rank"],
    cols: [[STEP_SERIES, "stable_rank", "stable rank", { color: COLORS[4], width: 1.5 }],
      [STEP_SERIES, "effective_rank", "effective rank", { color: COLORS[5] }]] },
  { id: "norms", title: "‖W‖₂² and ‖W‖F²", ylabel: "squared norm", logx: true, logy: true, needs: ["spectral_norm_sq"],
    cols: [[STEP_SERIES, "spectral_norm_sq", "‖W‖₂²", { color: COLORS[3], width: 1.5 }],
      [STEP_SERIES, "frobenius_norm_sq", "‖W‖F²", { color: COLORS[8] }]] },
  { id: "singular", title: "singular values of W", ylabel: "singular value", logx: true, logy: true, needs: ["singular_values"],
    cols: "all", source: { q: "singular_values", first: 16 }, maxSeries: 16,
    label: (name) => name.replace(/^.*\[(\d+)\]$/, "σ$1") },
];
// any-model quantities (per-parameter norms, update norms...): drawn with all their columns when the
// run's analysis listing offers them
const GENERIC_CHARTS = ["frobenius_norms", "spectral_norms", "update_norms", "distance_from_init", "param_stable_ranks"];
// generic charts a two-layer chart already covers (generic chart -> the two-layer chart's id)
const COVERED = { spectral_norms: "norms", param_stable_ranks: "rank" };
// the y axis of each (its unit or what it measures)
const GENERIC_YLABELS = {
  frobenius_norms: "‖θp‖F",
  spectral_norms: "‖P‖₂",
  update_norms: "‖θp(k) − θp(k−1)‖F",
  distance_from_init: "‖θp(k) − θp(0)‖F",
  param_stable_ranks: "stable rank",
};
const GENERIC_TITLES = {
  frobenius_norms: "Frobenius norm ‖θp‖F per parameter",
  spectral_norms: "spectral norm ‖P‖₂ per parameter",
  update_norms: "update norms ‖θp(k) − θp(k−1)‖F",
  distance_from_init: "distance from init ‖θp(k) − θp(0)‖F",
  param_stable_ranks: "stable rank ‖P‖F²/‖P‖₂² per matrix",
};

class Chart {
  constructor(spec, { onZoom, markers } = {}) {
    this.spec = spec;
    this.logx = !!spec.logx;
    this.logy = !!spec.logy;
    this.onZoom = onZoom;
    this.markers = markers || (() => []);
    this.plotEl = el("div", { class: "plot" });
    this.note = el("div", { class: "note" });
    const toggle = (label, key) => el("label", {}, el("input", { type: "checkbox", class: `toggle-${key}`,
      checked: this[key], onchange: (e) => { this[key] = e.target.checked; this.rebuild(); } }), ` ${label}`);
    this.card = el("section", { class: "chart", id: `chart-${spec.id}`, "data-chart": spec.id },
      el("h3", {}, this.titleEl = el("span", { class: "title" }, spec.title), el("span", { class: "tools" },
        toggle("log time", "logx"), toggle("log y", "logy"),
        el("a", { href: "#", class: "dl-csv", onclick: (e) => { e.preventDefault(); this.download("csv"); } }, "CSV"),
        el("a", { href: "#", class: "dl-npy", onclick: (e) => { e.preventDefault(); this.download("npy"); } }, "npy"))),
      this.plotEl, this.note);
    this.labels = [];
    this.x = [];
    this.cols = [];
    this.u = null;
    window.trajscope.charts[spec.id] = this;
  }

  setTitle(text) {
    this.titleEl.textContent = text;
  }

  // x: steps; cols: [{label, values, style}] (values aligned with x, null = missing)
  setData(x, cols) {
    const shape = cols.map((c) => c.label).join("|");
    this.x = x;
    this.cols = cols;
    if (!this.u || shape !== this.labels.join("|")) { this.labels = cols.map((c) => c.label); this.rebuild(); return; }
    this.u.setData(this.shown(), true);
  }

  shown() {
    // what the chart draws: x > 0 on a log time axis (step 0 cannot be placed), values > 0 on a log y axis
    let keep = null;
    if (this.logx) keep = this.x.map((v) => v > 0);
    const pick = (arr) => (keep ? arr.filter((_, i) => keep[i]) : arr.slice());
    const xs = pick(this.x);
    const ys = this.cols.map((c) => {
      const v = pick(c.values);
      return this.logy ? v.map((y) => (y !== null && y > 0 ? y : null)) : v;
    });
    return [xs, ...ys];
  }

  rebuild() {
    if (this.u) { this.u.destroy(); this.u = null; }
    if (!this.cols.length) return;
    const width = Math.max(300, this.plotEl.clientWidth || 600);
    const spec = this.spec;
    const opts = {
      width, height: 280,
      scales: { x: { time: false, distr: this.logx ? 3 : 1, range: (u, lo, hi) => [lo, hi > lo ? hi : lo + 1] },
        y: { distr: this.logy ? 3 : 1 } },
      axes: [{ label: this.logx ? "optimizer step (log; step 0 omitted)" : "optimizer step",
        values: (u, splits) => splits.map(axisNumber) },
      { label: spec.ylabel || "", size: 64, values: (u, splits) => splits.map(axisNumber) }],
      // the legend's numbers as the rest of the page writes them (fmt: 4 significant digits)
      series: [{ label: "step", value: legendNumber }, ...this.cols.map((c, i) => ({
        label: c.label, value: legendNumber, stroke: (c.style && c.style.color) || COLORS[i % COLORS.length],
        width: (c.style && c.style.width) || 1, dash: c.style && c.style.dash, spanGaps: true, points: { show: false } }))],
      bands: (spec.bands || []).map(([a, b, fill]) => ({ series: [a, b], fill })),
      cursor: { drag: { x: true, y: false, setScale: false } },
      legend: { live: true },
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 3) return;
          const xs = u.data[0];
          const clamp = (v) => Math.min(xs[xs.length - 1], Math.max(xs[0], v));
          const a = clamp(u.posToVal(u.select.left, "x")), b = clamp(u.posToVal(u.select.left + u.select.width, "x"));
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          if (this.onZoom && b > a) this.onZoom([Math.floor(a), Math.ceil(b)]);
        }],
        draw: [(u) => this.drawMarkers(u)],
      },
    };
    this.u = new uPlot(opts, this.shown(), this.plotEl);
    this.u.over.addEventListener("dblclick", () => this.onZoom && this.onZoom(null));
  }

  drawMarkers(u) {
    const ctx = u.ctx;
    for (const m of this.markers()) {
      if (m.step === null || m.step === undefined || (this.logx && m.step <= 0)) continue;
      const x = u.valToPos(m.step, "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.save();
      ctx.strokeStyle = m.color; ctx.setLineDash([3, 3]); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.fillStyle = m.color; ctx.font = `${12 * devicePixelRatio}px system-ui`;
      ctx.fillText(m.label, x + 4, u.bbox.top + 14 * devicePixelRatio);
      ctx.restore();
    }
  }

  download(kind) {
    // exactly what the chart draws (on a log time axis: without step 0)
    const names = ["step", ...this.cols.map((c) => c.label)];
    const columns = this.shown();
    const base = `${(window.trajscope.page && window.trajscope.page.name) || "trajscope"}-${this.spec.id}`;
    if (kind === "csv") save(`${base}.csv`, new Blob([tableCSV(names, columns)], { type: "text/csv" }));
    else save(`${base}.npy`, tableNPY(columns));
    window.trajscope.lastDownload = { kind, names, rows: this.x.length };
  }
}

// Join several sources ({x, values...}) on their steps: uPlot.join fills the gaps with null.
function joinSources(parts) {
  if (parts.length === 1) return [parts[0].x, ...parts[0].ys];
  return uPlot.join(parts.map((p) => [p.x, ...p.ys]));
}
