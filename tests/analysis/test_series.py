"""The fused per-step kernel (``step_series``) against the per-quantity functions; the summary reads W once."""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from trajscope.analysis import alignment, cones, invariants, phases, spectra
from trajscope.analysis.series import DETAIL, SERIES, step_series
from trajscope.analysis.summary import summary

HERE = Path(__file__).parent


def _per_quantity(ds: xr.Dataset, step) -> dict[str, xr.DataArray]:
    """Every series of ``step_series`` computed one quantity at a time (each its own graph)."""
    fr = cones.cone_fractions(ds, step)
    mna = alignment.mean_neuron_alignment(ds, step)
    ta = alignment.target_alignment(ds, step)
    out = {
        "aligned_fraction": cones.aligned_fraction(ds, step),
        "all_aligned": phases.all_aligned(ds, step),
        "target_alignment_mean": ta.mean("neuron"),
        "target_alignment_min": ta.min("neuron"),
        "frobenius_norm_sq": spectra.frobenius_norm_sq(ds, step),
        "spectral_norm_sq": spectra.spectral_norm_sq(ds, step),
        "stable_rank": spectra.stable_rank(ds, step),
        "effective_rank": spectra.effective_rank(ds, step),
        "max_balance_drift": invariants.max_balance_drift(ds, step),
        "cone_agreement_mean": cones.cone_agreement(ds, step).mean("neuron"),
        "cone_agreement_min": cones.cone_agreement(ds, step).min("neuron"),
    }
    for cone, name in (("S+", "frac_S_pos"), ("S-", "frac_S_neg"), ("dead", "frac_dead"), ("other", "frac_other")):
        out[name] = fr.sel(cone=cone, drop=True)
    for label, lab in ((1, "pos"), (-1, "neg")):
        out[f"mean_alignment_{lab}"] = mna["mean"].sel(label=label, drop=True)
        out[f"band_min_{lab}"] = mna["min"].sel(label=label, drop=True)
        out[f"band_max_{lab}"] = mna["max"].sel(label=label, drop=True)
        out[f"count_{lab}"] = mna["count"].sel(label=label, drop=True)
    return out


@pytest.mark.parametrize("name,step", [("small_run", slice(None, 500)), ("random_run", None),
                                       ("random_run", slice(9, None, 2))])
def test_fused_series_equal_the_per_quantity_functions(request, name, step):
    ds = request.getfixturevalue(name)
    fused = step_series(ds, step)
    assert fused["aligned_fraction"].chunks is not None  # lazy
    fused = fused.compute()
    expected = _per_quantity(ds, step)
    assert set(expected) == set(SERIES) == set(fused.data_vars)
    (expected,) = dask.compute(expected)
    for key, want in expected.items():
        got = fused[key]
        assert got.dims == ("step",) and np.array_equal(got["step"], want["step"]), key
        if key in ("target_alignment_mean", "cone_agreement_mean"):  # a nan-mean: sum then divide, as dask does, up to rounding
            np.testing.assert_allclose(got, want, rtol=1e-13, equal_nan=True, err_msg=key)
        else:  # the same floating-point operations in the same order: equal, not merely close
            np.testing.assert_array_equal(got.values, want.values.astype(got.dtype), err_msg=key)


def test_detail_levels_and_chunking(random_run):
    full = step_series(random_run).compute()
    last = step_series(random_run, detail="last", chunk_steps=20)
    assert last["aligned_fraction"].chunks[0] == (20, 20, 1)
    last = last.compute()
    none = step_series(random_run, detail="none").compute()
    ends = np.cumsum(random_run["W"].chunks[0]) - 1  # the last state of each time chunk
    for name in SERIES:
        if name in DETAIL:
            np.testing.assert_array_equal(last[name][ends], full[name][ends])
            assert np.isnan(np.delete(last[name].values, ends)).all() and np.isnan(none[name]).all()
        else:
            np.testing.assert_array_equal(last[name], full[name])
            np.testing.assert_array_equal(none[name], full[name])
    from trajscope.store.errors import UserError

    with pytest.raises(UserError, match="detail='some': choose 'all', 'last' or 'none'"):  # (a 400 over HTTP)
        step_series(random_run, detail="some")


@pytest.mark.parametrize("run", ["small_run", "random_run", "real_run"])
def test_a_summary_read_into_memory_equals_the_lazy_one(run, request, monkeypatch):
    """A small run's summary is computed in memory (``IN_MEMORY_BYTES``); the lazy path a large run takes gives the
    same numbers and attributes, for every variable."""
    import importlib

    summary_module = importlib.import_module("trajscope.analysis.summary")

    ds = request.getfixturevalue(run)
    assert ds["W"].chunks is not None and ds.nbytes <= summary_module.IN_MEMORY_BYTES
    in_memory = summary(ds)
    monkeypatch.setattr(summary_module, "IN_MEMORY_BYTES", 0)
    lazy = summary(ds)
    assert set(lazy.data_vars) == set(in_memory.data_vars) and lazy.attrs == in_memory.attrs
    for name in lazy.data_vars:
        np.testing.assert_allclose(lazy[name].values, in_memory[name].values, rtol=1e-12, atol=0, err_msg=name)
        assert lazy[name].attrs == in_memory[name].attrs, name


