"""The claim rules on fabricated summary rows: every verdict follows from the written-out rule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from trajscope.analysis.separability import CONE_CONDITION
from trajscope.claims import _rate_claim, _t1_words


def _exp(**row):
    base = {"status": "complete", "post_t2_slope": -1.2, "loss_final": 0.01, "loss_envelope_final": 0.5,
            "envelope_status": "ok"}
    return SimpleNamespace(ok=True, row={**base, **row})


def test_rate_claim_fails_when_any_applicable_run_exceeds_the_envelope():
    exps = {"fig5": _exp(rate_verdict="not applicable", rate_reason="μ > 0 (Assumption 1): μ = -0.85 ≤ 0",
                         envelope_ratio_max=float("nan"), post_t2_slope=-0.896),
            "w_only": _exp(rate_verdict="not applicable", rate_reason="both layers train: v is fixed",
                           envelope_ratio_max=float("nan"))}
    table = pd.DataFrame([
        {"run_id": "a", "status": "complete", "rate_verdict": "holds", "envelope_ratio_max": 0.99,
         "loss_final": 0.1, "loss_envelope_final": 1.0, "envelope_status": "ok", "post_t2_slope": -1.5},
        {"run_id": "b", "status": "complete", "rate_verdict": "fails", "envelope_ratio_max": 1.2,
         "loss_final": 0.9, "loss_envelope_final": 0.5, "envelope_status": "approximate: logistic loss",
         "post_t2_slope": -0.5},
    ])
    measured, verdict = _rate_claim(exps, {"alignment_time": table})
    assert verdict == "fails"
    assert "1 of 2 applicable runs" in measured and "1.2" in measured and "alignment_time:b" in measured
    assert "fig5 (μ > 0 (Assumption 1): μ = -0.85 ≤ 0)" in measured and "w_only (both layers train" in measured
    assert "fig5: -0.896" in measured and "a description, not the test" in measured
    assert "approximately in some: logistic loss" in measured
    # only inapplicable runs: the claim itself is not applicable, whatever the slopes say
    measured, verdict = _rate_claim(exps, {})
    assert verdict == "not applicable" and measured.startswith("not applicable: ")
    # every applicable run under the envelope: holds
    measured, verdict = _rate_claim(exps, {"alignment_time": table.iloc[:1]})
    assert verdict == "holds" and "1 of 1 applicable runs" in measured


def test_t1_words_give_the_reading_and_the_condition():
    undefined = {"t1_step": float("nan"), "t1_status": "undefined", "in_cone_fraction_max": 0.0,
                 "aligned_fraction_max": 0.0, "cone_agreement_best": 0.93, "cone_agreement_best_step": 2000.0,
                 "cone_agreement_min_at_best": 0.71}
    text = _t1_words(undefined, {})
    assert text.startswith("undefined (no neuron ever enters a cone")
    assert "step 2000" in text and "93.0 %" in text and "71.0 %" in text and CONE_CONDITION in text
    assert "cones need μ > 0" not in text
    assert _t1_words(undefined, {"cone_condition": "on these data S+ is empty"}).endswith("(on these data S+ is empty)")
    assert _t1_words({"t1_step": 31.0, "t1_status": "reached", "in_cone_fraction_max": 1.0}, {}) == "step 31"


def test_alignment_claims_with_nothing_to_judge_are_not_applicable():
    """Found by a review: a quick report whose runs never saw the loss fall read "t1 < t2 in — % of 0 runs with
    both measured: fails". With no t2 there is nothing to judge: not applicable, saying why."""
    from trajscope.claims import _claims

    nan = float("nan")
    fig5 = _exp(t2_step=nan, t1_step=40.0, t1_status="reached", in_cone_fraction_max=1.0, post_t2_slope=nan,
                rate_verdict="not applicable", rate_reason="no t2", envelope_ratio_max=nan,
                mean_alignment_pos_final=0.9, mean_alignment_neg_final=0.9, stable_rank_final=1.5)
    fig5.config = SimpleNamespace(train=SimpleNamespace(train_v=True))
    never_fell = pd.DataFrame([{"run_id": "a", "status": "complete", "t1_step": 30.0, "t2_step": nan, "t1_sum": nan,
                                "t1_time": nan, "rate_verdict": "not applicable", "rate_reason": "no t2",
                                "envelope_ratio_max": nan, "loss_final": 1.0, "loss_envelope_final": nan,
                                "envelope_status": "ok", "post_t2_slope": nan}])
    rows = {r["claim"]: r for r in _claims({"fig5": fig5}, {"alignment_time": never_fell},
                                           {"fig5": {"align_onset_step": 20.0}})}
    fig5_row = rows["Alignment before the loss falls (Fig. 5 setting)"]
    assert fig5_row["verdict"] == "not applicable" and "never fell to 0.95·L(0)" in fig5_row["measured"]
    synthetic = rows["Alignment before the loss falls (synthetic, μ > 0, every neuron)"]
    assert synthetic["verdict"] == "not applicable" and "whose loss fell" in synthetic["measured"]
    # one run with both measured, in order: holds; the loss falling first: fails
    for t2, verdict in ((50.0, "holds"), (10.0, "fails")):
        rows = {r["claim"]: r for r in _claims({}, {"alignment_time": never_fell.assign(t2_step=[t2])}, {})}
        assert rows["Alignment before the loss falls (synthetic, μ > 0, every neuron)"]["verdict"] == verdict


