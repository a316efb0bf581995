"""Every registered model: the x (B, T, F) -> (B,) contract, its scores in float32 and
independent of their batch, and the MLflow log/load round trip through the `train` job.
That every family learns a planted signal is test_learnability.py's."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import long_bars, synthetic_bars

from stocklab.config import StockLabError, TrainConfig
from stocklab.features import build_panel
from stocklab.jobs.train import run_train
from stocklab.models import MODELS, build_model, model_config
from stocklab.training import fit, mean_loss, predict, score
from stocklab.windows import WindowSet


def _shape(name: str) -> tuple[int, int]:
    """(seq_len, n_features) a model is tested with: cnn_ta reads the 15x15 indicator image."""
    if name == "factor":  # 12-1 momentum: a year of raw ohlcv bars
        return 253, 7
    return (1, 225) if name == "cnn_ta" else (10, 3)


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"lgbm"}))  # trees exist once fitted: test_lgbm.py
def test_output_shape(name):
    seq_len, n_features = _shape(name)
    model = build_model(name, n_features, seq_len, model_config(name)).eval()
    out = model(torch.rand(4, seq_len, n_features) + 1.0)  # positive, like prices
    assert out.shape == (4,) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(n for n in set(MODELS) - {"lgbm"} if not MODELS[n][0].whole_days))
def test_a_windows_score_does_not_depend_on_the_batch_it_comes_in(name):  # cross: test_cross.py
    """Served and training predictions come in other batches; CPU kernels treat a batch's last
    rows differently, so scoring pads batches (trainer.score) and must then agree bit for bit."""
    seq_len, n_features = _shape(name)
    torch.manual_seed(0)
    model = build_model(name, n_features, seq_len, model_config(name)).eval()
    x = torch.rand(300, seq_len, n_features) + 1.0  # (B, T, F)
    with torch.no_grad():
        whole = score(model, x)
        for size in (299, 97, 7, 1):
            parts = torch.cat([score(model, x[i : i + size]) for i in range(0, len(x), size)])
            torch.testing.assert_close(parts, whole, rtol=0, atol=0, msg=f"batches of {size}")


class _AutocastProbe(torch.nn.Module):
    """Wraps a model and records, on every forward, whether autocast was on and its output dtype."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []
        self.output, self.whole_days = inner.output, inner.whole_days

    def forward(self, x):
        out = self.inner(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    def train_outputs(self, x):
        return self.forward(x)

    def penalty(self):
        return None


def test_scoring_runs_in_float32_even_inside_a_callers_autocast(planted):
    """predict, valid_rank_ic and mean_loss switch autocast off (training.inference): on CUDA the
    training step's bf16 must never reach logged predictions, the kept epoch or the pruner."""
    from stocklab.training import valid_rank_ic

    panel = build_panel(planted, "returns", horizon=1, label_scale=1.0)
    ws = WindowSet(panel, 10, 1, (0.6, 0.2, 0.2), "standard")
    torch.manual_seed(0)
    probe = _AutocastProbe(build_model("lstm", ws.n_features, 10, model_config("lstm")))
    plain = predict(probe, ws, "valid")[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the CUDA training step runs under
        inside = predict(probe, ws, "valid")[0]
        ic = valid_rank_ic(probe, ws)
        loss = mean_loss(probe, ws, "valid")
    assert probe.seen and all(not on and dtype == torch.float32 for on, dtype in probe.seen)
    np.testing.assert_array_equal(inside, plain)
    assert math.isfinite(ic) and math.isfinite(loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the probe itself does see a caller's autocast
        probe(ws.gather(*[i[:4] for i in ws.index["valid"]]))
    assert probe.seen[-1] == (True, torch.bfloat16)


@pytest.fixture(scope="module")
def planted():
    """A panel whose next-day return is 0.5 x today's return + noise (learnable)."""
    return long_bars(synthetic_bars(n_tickers=10, n_days=500, signal=0.5))


def test_naive_zero_is_the_zero_forecast_and_mean_fits_the_train_average(planted):
    panel = build_panel(planted, "returns", horizon=1, label_scale=100.0)
    ws = WindowSet(panel, 5, 1, (0.6, 0.2, 0.2), "standard")
    zero = build_model("naive", ws.n_features, 5, model_config("naive"))
    assert list(zero.parameters()) == []
    fit(zero, ws, TrainConfig(epochs=1))
    assert mean_loss(zero, ws, "test") == pytest.approx(float((ws.y[ws.index["test"]] ** 2).mean()), rel=1e-5)
    mean = build_model("naive", ws.n_features, 5, model_config("naive", {"mode": "mean"}))
    fit(mean, ws, TrainConfig(epochs=30, lr=0.05, patience=30))
    assert float(mean.bias.detach()) == pytest.approx(float(ws.y[ws.index["train"]].mean()), abs=0.05)


# the fast tier round-trips one model of each kind (output RETURN, STEPS, CLASSES; a baseline
# with and one without parameters; the trees); the full suite every model
ROUND_TRIP_FAST = {"lstm", "seq2seq", "linear", "factor", "lgbm"}  # cnn_ta builds 225 indicators: slow tier


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in ROUND_TRIP_FAST else pytest.mark.slow) for n in sorted(MODELS)]
)
def test_each_model_served_from_its_run_scores_raw_bars_as_the_run_did(tracking, csv_dir, bars, name):
    """The contract of every registered model, proven once here: the pyfunc logged by the `train`
    job, fed the raw bars, gives bit for bit the test predictions its run logged (one
    preprocessing path for training, evaluation and serving)."""
    features = "technical" if name == "cnn_ta" else "ohlcv"
    seq_len = 1 if name == "cnn_ta" else 8
    cfg = TrainConfig(data=str(csv_dir), model=name, features=features, seq_len=seq_len, horizon=5, epochs=1,
                      batch_size=64, cache_dir="", tear_sheet=False, importance=False)  # fmt: skip
    # a factor fixes its own window (a year for momentum): the one-month reversal fits 300 days
    overrides = {"factor": "reversal_1m"} if name == "factor" else {"n_estimators": 50} if name == "lgbm" else None
    res = run_train(cfg, overrides)
    run = mlflow.get_run(res["run_id"])
    assert math.isfinite(run.data.metrics["test_mse"]) and int(run.data.params["n_params"]) == res["n_params"]
    served = mlflow.pyfunc.load_model(f"runs:/{res['run_id']}/model")
    every = served.predict(long_bars(bars), params={"all_dates": True})
    logged = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=res["run_id"], artifact_path="predictions.parquet")
    )
    both = logged.merge(every, on=["date", "ticker"], suffixes=("_train", "_served"))
    assert len(both) == len(logged) > 50
    np.testing.assert_array_equal(both["prediction_served"], both["prediction_train"].astype(np.float64))
    if name == "attention":
        plots = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(res["run_id"], "plots")}
        assert "plots/attention_heatmap.png" in plots


