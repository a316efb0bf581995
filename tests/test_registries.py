"""Every allowed value of a parameter is implemented: the value lists the configs offer are the
registries beside their code, and each entry runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import long_bars, synthetic_bars

from stocklab.config import LABELS, TrainConfig
from stocklab.features import FEATURE_SETS, build_panel
from stocklab.losses import LOSSES, RETURN, objective
from stocklab.scalers import SCALERS
from stocklab.windows import WindowSet

BARS = long_bars(synthetic_bars(n_tickers=8, n_days=260, seed=4))
BARS["pe_ratio"] = np.random.default_rng(0).normal(15, 2, len(BARS))  # a user's column, for `extra`


@pytest.mark.parametrize("features", [f for f in FEATURE_SETS if f != "auto"])
def test_every_feature_set_builds_finite_features_from_ohlcv_bars(features):
    bars = BARS if features == "extra" else BARS.drop(columns="pe_ratio")
    panel = build_panel(bars, features, horizon=5, label_scale=1.0)
    assert panel.X.shape[:2] == (8, 260) and panel.X.shape[2] == len(panel.feature_names) > 0
    assert np.isfinite(panel.X[:, -50:]).mean() > 0.9  # known once the look-backs have filled


@pytest.mark.parametrize("scaler", SCALERS)
def test_every_scaler_fits_on_training_days_and_scales_finite_windows(scaler):
    panel = build_panel(BARS.drop(columns="pe_ratio"), "returns", horizon=5, label_scale=1.0)
    ws = WindowSet(panel, 10, 5, (0.6, 0.2, 0.2), scaler)
    assert ws.scaler.kind == scaler and torch.isfinite(ws.gather(*ws.index["test"])).all()


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_a_return_forecast_on_whole_days(loss):
    from stocklab.models import build_model, model_config
    from stocklab.training import fit

    panel = build_panel(BARS.drop(columns="pe_ratio"), "returns", horizon=5, label_scale=1.0)
    ws = WindowSet(panel, 10, 5, (0.6, 0.2, 0.2), "standard", label="cs_zscore")
    fn, name = objective(RETURN, loss)
    torch.manual_seed(0)
    model = build_model("lstm", ws.n_features, 10, model_config("lstm"))
    hist = fit(model, ws, TrainConfig(epochs=2, loss=loss, batching="daily", select="loss"))
    assert name and all(np.isfinite(hist.train_loss)) and len(hist.train_loss) >= 1


@pytest.mark.parametrize("label", LABELS)
def test_every_label_is_a_target_of_the_labelled_windows(label):
    panel = build_panel(BARS.drop(columns="pe_ratio"), "returns", horizon=5, label_scale=1.0)
    ws = WindowSet(panel, 10, 5, (0.6, 0.2, 0.2), "standard", label=label)
    n, t = ws.loss_index["train"]
    assert ws.label == label and torch.isfinite(ws.target[n, t]).all() and ws.target[n, t].std() > 0


def test_a_bundle_written_before_inputs_existed_rebuilds_its_training_inputs():
    """Bundles of older versions kept the input values at their top level, had no `recipe`,
    `label` or `extra`, and cnn1d had no dense layer: they load as what they were trained with."""
    from stocklab.pipeline.inputs import Bundle
    from stocklab.windows import Scaler

    scaler = Scaler("standard", np.zeros((1, 3)), np.ones((1, 3)))
    old = {"model": "cnn1d", "features": "returns", "seq_len": 12, "horizon": 5, "return_period": 1,
           "label_scale": 1.0, "window_stride": 1, "model_config": {"channels": 8, "kernel": 3},
           "feature_names": ["a", "b", "c"], "scaler": scaler.to_dict(), "tickers": ["X", "Y"]}  # fmt: skip
    bundle = Bundle.from_dict(old)
    cfg = bundle.train_config()
    assert (cfg.model, cfg.features, cfg.seq_len, cfg.horizon) == ("cnn1d", "returns", 12, 5)
    assert (cfg.recipe, cfg.label, cfg.scaler, cfg.extra) == ("raw", "raw", "standard", "")
    assert bundle.model_config["hidden"] == 0 and bundle.model_config["channels"] == 8
