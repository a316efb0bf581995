"""The LightGBM yardstick (models/lgbm.py, boosting.py): learns, is deterministic, ranks, and
goes through the train job, the registry and the raw-bar scoring model like every network."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import long_bars, synthetic_bars

from stocklab import registry
from stocklab.config import StockLabError, TrainConfig
from stocklab.factor_eval import daily_ic
from stocklab.features import build_panel
from stocklab.jobs.train import run_train
from stocklab.models import build_model, effective_config, model_config
from stocklab.pipeline.logged import load_network
from stocklab.training import fit, predict
from stocklab.training.boosting import groups, relevance
from stocklab.windows import WindowSet


@pytest.fixture(scope="module")
def planted_ws() -> WindowSet:
    """Next-day return = 0.5 x today's + noise: a signal trees can find in the window."""
    panel = build_panel(long_bars(synthetic_bars(n_tickers=10, n_days=500, signal=0.5)), "returns", 1, 100.0)
    return WindowSet(panel, 10, 1, (0.6, 0.2, 0.2), "standard")


def _fit(ws: WindowSet, seed: int = 0, **overrides):
    mcfg = model_config("lgbm", {"n_estimators": 100, **overrides})
    cfg = effective_config(TrainConfig(seed=seed, patience=2), mcfg)
    model = build_model("lgbm", ws.n_features, ws.seq_len, mcfg)
    return model, fit(model, ws, cfg)


def test_lgbm_learns_the_planted_signal_and_is_deterministic(planted_ws):
    model, hist = _fit(planted_ws)
    assert hist.train_loss[-1] < hist.train_loss[0] and 1 <= hist.best_epoch <= len(hist.train_loss)
    assert model.best_iteration == 25 * hist.best_epoch  # the kept epoch's rounds
    pred, y, n, t = predict(model, planted_ws, "test")
    assert float(np.mean((pred - y) ** 2)) < 0.95 * float(np.mean(y**2))
    assert model(torch.randn(4, 10, planted_ws.n_features)).shape == (4,)
    again, _ = _fit(planted_ws)
    np.testing.assert_array_equal(predict(again, planted_ws, "test")[0], pred)  # same seed, same trees
    other, _ = _fit(planted_ws, seed=1)
    assert not np.array_equal(predict(other, planted_ws, "test")[0], pred)  # bagging follows the seed


def test_lambdarank_ranks_each_date_and_its_grades_are_daily_quantiles(planted_ws):
    days = np.array([3, 3, 3, 3, 7, 7])
    y = np.array([0.1, -0.2, 0.3, 0.0, 5.0, -5.0])
    assert relevance(y, days, 4).tolist() == [2, 0, 3, 1, 3, 1] and groups(days).tolist() == [4, 2]
    model, hist = _fit(planted_ws, objective="lambdarank")
    pred, y, n, t = predict(model, planted_ws, "test")
    ic = daily_ic(pd.DataFrame({"date": t, "ticker": n, "prediction": pred, "label": y}))
    assert ic["rank_ic"].mean() > 0.2 and 0 < hist.best_valid < 1  # 1 - NDCG@20


def test_a_network_loss_or_a_bad_parameter_is_a_clear_error(planted_ws):
    mcfg = model_config("lgbm")
    with pytest.raises(StockLabError, match="loss: 'ic' is a network loss"):  # before any data is read
        effective_config(TrainConfig(model="lgbm", loss="ic", batching="daily"), mcfg)
    with pytest.raises(StockLabError, match=r"learning_rate: 0.0 must be in \(0, 1\]"):
        model_config("lgbm", {"learning_rate": 0.0})
    with pytest.raises(StockLabError, match="booster is not fitted"):
        build_model("lgbm", 3, 10, mcfg)(torch.zeros(2, 10, 3))


def test_lgbm_through_the_train_job_registry_and_raw_bars(tracking, csv_dir, bars):
    cfg = TrainConfig(data=str(csv_dir), model="lgbm", seq_len=8, horizon=5, cache_dir="", tear_sheet=False)
    runs = [run_train(cfg, {"n_estimators": 50})["run_id"] for _ in range(2)]
    m = [mlflow.get_run(r).data.metrics for r in runs]
    # same seed, same numbers
    assert m[0]["test_mse"] == m[1]["test_mse"] and m[0]["test_rank_ic"] == m[1]["test_rank_ic"]
    assert mlflow.get_run(runs[0]).data.params["epochs"] == "2"  # 50 rounds, 25 per epoch

    name = registry.registered_name("lgbm")
    version, _ = registry.register_run_model(name, runs[0])
    registry.set_alias(name, registry.CHAMPION, version)
    # (that the champion scores raw bars as its run did: test_models.py, every model)
    # the booster is kept as LightGBM's own text, and loads back as the plain model
    local = mlflow.artifacts.download_artifacts(registry.champion_uri("lgbm"))
    text = (Path(local) / "artifacts" / "state" / "booster.txt").read_text()
    assert text.startswith("tree\nversion=")
    model, bundle = load_network(registry.champion_uri("lgbm"))
    assert model.booster.num_trees() == model.booster.current_iteration() and bundle.model == "lgbm"