def test_cnn2d_variants_set_channels():
    base = build_model("cnn2d", 7, 96, model_config("cnn2d", {"variant": "baseline"}))
    deep = build_model("cnn2d", 7, 96, model_config("cnn2d", {"variant": "deep"}))
    assert base.features[0][0].out_channels == 2 and base.features[1][0].out_channels == 4
    assert deep.features[0][0].out_channels == 8 and deep.features[1][0].out_channels == 16


def test_lstm_batch_norm_and_layers_and_gru_cells():
    m = build_model("lstm", 4, 10, model_config("lstm", {"batch_norm": "true", "num_layers": "3"}))
    assert isinstance(m.norm, torch.nn.BatchNorm1d) and m.rnn.num_layers == 3
    assert isinstance(build_model("gru", 4, 10, model_config("gru")).rnn, torch.nn.GRU)


def test_attention_weights_are_a_distribution_over_days():
    m = build_model("attention", 3, 12, model_config("attention")).eval()
    w = m.attention(torch.randn(5, 12, 3))
    assert w.shape == (5, 12) and torch.allclose(w.sum(1), torch.ones(5))


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("nope", {}, "model: unknown model 'nope'"),
        ("lstm", {"dropout": 1.0}, "dropout: 1.0 must be in [0, 1)"),
        ("lstm", {"dropout": "x"}, "dropout: 'x' is not a valid float"),
        ("lstm", {"hidden_size": 0}, "hidden_size: 0 must be >= 1"),
        ("cnn2d", {"variant": "huge"}, "variant: 'huge' must be one of"),
        ("cnn2d", {"hidden_size": 3}, "hidden_size: not a parameter of model 'cnn2d'"),
        ("transformer", {"d_model": 30}, "d_model: 30 must be divisible by nhead=4"),
        ("naive", {"mode": "median"}, "mode: 'median' must be one of zero, mean"),
    ],
)
def test_bad_model_config(name, overrides, message):
    with pytest.raises(StockLabError) as e:
        model_config(name, overrides)
    assert message in str(e.value)
