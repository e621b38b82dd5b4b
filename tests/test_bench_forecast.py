"""`fmrilm bench forecast`: the baselines and metrics behind the forecasting figures, on processes with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from fmrilm.eval.bench_forecast import (
    ARModel,
    RidgeVAR,
    horizon_metrics,
    iterate,
    lagged,
    run_benchmark,
    split_context,
)


def var1(n_scans: int, n_timepoints: int, coupling: np.ndarray, seed: int) -> list[np.ndarray]:
    """Scans from x(t) = A x(t-1) + noise, with a level and scale of their own (as raw fMRI has)."""
    rng = np.random.default_rng(seed)
    r = len(coupling)
    out = []
    for _ in range(n_scans):
        x = np.zeros((n_timepoints + 50, r))
        for t in range(1, len(x)):
            x[t] = coupling @ x[t - 1] + rng.standard_normal(r)
        out.append(500.0 + 20.0 * rng.random() * x[50:])
    return out


def coupled(r: int = 6, seed: int = 0) -> np.ndarray:
    """A stable VAR(1) matrix with strong cross-region terms (a region follows its neighbour)."""
    a = 0.3 * np.eye(r)
    for i in range(r):
        a[i, (i + 1) % r] = 0.6
    return a


def test_lagged_rows_hold_the_previous_values_in_lag_order():
    ts = np.arange(12, dtype=float).reshape(6, 2)  # x(t) = [2t, 2t + 1]
    x, y = lagged([ts], p=2)
    np.testing.assert_array_equal(y[0], ts[2])
    np.testing.assert_array_equal(x[0], np.concatenate([ts[1], ts[0]]))  # x(t-1), then x(t-2)
    assert x.shape == (4, 4) and y.shape == (4, 2)


def test_ar_recovers_each_regions_own_coefficient_and_var_the_cross_terms():
    a = np.diag([0.8, -0.5, 0.2])
    series = var1(20, 200, a, seed=1)
    z = [(s - s.mean(0)) / s.std(0) for s in series]
    ar = ARModel(p=1).fit(z)
    np.testing.assert_allclose(ar.coef[:, 0], np.diag(a), atol=0.05)
    cross = coupled(4)
    zc = [(s - s.mean(0)) / s.std(0) for s in var1(20, 200, cross, seed=2)]
    var = RidgeVAR(p=1, alphas=(1e-3,)).fit(zc)
    history = np.eye(4)[[1]]  # x(t-1) = e_1: the next step reads column 1 of A (in standardised units)
    step = var.step(history) - var.step(np.zeros((1, 4)))
    assert step[0] > 0.3 and abs(step[2]) < 0.1  # region 0 follows region 1; region 2 does not
    assert iterate(var, zc[0][:10], 3).shape == (3, 4)


def test_metrics_are_exact_for_known_forecasts():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((30, 4, 5))
    usable = np.ones((30, 5), dtype=bool)
    perfect = horizon_metrics(target, target, usable)
    assert [m["h"] for m in perfect] == [1, 2, 3, 4]
    assert all(
        m["r2"] == pytest.approx(1.0) and m["r"] == pytest.approx(1.0) and m["mse"] == 0 for m in perfect
    )
    region_mean = np.broadcast_to(target.mean(axis=0, keepdims=True), target.shape)
    assert horizon_metrics(region_mean, target, usable)[0]["r2"] == pytest.approx(0.0, abs=1e-12)
    zero = horizon_metrics(np.zeros_like(target), target, usable)[0]
    assert np.isnan(zero["r"]) and zero["mse"] == pytest.approx(float((target[:, 0] ** 2).mean()))
    usable[:, 0] = False  # a bad region is left out of every figure
    broken = target.copy()
    broken[:, :, 0] = 1e6
    assert horizon_metrics(broken, target, usable)[0]["r2"] == pytest.approx(1.0)


def test_targets_use_the_context_statistics_only():
    ts = np.column_stack([np.arange(40.0), np.full(40, 3.0)])  # a trend and a flat (bad) region
    ctx, target, usable = split_context(ts, 20, 5)
    assert usable.tolist() == [True, False]
    mean, sd = np.arange(20.0).mean(), np.arange(20.0).std()
    np.testing.assert_allclose(target[:, 0], (np.arange(20.0, 25.0) - mean) / sd)
    assert not target[:, 1].any() and abs(ctx[:, 0].mean()) < 1e-12


def test_on_a_coupled_process_the_var_beats_the_ar_which_beats_the_mean_and_the_last_value():
    cross = coupled(6)
    train = var1(30, 150, cross, seed=3)
    test = var1(15, 60, cross, seed=4)
    result = run_benchmark(train, test, context=40, horizon=5, ar_order=2, var_order=1)
    h1 = {name: rows[0]["r2"] for name, rows in result["metrics"].items()}
    assert set(h1) == {"mean", "last", "ar", "var"}
    assert h1["var"] > h1["ar"] + 0.1 and h1["var"] > 0.3
    assert h1["var"] > h1["last"] and h1["var"] > h1["mean"]
    assert abs(h1["mean"]) < 0.2  # the context mean carries (almost) nothing about the future
    assert len(result["metrics"]["var"]) == 5
    # A forecast from elsewhere (the model's) is scored on the same targets: the truth itself scores 1.
    truth = np.stack([split_context(t, 40, 5)[1] for t in test])
    again = run_benchmark(train, test, context=40, horizon=5, extra={"oracle": truth})
    assert again["metrics"]["oracle"][0]["r2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shorter than context"):
        run_benchmark(train, test, context=58, horizon=5)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_model_forecasts_from_the_context_alone_at_the_native_tr():
    from dataclasses import replace

    from fmrilm.eval.bench_forecast import model_forecast

    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer

    llm, tok = tiny_causal_lm()
    model = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(window_length=16)).eval()
    scan = replace(random_scan(60, atlas="dosenbach160"), tr=2.5)
    ctx, target, _ = split_context(scan.timeseries.astype(float), 40, 6)
    out = model_forecast(model, scan, ctx, 6)
    assert out.shape == target.shape and np.isfinite(out).all()
    # Generated samples at 2 s, read at the native 2.5 s times: t = 2.5 lies a quarter of the way from 2 to 4.
    from fmrilm.signal import resample

    resampled = resample(ctx, 2.5, 2.0)
    whole = resampled[-16 * (len(resampled) // 16) :]
    generated = model.forecast(
        replace(scan, timeseries=whole.astype(np.float32), tr=2.0), windows=1
    ).timeseries
    np.testing.assert_allclose(
        out[0], generated[0] + 0.25 * (generated[1] - generated[0]), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("bad", [["--threads", "0"], ["--horizon", "0"], ["--context-s", "0"]])
def test_bad_settings_get_one_clear_error_before_any_data_is_read(bad, tmp_path, capsys):
    from fmrilm.eval.bench_forecast import main

    with pytest.raises(SystemExit) as exc:  # tmp_path holds no ABIDE: the settings are checked first
        main(["--abide", str(tmp_path), *bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {bad[0]}:" in err and "e.g." in err and "ABIDE folder" not in err