def test_rate_claim_needs_an_envelope_that_falls():
    """Found by a review: α is tiny for most data, so the envelope fell by under 5 % of L(t2) in 15 of the quick
    report's 16 runs, where a loss frozen just under L(t2) would also "hold". A run tests the rate only where its
    envelope falls by at least INFORMATIVE_FALL; with none, the claim is not applicable, saying why."""
    from trajscope.claims import INFORMATIVE_FALL

    def row(run_id, fall):
        return {"run_id": run_id, "status": "complete", "rate_verdict": "holds", "envelope_ratio_max": 0.999,
                "loss_at_t2": 2.0, "loss_envelope_final": 2.0 * (1 - fall), "loss_final": 2.0 * (1 - fall) * 0.999,
                "envelope_status": "ok", "post_t2_slope": -0.01}

    flat = pd.DataFrame([row("a", 0.0001), row("b", INFORMATIVE_FALL / 2)])
    measured, verdict = _rate_claim({}, {"alignment_time": flat})
    assert verdict == "not applicable" and "nothing tests the rate" in measured
    assert "by less than 5% in 2 of 2 runs" in measured and "0.01–2.5 %" in measured
    steep = pd.concat([flat, pd.DataFrame([row("c", 0.43)])])
    measured, verdict = _rate_claim({}, {"alignment_time": steep})
    assert verdict == "holds" and "in 2 of 3 runs" in measured and "–43 %" in measured


def test_a_note_when_runs_of_different_mu_reach_t1_together():
    """Found by a review: the three two-point runs reach t1 at the same step for μ from 0 to 0.1 (same seed and
    width: the worst-placed initial neuron sets t1), beside the paper's "alignment time grows as μ shrinks"."""
    from trajscope.reproduce import _same_t1_note

    def exp(key, kind, mu, t1):
        return SimpleNamespace(key=key, ok=True, config=SimpleNamespace(data=SimpleNamespace(kind=kind)),
                               row={"mu": mu, "t1_step": t1, "t1_status": "reached"})

    same = [exp("two_point_0p1", "two_point", 0.0998, 286.0), exp("two_point_0p001", "two_point", 0.001, 286.0),
            exp("toy_r2", "toy2d", 0.3, 40.0)]
    (note, _) = _same_t1_note(same)
    assert "two_point runs (two_point_0p1, two_point_0p001) reach t1 at the same step (286)" in note
    assert "do not test how the alignment time grows" in note and "toy_r2" not in note
    assert _same_t1_note([same[0], exp("two_point_0p001", "two_point", 0.001, 300.0)]) == []


def _rows(exps, tables, extra=None):
    from trajscope.claims import _claims

    tables = {k: t if "post_t2_slope" in t.columns else t.assign(post_t2_slope=float("nan")) for k, t in tables.items()}
    return {r["claim"]: r for r in _claims(exps, tables, extra or {})}


SYNTHETIC = "Alignment before the loss falls (synthetic, μ > 0, every neuron)"


def test_a_run_whose_loss_fell_before_every_neuron_aligned_is_a_counter_example():
    """Found by a review: the synthetic alignment claim dropped runs with t1 unmeasured, so a run that reached t2
    and never had every neuron aligned (its t1 is past its last state, hence past t2) was left out, and the claim
    read "holds". It also judged runs with μ ≤ 0, which no theorem covers."""
    nan = float("nan")
    table = pd.DataFrame([{"run_id": "a", "mu": 0.1, "t1_step": 30.0, "t2_step": 50.0},
                          {"run_id": "b", "mu": 0.1, "t1_step": nan, "t2_step": 1234.0},
                          {"run_id": "c", "mu": 0.1, "t1_step": 20.0, "t2_step": nan}])
    row = _rows({}, {"alignment_time": table})[SYNTHETIC]
    assert row["verdict"] == "fails" and "t1 < t2 in 1 of 2 runs whose loss fell" in row["measured"]
    assert "1 reached t2 without every neuron aligned" in row["measured"] and "1 aligned, their loss not yet" in row["measured"]
    assert _rows({}, {"alignment_time": table.iloc[[0, 2]]})[SYNTHETIC]["verdict"] == "holds"
    # μ ≤ 0: outside the claim, whatever its order
    flipped = table.assign(mu=[0.1, -0.3, 0.1])
    assert _rows({}, {"alignment_time": flipped})[SYNTHETIC]["verdict"] == "holds"