def test_summary_final_values_are_the_series_at_the_last_state(random_run):
    s = summary(random_run)
    full = step_series(random_run).isel(step=-1).compute()
    assert float(s["stable_rank_final"]) == float(full["stable_rank"])
    assert float(s["frac_other_final"]) == float(full["frac_other"])
    assert float(s["mean_alignment_neg_final"]) == pytest.approx(float(full["mean_alignment_neg"]), nan_ok=True)
    drift = invariants.max_balance_drift(random_run).max("step")
    assert float(s["max_balance_drift"]) == float(drift)
    t1 = phases.t1(random_run)
    assert float(s["t1_step"]) == pytest.approx(float(t1["t1_step"]), nan_ok=True)


def test_summary_reads_each_chunk_of_W_once(tmp_path, monkeypatch):
    """Count the zarr reads of ``W`` during a summary: one per stored chunk, none repeated."""
    import zarr

    import trajscope
    from trajscope.analysis.theory import first_weights

    sys.path.insert(0, str(HERE))
    from bigrun import write_big_run

    write_big_run(str(tmp_path), "r", steps=300, h=10, D=20, n=16, chunk_mib=0.01)
    ds = trajscope.open_run("r", root=str(tmp_path))
    nchunks = ds["W"].data.npartitions
    assert nchunks >= 10
    first_weights(ds)  # the theory's W(0) (read once per run, cached)
    reads: list = []
    orig = zarr.Array.__getitem__

    def counting(self, sel):
        if self.shape == ds["W"].shape:
            reads.append(sel)
        return orig(self, sel)

    monkeypatch.setattr(zarr.Array, "__getitem__", counting)
    s = summary(ds)
    assert int(s["n_states"]) == 300
    assert len(reads) == nchunks, (len(reads), nchunks)
    starts = sorted(r[0].start for r in reads)
    assert starts == sorted(set(starts))  # no chunk twice


@pytest.mark.parametrize("quantity", ["summary", "t1", "t2", "stable_rank", "step_series"])
def test_a_step_range_with_no_recorded_state_is_one_clear_error(small_run, quantity):
    """Found by a review: ``ds.traj.summary(step=slice(9000, 9999))`` raised a bare IndexError, ``t1`` a
    ValueError, and ``trajscope compare --step`` printed their tracebacks."""
    from trajscope.store.errors import UserError

    last = int(small_run["step"].values[-1])
    with pytest.raises(UserError, match=f"no recorded state in steps {last + 1}:{last + 9}: the run has steps"):
        getattr(small_run.traj, quantity)(step=slice(last + 1, last + 9))
    getattr(small_run.traj, quantity)(step=slice(0, last))  # a range that holds states is taken
    from trajscope.analysis._common import select

    sparse = small_run.isel(step=slice(None, None, 10))  # a range between two recorded states: said so
    with pytest.raises(UserError, match="no recorded state in steps 3:7: it falls between the recorded steps 0 and "
                                        "10; widen it"):
        select(sparse, slice(3, 7))


def test_a_diverged_state_is_in_no_cone_and_has_no_norms(small_run):
    """Found by a review: NaN weights (a diverged run) counted as "dead", so every neuron was "aligned" and t1
    was reached at the first NaN state; ``||W||_F²`` read 0 and the effective rank 1 there. A neuron whose
    weights are not finite is in no cone (``<x, w> > 0`` and ``<x, w> ≤ 0`` are both false for NaN), and the
    norms of such a state are NaN, in the per-quantity functions and the fused step series alike."""
    from trajscope.analysis.cones import aligned_fraction, cone_fractions
    from trajscope.analysis.spectra import effective_rank, frobenius_norm_sq

    ds = small_run.isel(step=slice(0, 40)).load()
    W = ds["W"].values.copy()
    W[30:] = np.nan  # diverged from the 31st state on
    W[20:30, 0] = np.inf  # one neuron first, then all
    ds = ds.assign(W=(ds["W"].dims, W)).chunk({"step": 16})
    steps = ds["step"].values
    fractions = cone_fractions(ds).compute()
    np.testing.assert_array_equal(fractions.values[30:], np.tile([0.0, 0.0, 0.0, 1.0], (10, 1)))
    assert (fractions.sel(cone="other").values[20:30] >= 1 / ds.sizes["neuron"]).all()
    assert (aligned_fraction(ds).values[30:] == 0).all()
    frob = frobenius_norm_sq(ds).values  # (inf while one neuron is, NaN once all are)
    assert (frob[20:30] == np.inf).all() and np.isnan(frob[30:]).all() and np.isfinite(frob[:20]).all()
    assert np.isnan(effective_rank(ds).values[30:]).all() and np.isfinite(effective_rank(ds).values[:20]).all()
    fused = step_series(ds).compute()
    np.testing.assert_array_equal(fused["aligned_fraction"].values, aligned_fraction(ds).values)
    np.testing.assert_array_equal(fused["frac_other"].values, fractions.sel(cone="other").values)
    np.testing.assert_array_equal(fused["frobenius_norm_sq"].values, frobenius_norm_sq(ds).values)
    np.testing.assert_array_equal(fused["effective_rank"].values[30:], effective_rank(ds).values[30:])
    assert np.isnan(fused["cone_agreement_mean"].values[20:]).all()
    t1_step = float(summary(ds)["t1_step"])
    assert np.isnan(t1_step) or t1_step < steps[20], t1_step  # never reached by the diverged states


