"""The claims of Min, Mallada & Vidal (ICLR 2024) judged on measured runs: statement, measurement, rule, verdict.

Each claim is one row ``claim, paper, measured, rule, verdict``. The rule is written out with its
thresholds ("holds iff …") and the verdict follows from it alone: ``holds``, ``fails`` or ``not
applicable`` (a hypothesis of the claim fails on the runs, or a run is missing). Inputs are the
experiments' summary rows (:func:`trajscope.analysis.sweep.summary_record`), the sweep tables and a
few extra per-run measurements (the alignment onset); nothing here opens a run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ALIGN_LEVEL = 0.8  # "good alignment": both mean-neuron cosines at or above this from then on
FINAL_ALIGN_LEVEL = 0.9  # the paper reports 0.93-0.95; "holds" at or above this
#: a run tests the O(1/t) rate only if its envelope falls by at least this fraction of L(t2) by its last state:
#: α is tiny for most data (3e-8 to 6e-6 in the quick sweeps), and a loss frozen just under L(t2) stays under
#: an envelope that barely falls (found by a review)
INFORMATIVE_FALL = 0.05
HOLDS, FAILS, NA = "holds", "fails", "not applicable"


def _fmt(x: Any, digits: int = 3) -> str:
    """Report numbers: :func:`trajscope._format.fmt` with 3 digits, fit noise below 1e-12 as 0."""
    from trajscope._format import fmt

    try:
        if abs(float(x)) < 1e-12:
            return "0"
    except (TypeError, ValueError):
        pass
    return fmt(x, digits)


def _verdict(flag: bool) -> str:
    return HOLDS if flag else FAILS


def _t1_words(row: dict[str, Any], extra: dict[str, Any]) -> str:
    """The t1 reading of a run row, with the cone condition when t1 is not reached."""
    from trajscope.analysis.phases import t1_text
    from trajscope.analysis.separability import CONE_CONDITION

    text = t1_text(row)
    if row.get("t1_status") != "reached":
        text += f" ({extra.get('cone_condition') or CONE_CONDITION})"
    return text


def _rate_claim(exps: dict[str, Any], tables) -> tuple[str, str]:
    """O(1/t): (measured, verdict) from every finished run's envelope verdict (see RATE_RULE)."""
    runs: list[tuple[str, dict[str, Any]]] = [(k, e.row) for k, e in exps.items() if e.ok]
    for key in ("alignment_time", "epsilon"):
        table = tables.get(key)
        if table is not None and "rate_verdict" in table.columns:
            runs += [(f"{key}:{r.get('run_id', i)}", r) for i, r in enumerate(table.to_dict("records"))
                     if r.get("status") == "complete"]
    by = {v: [(k, r) for k, r in runs if r.get("rate_verdict") == v] for v in (HOLDS, FAILS, NA, "undecided")}
    judged = by[HOLDS] + by[FAILS]
    falls = {k: 1.0 - r["loss_envelope_final"] / r["loss_at_t2"] for k, r in judged
             if r.get("loss_at_t2") and r["loss_at_t2"] > 0 and not math.isnan(r["loss_at_t2"])}
    informative = [k for k, _ in by[HOLDS] if falls.get(k, 1.0) >= INFORMATIVE_FALL]
    parts = []
    if judged:
        worst = max(judged, key=lambda kr: kr[1]["envelope_ratio_max"])
        finals = [r["loss_final"] / r["loss_envelope_final"] for _, r in judged]
        approx = sorted({str(r.get("envelope_status", "")).removeprefix("approximate: ") for _, r in judged
                         if str(r.get("envelope_status", "")).startswith("approximate")})
        parts.append(f"{len(by[HOLDS])} of {len(judged)} applicable runs stay under the envelope "
                     f"(largest max over t > t2 of L/envelope: {_fmt(worst[1]['envelope_ratio_max'], 4)}, {worst[0]}; "
                     f"final L/envelope: median {_fmt(float(np.median(finals)), 3)})"
                     + (f"; hypotheses met approximately in some: {'; '.join(approx)}" if approx else ""))
        if falls:
            small = sorted(k for k, f in falls.items() if f < INFORMATIVE_FALL)
            parts.append(f"the envelope itself falls by {_fmt(100 * float(np.median(list(falls.values()))), 2)} % of "
                         f"L(t2) by the last state (median; {_fmt(100 * min(falls.values()), 2)}–"
                         f"{_fmt(100 * max(falls.values()), 2)} %)"
                         + (f"; by less than {INFORMATIVE_FALL:.0%} in {len(small)} of {len(falls)} runs, where staying "
                            "under it says little about the rate" if small else ""))
    if by["undecided"]:
        parts.append(f"{len(by['undecided'])} undecided (t2 not reached)")
    reasons: dict[str, list[str]] = {}
    for k, r in by[NA]:
        reasons.setdefault(str(r.get("rate_reason") or "?"), []).append(k.split(":")[0])
    if reasons:
        parts.append("not applicable: " + "; ".join(
            f"{', '.join(sorted(set(ks)))} ({why})" for why, ks in reasons.items()))
    slopes = [f"{k}: {_fmt(exps[k].row['post_t2_slope'])}" for k in ("fig5",) if k in exps and exps[k].ok
              and not math.isnan(exps[k].row["post_t2_slope"])]
    at = tables.get("alignment_time")
    if at is not None and len(at) and at["post_t2_slope"].notna().any():
        slopes.append(f"median of {int(at['post_t2_slope'].notna().sum())} alignment_time runs: "
                      f"{_fmt(float(at['post_t2_slope'].median()))}")
    if slopes:
        parts.append("fitted log-log slope of L against t − t2 over the last decade (a description, not the test): "
                     + ", ".join(slopes))
    if not judged:
        return "; ".join(parts) or "no finished run", NA
    if not by[FAILS] and not informative:
        return "; ".join(parts + [f"no run under the envelope sees it fall by {INFORMATIVE_FALL:.0%}: nothing tests the "
                                  "rate"]), NA
    return "; ".join(parts), _verdict(not by[FAILS])