def test_t1_scaling_with_too_few_fitted_runs_is_not_applicable_and_reports_the_bound_met_outright():
    """Found by a review: with four measured t1 of which one is 0 (all aligned at the first state), the fit kept 3
    rows, returned NaN, and the claim read "fails". The rows the fit uses decide; and the fitted exponents say
    nothing of the bound's size, so the runs under a lower estimate of the bound are counted beside them."""
    claim = "t1 scales as log n / √μ (an upper bound)"
    n = [100, 200, 400, 800, 1600]
    mu = [0.1, 0.05, 0.2, 0.1, 0.05]
    scale = [np.log(k) / np.sqrt(m) for k, m in zip(n, mu)]  # X_min = 1
    table = pd.DataFrame({"run_id": list("abcde"), "n": n, "mu": mu, "t1_sum": [0.5 * s for s in scale],
                          "t1_time": [0.5 * s for s in scale], "log_n_over_sqrt_mu_xmin": scale,
                          "zeta1": [0.5] * 5, "zeta2": [0.9] * 5, "t2_step": [float("nan")] * 5,
                          "t1_step": [1.0] * 5})
    row = _rows({}, {"alignment_time": table})[claim]
    assert row["verdict"] == "holds" and "over 5 runs" in row["measured"]
    assert "≤ 16 log n/(min{ζ1, ζ2} √μ X_min) (the bound met whatever ξ) in 5 of 5 runs" in row["measured"]
    far = table.assign(t1_sum=table["t1_sum"] * 1e6)  # same exponents, far above the lower estimate
    assert "in 0 of 5 runs" in _rows({}, {"alignment_time": far})[claim]["measured"]
    few = table.iloc[:4].assign(t1_sum=[0.0, *table["t1_sum"][1:4]])
    row = _rows({}, {"alignment_time": few})[claim]
    assert row["verdict"] == "not applicable" and "fewer than 4" in row["measured"]


def test_the_stable_rank_claim_uses_the_theorems_bound_where_it_applies():
    """Found by a review: the claim compared with 2, not the theorem's bound 2 + 4√h ε W_max²/||W||_2², over runs
    the theorem does not cover (μ ≤ 0), and its worst case was a D = 2 run, which can never exceed 2."""
    claim = "Final stable rank within the theorem's bound (→ 2; ≈ 1.1 on 0 vs 1)"
    nan = float("nan")

    def run(run_id, final, bound, h=20, D=30):
        return {"run_id": run_id, "status": "complete", "stable_rank_final": final, "stable_rank_bound_final": bound,
                "t1_step": 50.0, "t2_step": 100.0, "h": h, "D": D}

    table = pd.DataFrame([run("a", 2.3, 2.5), run("b", 1.2, 2.01), run("mu_neg", 9.0, nan), run("flat", 1.99, 2.0, D=2)])
    row = _rows({}, {"alignment_time": table})[claim]
    assert row["verdict"] == "holds" and "within the bound in 2 of 2 runs" in row["measured"]  # 2.3 > 2, ≤ its bound
    assert "1 runs with min(h, D) ≤ 2 not counted" in row["measured"]
    over = table.assign(stable_rank_final=[2.6, 1.2, 9.0, 1.99])
    row = _rows({}, {"alignment_time": over})[claim]
    assert row["verdict"] == "fails" and "alignment_time:a" in row["measured"]
    row = _rows({}, {"alignment_time": table.iloc[2:]})[claim]
    assert row["verdict"] == "not applicable" and "min(h, D) ≤ 2 (cannot fail)" in row["measured"]


def test_two_phases_needs_the_w_only_loss_to_fall():
    """Found by a review: a W-only run whose loss never fell and whose neurons never aligned read "holds", though
    the paper's "with v fixed the loss falls at once" is then not shown at all."""
    claim = "Two phases when both layers train, none when only W trains"
    nan = float("nan")
    fig5 = _exp(t2_step=2760.0, t1_step=nan, t1_status="not reached", in_cone_fraction_max=0.6,
                mean_alignment_pos_final=0.9, mean_alignment_neg_final=0.9, stable_rank_final=1.03,
                rate_verdict="not applicable", rate_reason="μ ≤ 0", envelope_ratio_max=nan)
    fig5.config = SimpleNamespace(train=SimpleNamespace(train_v=True))
    w_only = _exp(t2_step=nan, rate_verdict="not applicable", rate_reason="v fixed", envelope_ratio_max=nan)
    w_only.config = SimpleNamespace(train=SimpleNamespace(train_v=False))
    extra = {"fig5": {"align_onset_step": 750.0}, "w_only": {"align_onset_step": nan}}
    row = _rows({"fig5": fig5, "w_only": w_only}, {}, extra)[claim]
    assert row["verdict"] == "not applicable" and "never fell" in row["measured"]
    for onset, t2, verdict in ((10.0, 10.0, "holds"), (nan, 10.0, "holds"), (5.0, 10.0, "fails")):
        w_only.row["t2_step"] = t2
        extra["w_only"]["align_onset_step"] = onset
        assert _rows({"fig5": fig5, "w_only": w_only}, {}, extra)[claim]["verdict"] == verdict, (onset, t2)