def test_a_diverged_run_reads_as_diverged_in_every_reduction(small_run, tmp_path):
    """Found by a review of numerically hostile runs: a NaN state read as 0 in the generic norms (xarray's sums
    skip NaN), so `show` said a diverged model never moved; every NaN state counted as a sign flip (NaN ≠ NaN);
    the drift summary skipped the NaN states; and an infinite initial loss made t2 step 0 (inf ≤ inf). Checked
    against numpy on the same arrays."""
    from trajscope.analysis import generic
    from trajscope.analysis.invariants import max_balance_drift, sign_flips
    from trajscope.analysis.phases import t2
    from trajscope.analysis.plots import PLOT_KINDS
    from trajscope.figures import save_figure

    ds = small_run.isel(step=slice(0, 40)).load()
    W, v, loss = ds["W"].values.copy(), ds["v"].values.copy(), ds["loss"].values.copy()
    W[30:], v[30:], loss[30:] = np.nan, np.nan, np.nan  # diverged from the 31st state on
    W[25:30, 1] = np.nan  # one neuron first
    ds = ds.assign(W=(ds["W"].dims, W), v=(ds["v"].dims, v), loss=(ds["loss"].dims, loss)).chunk({"step": 16})
    W64 = W.astype(np.float64)
    fro = generic.frobenius_norms(ds)["W"].values
    np.testing.assert_allclose(fro, np.linalg.norm(W64.reshape(40, -1), axis=1), rtol=1e-12)  # NaN where numpy's is
    assert np.isnan(fro[25:]).all() and np.isfinite(fro[:25]).all()
    dist = generic.distance_from_init(ds)["W"].values
    np.testing.assert_allclose(dist, np.linalg.norm((W64 - W64[0]).reshape(40, -1), axis=1), rtol=1e-12)
    upd = generic.update_norms(ds)["W"].values
    np.testing.assert_allclose(upd, np.linalg.norm(np.diff(W64, axis=0).reshape(39, -1), axis=1), rtol=1e-12)
    assert np.isnan(generic.spectral_norms(ds)["v"].values[30:]).all()
    assert np.isnan(generic.parameter_summary(ds)["frobenius_norm"].values).all()  # (its last state is NaN)
    # sign flips: between finite states only, as numpy counts them
    s = np.sign(v.astype(np.float64))
    expected = ((np.diff(s, axis=0) != 0) & np.isfinite(np.diff(s, axis=0))).sum(0)
    np.testing.assert_array_equal(sign_flips(ds).values, expected)
    assert sign_flips(ds).values.sum() < 10 * ds.sizes["neuron"]  # not one a state per neuron
    # the drift: NaN at a state with a NaN neuron, and NaN for the run
    drift = np.abs((v.astype(np.float64) ** 2 - (W64 ** 2).sum(-1)) - (v[0].astype(np.float64) ** 2
                                                                        - (W64[0] ** 2).sum(-1))).max(1)
    np.testing.assert_allclose(max_balance_drift(ds).values, drift, rtol=1e-9)
    assert np.isnan(max_balance_drift(ds).values[25:]).all()
    np.testing.assert_allclose(step_series(ds)["max_balance_drift"].values, drift, rtol=1e-9)
    assert np.isnan(float(summary(ds)["max_balance_drift"]))
    # an infinite initial loss has no onset
    loss[0] = np.inf
    inf0 = ds.assign(loss=(ds["loss"].dims, loss))
    assert np.isnan(float(t2(inf0)["t2_step"])) and np.isnan(float(summary(inf0)["t2_step"]))
    # a run whose W is 0 throughout: figures on a log axis draw (linear, with a note), not raise
    zero = ds.assign(W=(ds["W"].dims, np.zeros_like(W)), v=(ds["v"].dims, np.zeros_like(v)))
    for kind in ("direction_field", "spectra", "loss"):
        save_figure(PLOT_KINDS[kind](zero), tmp_path / f"{kind}.png")
