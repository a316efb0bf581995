"""Walk-forward (rolling-origin) evaluation: fold bounds, no look-ahead in any fold, per-fold
and summary metrics, the model a walk-forward run logs, and walk-forward `evaluate`."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import as_current_store, assert_metrics_say_their_split, private_store, synthetic_bars, write_ticker_csvs

from stocklab.config import EvaluateConfig, StockLabError, TrainConfig
from stocklab.jobs.evaluate import run_evaluate
from stocklab.jobs.train import run_train
from stocklab.models import model_config
from stocklab.pipeline.fitting import fit_fold
from stocklab.pipeline.inputs import folds_of, load_inputs, with_windows
from stocklab.windows import end_day_ranges, split_bounds, walk_forward_folds

FR = (0.5, 0.2, 0.3)


def test_one_fold_is_the_plain_split_and_folds_tile_the_out_of_sample_period():
    D, h = 1000, 7
    (one,) = walk_forward_folds(D, FR, h)
    b1, b2 = split_bounds(D, FR)
    assert one.end_day_ranges(h) == {"train": (0, b1 - h), "valid": (b1, b2 - h), "test": (b2, D - h)}
    assert end_day_ranges(D, FR, h) == one.end_day_ranges(h)
    for walk in ("expanding", "sliding"):
        folds = walk_forward_folds(D, FR, h, folds=4, walk=walk)
        tests = [f.end_day_ranges(h)["test"] for f in folds]
        # consecutive, non-overlapping test periods from the initial span's end to the last label
        assert tests[0][0] == b2 and tests[-1][1] == D - h
        assert all(a[1] == b[0] for a, b in zip(tests, tests[1:]))
        for f in folds:
            r = f.end_day_ranges(h)
            # the horizon embargo: every fitting label ends before the next span begins
            assert r["train"][1] + h <= f.valid_start and r["valid"][1] + h <= f.test_start
            assert f.test_start - f.valid_start == b2 - b1  # validation: the end of the training span
            assert f.train_start == (0 if walk == "expanding" else max(0, f.valid_start - b1))
    sliding = walk_forward_folds(D, FR, h, folds=4, walk="sliding")
    assert [f.valid_start - f.train_start for f in sliding] == [b1] * 4  # a fixed-length window
    with pytest.raises(StockLabError, match="folds: 300 folds leave fold"):
        walk_forward_folds(D, FR, h, folds=300)
    with pytest.raises(StockLabError, match="walk: 'rolling' must be one of expanding, sliding"):
        walk_forward_folds(D, FR, h, folds=2, walk="rolling")


def _alter_from(bars: pd.DataFrame, day: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Every bar on or after `day` replaced by different (still valid) prices and volumes."""
    out = bars.copy()
    later = pd.to_datetime(out["date"]) >= day
    rng = np.random.default_rng(seed)
    factor = rng.uniform(0.5, 2.0, later.sum())
    for col in ("open", "high", "low", "close"):
        out.loc[later, col] = out.loc[later, col] * factor
    out.loc[later, "volume"] = rng.integers(1, 10**6, later.sum())
    return out


def _fit_every_fold(tmp_path, bars, name, cfg):
    base = load_inputs(dataclasses.replace(cfg, data=str(write_ticker_csvs(bars, tmp_path / name))))
    mcfg = model_config(cfg.model)
    return base, [
        fit_fold(cfg, mcfg, with_windows(base, cfg, "cpu", fold), None, f"{name}/")
        for fold in folds_of(cfg, len(base.panel.dates))
    ]


def test_no_fold_sees_a_later_period_in_training_scaling_or_its_inputs(tracking, tmp_path):
    """3-fold walk-forward: altering every bar after a fold's training+validation span leaves
    its fitted weights and train-fitted scaler bit-for-bit unchanged (so its predictions for
    the same inputs), and altering every bar after its test period leaves all its predictions
    unchanged: no fold ever uses a label or bar from a later period."""
    bars = synthetic_bars(n_tickers=6, n_days=420)
    cfg = TrainConfig(model="lstm", epochs=2, horizon=5, seq_len=10, folds=3, split="0.5,0.2,0.3",
                      scaler="standard", cache_dir="", batch_size=64)  # fmt: skip
    with mlflow.start_run():
        base, original = _fit_every_fold(tmp_path, bars, "orig", cfg)
        dates = base.panel.dates
        for k, res in enumerate(original):
            fold = res.prep.ws.fold
            # (a) everything from the fold's test period on is different
            _, altered = _fit_every_fold(tmp_path, _alter_from(bars, dates[fold.test_start], k), f"a{k}", cfg)
            other = altered[k]
            assert other.prep.ws.fold == fold
            np.testing.assert_array_equal(other.prep.ws.scaler.shift, res.prep.ws.scaler.shift)
            np.testing.assert_array_equal(other.prep.ws.scaler.scale, res.prep.ws.scaler.scale)
            for key, value in res.model.state_dict().items():
                assert torch.equal(value, other.model.state_dict()[key]), (k, key)
            n, t = res.prep.ws.index["test"]
            with torch.no_grad():
                x = res.prep.ws.gather(n, t)
                assert torch.equal(res.model(x), other.model(x))
            # and the altered bars did reach that fold's test inputs (the check can fail)
            assert not res.test["prediction"].equals(other.test["prediction"])
            # (b) everything after the fold's test period is different: its predictions are not
            if fold.test_end < len(dates):
                _, later = _fit_every_fold(tmp_path, _alter_from(bars, dates[fold.test_end], 10 + k), f"b{k}", cfg)
                ours, theirs = res.test, later[k].test
                pd.testing.assert_frame_equal(theirs.drop(columns="label"), ours.drop(columns="label"))
                # only the outcomes of the period's last days (their labels end in the next
                # period, the forecast's target) can differ
                label_day = dates.get_indexer(ours["date"]) + cfg.horizon
                same = label_day < fold.test_end
                np.testing.assert_array_equal(theirs["label"][same], ours["label"][same])
                assert not later[-1].test["prediction"].equals(original[-1].test["prediction"])