def _claims(exps: dict[str, Any], tables, extra) -> list[dict[str, str]]:
    """Rows ``claim, paper, measured, rule, verdict`` (verdict: holds / fails / not applicable)."""
    from trajscope.analysis.sweep import fit_linear, fit_t1_scaling
    from trajscope.analysis.theory import RATE_RULE

    rows = []

    def add(claim: str, paper: str, measured: str, rule: str, verdict: str) -> None:
        rows.append({"claim": claim, "paper": paper, "measured": measured, "rule": rule, "verdict": verdict})

    def na(claim: str, paper: str, rule: str, why: str) -> None:
        add(claim, paper, f"not applicable: {why}", rule, NA)

    fig5 = exps.get("fig5")
    f5 = fig5.row if fig5 is not None and fig5.ok else None
    # 1. alignment before the loss falls
    claim, paper = "Alignment before the loss falls (Fig. 5 setting)", \
        "good alignment after ~2000 iterations, the loss falls after ~3000"
    rule = (f"holds iff alignment onset < t2: onset = first recorded step from which both mean-neuron cosines "
            f"cos(w̄±, x±) stay ≥ {ALIGN_LEVEL}; t2 = first step with L ≤ 0.95·L(0)")
    if f5 is not None and math.isnan(f5["t2_step"]):  # the loss never fell in the run: nothing to judge
        na(claim, paper, rule, f"the loss of the fig5 run never fell to 0.95·L(0) (alignment onset at step "
                               f"{_fmt(extra['fig5']['align_onset_step'])}): run it longer")
    elif f5 is not None:
        onset, t2s = extra["fig5"]["align_onset_step"], f5["t2_step"]
        add(claim, paper,
            f"alignment onset at step {_fmt(onset)}; t2 at step {_fmt(t2s)}; t1 (every neuron in its target cone "
            f"or dead): {_t1_words(f5, extra.get('fig5', {}))}", rule,
            _verdict(bool(onset < t2s)) if not (math.isnan(onset) or math.isnan(t2s)) else FAILS)
    else:
        na(claim, paper, rule, "the fig5 run is missing or did not finish")
    claim, paper = "Alignment before the loss falls (synthetic, μ > 0, every neuron)", "t1 < t2 (Theorem 1, then 2)"
    rule = ("holds iff t1 < t2 in every alignment_time run where both are measured; t1 = first recorded step from "
            "which every neuron stays in S_(sign v_j) or S_dead")
    at = tables.get("alignment_time")
    both = at.dropna(subset=["t1_step", "t2_step"]) if at is not None and len(at) else None
    if both is not None and len(both):
        frac = float((both["t1_step"] < both["t2_step"]).mean())
        add(claim, paper, f"t1 < t2 in {_fmt(100 * frac)} % of {len(both)} runs with both measured "
            f"({int(at['t1_step'].isna().sum())} of {len(at)} runs never all aligned)", rule, _verdict(frac == 1.0))
    else:
        na(claim, paper, rule, "no alignment_time run with both t1 and t2 measured")
    # 2. t1 scaling
    claim, paper = "t1 scales as log n / √μ (an upper bound)", "t1 = O(log n / √μ)"
    rule = ("fit log t1_sum = c + a·log(log n) + b·log(1/√μ) over the alignment_time runs (t1 in sum-loss time); "
            "holds iff a ≤ 1 + 2·stderr(a) and b ≤ 1 + 2·stderr(b) (at least 4 measured t1)")
    if at is not None and len(at) and at["t1_sum"].notna().sum() >= 4:
        fit = fit_t1_scaling(at, "t1_sum")
        fit_own = fit_t1_scaling(at, "t1_time")
        a, b = fit["exponents"]["log n"], fit["exponents"]["1/√μ"]
        sa, sb = fit["stderr"]["log n"], fit["stderr"]["1/√μ"]
        ok = a <= 1 + 2 * sa and b <= 1 + 2 * sb
        add(claim, paper,
            f"over {fit['n']} runs: a = {_fmt(a)} ± {_fmt(sa)}, b = {_fmt(b)} ± {_fmt(sb)}, R² = {_fmt(fit['r2'])}; "
            f"in the run's mean-loss time a = {_fmt(fit_own['exponents']['log n'])}, "
            f"b = {_fmt(fit_own['exponents']['1/√μ'])}", rule,
            _verdict(ok) if not (math.isnan(a) or math.isnan(b)) else FAILS)
    else:
        na(claim, paper, rule, "no alignment_time sweep with at least 4 measured t1")
    claim, paper = "t2 grows linearly with log(1/ε)", "t2 = Θ((1/n) log(1/(√h ε)))"
    rule = ("least-squares line t2 = c + s·log(1/ε) over the epsilon sweep, t2 in the theorems' sum-loss time "
            "(τ = t/n for a mean-loss run, as for t1); holds iff s > 0 and R² ≥ 0.9 (≥ 3 runs)")
    ep = tables.get("epsilon")
    if ep is not None and len(ep) and ep["t2_sum"].notna().sum() >= 3:
        x = np.log(1.0 / ep["epsilon"].astype(float))
        f2, f1 = fit_linear(ep, "t2_sum", x), fit_linear(ep, "t1_sum", x)
        own = fit_linear(ep, "t2_time", x)
        n = ep["n"].astype(float).dropna().unique()
        coef = f" (the formula's 1/n = {_fmt(1.0 / n[0])})" if n.size == 1 else ""
        add(claim, paper, f"in sum-loss time s = dt2/dlog(1/ε) = {_fmt(f2['slope'])} ± {_fmt(f2['stderr'])}{coef} "
            f"(R² = {_fmt(f2['r2'])}), dt1/dlog(1/ε) = {_fmt(f1['slope'])}; in the runs' own (mean-loss) time "
            f"s = {_fmt(own['slope'])}; over {f2['n']} runs", rule,
            _verdict(f2["slope"] > 0 and f2["r2"] >= 0.9))
    else:
        na(claim, paper, rule, "no epsilon sweep with at least 3 measured t2")
    # 3. O(1/t) after t2: the theorem's envelope where its hypotheses hold
    measured, verdict = _rate_claim(exps, tables)
    add("Loss decays at least as fast as O(1/t) after t2",
        "L(t) ≤ L(t2)/(L(t2) α (t − t2) + 1), α = (μ X_min)²/(32 X_max) (sum loss, balanced init, μ > 0)",
        measured, RATE_RULE + f"; the claim holds iff every applicable run holds and in at least one the envelope falls "
        f"by ≥ {INFORMATIVE_FALL:.0%} of L(t2) by its last state (else it is not applicable: nothing tests the rate)",
        verdict)
    # 4. stable rank
    claim, paper = "Final stable rank ≤ 2 (≈ 1.1 on 0 vs 1)", "||W||_F²/||W||_2² → ≤ 2; ≈ 1.1 on MNIST 0 vs 1"
    rule = "holds iff the final stable rank ≤ 2 in every finished run that trains both layers and reached t2"
    both_layers = [e for e in exps.values() if e.ok and e.config.train.train_v and not math.isnan(e.row["t2_step"])]
    if both_layers:
        worst = max(both_layers, key=lambda e: e.row["stable_rank_final"])
        measured = (f"Fig. 5: {_fmt(f5['stable_rank_final'])}; " if f5 is not None else "") + \
            f"max over {len(both_layers)} runs: {_fmt(worst.row['stable_rank_final'])} ({worst.key})"
        add(claim, paper, measured, rule, _verdict(worst.row["stable_rank_final"] <= 2.0))
    else:
        na(claim, paper, rule, "no finished run that trains both layers")
    # 5. final mean-neuron alignment on 0 vs 1
    claim, paper = "Final mean-neuron alignment on 0 vs 1", "cos(w̄±, x±) ≈ 0.93–0.95"
    rule = f"holds iff min(cos(w̄+, x+), cos(w̄-, x-)) ≥ {FINAL_ALIGN_LEVEL} at the last recorded state of fig5"
    if f5 is not None:
        p, n = f5["mean_alignment_pos_final"], f5["mean_alignment_neg_final"]
        add(claim, paper, f"cos(w̄+, x+) = {_fmt(p)}, cos(w̄-, x-) = {_fmt(n)}", rule,
            _verdict(min(p, n) >= FINAL_ALIGN_LEVEL))
    else:
        na(claim, paper, rule, "the fig5 run is missing or did not finish")
    # 6. two phases with both layers, none with W only
    claim = "Two phases when both layers train, none when only W trains"
    paper = ("alignment while the loss stays flat, then the decrease (both layers); with v = ±1 fixed the loss "
             "falls at once, before the neurons align")
    rule = (f"holds iff alignment onset (both mean-neuron cosines ≥ {ALIGN_LEVEL} from then on) < t2 in fig5 and "
            "not in w_only (W only: never aligned, or aligned at or after t2)")
    wo = exps.get("w_only")
    if f5 is not None and wo is not None and wo.ok:
        a5, aw = extra["fig5"]["align_onset_step"], extra["w_only"]["align_onset_step"]
        t5, tw = f5["t2_step"], wo.row["t2_step"]
        two5 = not math.isnan(a5) and not math.isnan(t5) and a5 < t5
        twow = not math.isnan(aw) and not math.isnan(tw) and aw < tw
        add(claim, paper,
            f"both layers: onset at step {_fmt(a5)}, t2 at step {_fmt(t5)}; "
            f"W only: {'onset at step ' + _fmt(aw) if not math.isnan(aw) else 'never aligned'}, t2 at step {_fmt(tw)}",
            rule, _verdict(two5 and not twow))
    else:
        na(claim, paper, rule, "the fig5 or w_only run is missing or did not finish")
    return rows