@pytest.fixture(scope="module")
def walked(tmp_path_factory, migrated_store):
    """One walk-forward `train` run (3 sliding folds), `evaluate` of its logged model and a
    walk-forward `evaluate` (2 folds) in a store of their own, read by the named cases below."""
    tmp = tmp_path_factory.mktemp("walk")
    uri = private_store(tmp, migrated_store)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(tmp)
        mlflow.set_tracking_uri(uri)
        try:
            data = write_ticker_csvs(synthetic_bars(), tmp / "csvs")
            cfg = TrainConfig(data=str(data), model="gru", epochs=2, horizon=5, folds=3, split="0.5,0.2,0.3",
                              cache_dir="", walk="sliding", tear_sheet=False)  # fmt: skip
            res = run_train(cfg)
            ev = run_evaluate(EvaluateConfig(run_id=res["run_id"], tear_sheet=False))
            wf = run_evaluate(EvaluateConfig(run_id=res["run_id"], folds=2, tear_sheet=False))
            base = load_inputs(cfg)
        finally:
            mlflow.set_tracking_uri(None)
    return SimpleNamespace(uri=uri, cfg=cfg, run_id=res["run_id"], ev=ev["run_id"], wf=wf["run_id"],
                           dates=base.panel.dates, folds=folds_of(cfg, len(base.panel.dates)))  # fmt: skip


@pytest.fixture
def walk(walked, monkeypatch):
    yield from as_current_store(walked, monkeypatch)


def _predictions(run_id: str) -> pd.DataFrame:
    return pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet"))


@pytest.mark.slow
def test_a_walk_forward_run_logs_each_folds_metrics_and_their_mean(walk):
    client = mlflow.MlflowClient()
    run = client.get_run(walk.run_id)
    history = sorted(client.get_metric_history(walk.run_id, "fold/test_rank_ic"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3]
    per_fold = [m.value for m in history]
    assert run.data.metrics["test_rank_ic"] == pytest.approx(np.mean(per_fold))
    assert run.data.metrics["test_rank_ic_std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert {"fold_1/train_loss", "fold_3/valid_loss", "test_mse_skill_mean", "oos_rank_ic"} <= set(run.data.metrics)
    assert run.data.params["folds"] == "3" and run.data.params["walk"] == "sliding"
    artifacts = {a.path for a in client.list_artifacts(walk.run_id, "plots")}
    assert {"plots/loss_curve_fold_1.png", "plots/loss_curve_fold_3.png"} <= artifacts
    assert_metrics_say_their_split(run)


@pytest.mark.slow
def test_its_predictions_are_the_test_periods_back_to_back_each_day_once(walk):
    preds = _predictions(walk.run_id)
    lo, hi = walk.folds[0].end_day_ranges(5)["test"][0], walk.folds[-1].end_day_ranges(5)["test"][1]
    days = pd.DatetimeIndex(sorted(preds["date"].unique()))
    assert days[0] == walk.dates[lo] and days[-1] == walk.dates[hi - 1]
    assert not preds.duplicated(["date", "ticker"]).any()
    windows = mlflow.MlflowClient().get_metric_history(walk.run_id, "fold/test_windows")
    assert len(windows) == 3 and sum(m.value for m in windows) == len(preds)


@pytest.mark.slow
def test_its_logged_model_is_the_last_folds_and_evaluate_scores_that_fold_only(walk):
    last = walk.folds[-1].end_day_ranges(5)["test"]
    assert _predictions(walk.ev)["date"].min() == walk.dates[last[0]]


@pytest.mark.slow
def test_walk_forward_evaluate_refits_the_runs_configuration_on_its_own_folds(walk):
    client = mlflow.MlflowClient()
    wf_run = client.get_run(walk.wf)
    assert wf_run.data.params["folds"] == "2" and wf_run.data.params["model"] == "gru"
    assert wf_run.data.tags["stocklab.source_run_id"] == walk.run_id
    assert len(client.get_metric_history(walk.wf, "fold/test_rank_ic")) == 2
    assert_metrics_say_their_split(wf_run)
