"""The train job in-process: what a run records, determinism, the logged model, CLI errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from conftest import ROOT, cli_error

from stocklab.config import StockLabError, TrainConfig
from stocklab.jobs.train import run_train
from stocklab.pipeline.inputs import latest_windows, prepare
from stocklab.pipeline.logged import load_network
from stocklab.pipeline.scoring import predict_windows

SUMMARY = ("test_mse", "valid_loss_min", "valid_mse_min", "train_best_epoch", "train_time_s", "test_naive_mse",
           "test_mse_skill")  # fmt: skip


def _cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), horizon=5, seq_len=10, epochs=2, batch_size=64, cache_dir="", tear_sheet=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("model", ["lstm"])
def test_run_records_params_metrics_artifacts_and_model(tracking, csv_dir, model):
    # the raw recipe: its validation loss is the MSE of the forecast vs the label (checked below)
    res = run_train(_cfg(csv_dir, model=model).with_recipe("raw"))
    run = mlflow.get_run(res["run_id"])
    m, p = run.data.metrics, run.data.params
    for k in SUMMARY:
        assert math.isfinite(m[k]), k
    assert m["test_mse_skill"] == pytest.approx(m["test_mse"] / m["test_naive_mse"])
    assert p["model"] == model and p["features_resolved"] == "ohlcv" and p["seq_len"] == "10"
    assert p["data_tickers"] == "6" and p["data_date_range"].startswith("2015-01-01..")
    assert len(p["data_fingerprint"]) == 16 and int(p["n_params"]) > 0
    # how the job ran is grouped apart (setup.*, env.*); config.json keeps the plain names
    assert p["setup.device"] == "auto" and p["env.device"] == "cpu" and p["env.torch"] == torch.__version__
    assert {"setup.cache_dir", "setup.tear_sheet", "setup.eval_batch_size"} <= set(p) and "cache_dir" not in p
    assert mlflow.artifacts.load_dict(f"runs:/{res['run_id']}/config.json")["cache_dir"] == ""
    hist = mlflow.tracking.MlflowClient().get_metric_history(res["run_id"], "valid_loss")
    assert [h.step for h in hist] == [1, 2]
    arts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(res["run_id"], "plots")}
    assert "plots/loss_curve.png" in arts
    report = mlflow.artifacts.load_dict(f"runs:/{res['run_id']}/data_report.json")
    assert report["tickers"] == 6 and report["rows_kept"] == 1800

    assert m["valid_mse_min"] == pytest.approx(m["valid_loss_min"], rel=1e-5)  # a regressor's objective is its MSE
    assert "lr" not in m  # no schedule: the learning rate is a param, not a metric
    # the logged model's Bundle records what it was trained on (that the model reproduces its
    # run's predictions: test_models.py, every model)
    _, bundle = load_network(f"runs:/{res['run_id']}/model")
    assert (bundle.seq_len, bundle.features, bundle.model) == (10, "ohlcv", model)
    assert bundle.data_fingerprint.startswith(p["data_fingerprint"])


@pytest.mark.slow
def test_same_seed_same_numbers(tracking, csv_dir):
    a = run_train(_cfg(csv_dir, seed=3, epochs=1))
    b = run_train(_cfg(csv_dir, seed=3, epochs=1))
    c = run_train(_cfg(csv_dir, seed=4, epochs=1))
    assert a["test_mse"] == b["test_mse"] and a["valid_mse_min"] == b["valid_mse_min"]
    assert c["test_mse"] != a["test_mse"]


def test_sample_data_default_features(tracking):
    """The close-only sample trains under the default recipe: the close relative to the window's
    last close; the raw recipe's `auto` is its returns."""
    quick = dict(tear_sheet=False, importance=False)
    res = run_train(TrainConfig(epochs=1, max_tickers=6, seq_len=5, horizon=5, **quick))
    p = mlflow.get_run(res["run_id"]).data.params
    assert p["features_resolved"] == "relative" and p["data_tickers"] == "6" and p["data_tickers_in_source"] == "20"
    assert math.isfinite(res["test_rank_ic"])
    raw = run_train(TrainConfig(epochs=1, max_tickers=3, seq_len=5, horizon=5, **quick).with_recipe("raw"))
    assert mlflow.get_run(raw["run_id"]).data.params["features_resolved"] == "returns"


@pytest.mark.slow
def test_the_cli_process_exits_2_with_one_line(tmp_path):
    """The one direct subprocess case: the process's own exit code and stderr (every other
    bad-input case runs `main` in-process below)."""
    r = subprocess.run(
        [sys.executable, "-m", "stocklab.cli", "train", "--lr", "abc"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines == ["stocklab: error: lr: 'abc' is not a valid float"], r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "model: unknown model 'nope'"),
        (["--lr", "0"], "lr: 0.0 must be > 0"),
        (["--lr", "abc"], "lr: 'abc' is not a valid float"),
        (["--seq_len", "0"], "seq_len: 0 must be >= 1"),
        (["--dropout", "1.5"], "dropout: 1.5 must be in [0, 1)"),
        (["--split", "0.5,0.2,0.2"], "split: fractions '0.5,0.2,0.2' must be three non-negative numbers summing to 1"),
        (["--variant", "deep"], "variant: not a parameter of model 'lstm'"),
        (["--bogus", "1"], "bogus: unknown parameter for train"),
        (["--data", "/no/such/dir"], "data: '/no/such/dir' is not 'sample', an existing folder or a file"),
        (["--features", "ohlcv"], "features: 'ohlcv' needs columns"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(tracking, capsys, args, message):
    assert message in cli_error(capsys, ["train", *args])


@pytest.mark.parametrize(
    "features, scaler", [("ohlcv", "standard"), ("ohlcv", "standard_ticker"), ("relative", "none")]
)
def test_predict_is_bit_for_bit_the_training_pipeline(tracking, tmp_path, bars, features, scaler):
    """`predict` on data that ends on the last training window's day gives exactly the
    predictions the training pipeline gives for those windows: no second preprocessing path."""
    from conftest import write_ticker_csvs

    from stocklab.config import PredictConfig
    from stocklab.jobs.predict import run_predict

    full = write_ticker_csvs(bars, tmp_path / "full")
    cfg = _cfg(full, features=features, scaler=scaler, seq_len=6, epochs=1)
    uri = mlflow.get_run(run_train(cfg)["run_id"]).data.tags["stocklab.model_uri"]
    model, bundle = load_network(uri)

    # the training pipeline: its own fitted scaler, the windows ending on the last training day
    train_prep = prepare(cfg)
    day = int(train_prep.ws.index["train"][1].max())
    n = torch.arange(len(train_prep.panel.tickers))
    x_train = train_prep.ws.gather(n, torch.full_like(n, day))
    expected = predict_windows(model, x_train)

    # predict on the same bars cut after that day (later bars must not matter either)
    cut = bars[bars["date"] <= str(train_prep.panel.dates[day].date())]
    data = write_ticker_csvs(cut, tmp_path / "cut")
    out = run_predict(PredictConfig(model_uri=uri, data=str(data), output=str(tmp_path / "p.parquet"), cache_dir=""))
    assert list(out["ticker"]) == train_prep.panel.tickers
    assert (out["date"] == train_prep.panel.dates[day]).all()
    np.testing.assert_array_equal(out["prediction"].to_numpy(), expected)  # bit for bit

    # and the windows themselves are identical tensors
    pred_prep = prepare(bundle.train_config(data=str(data), cache_dir=""), bundle=bundle, labels=False)
    pn, pt = latest_windows(pred_prep)
    assert torch.equal(pred_prep.ws.gather(pn, pt), x_train)


def test_predict_on_a_subset_keeps_each_tickers_training_identity(tracking, tmp_path, bars):
    """Scoring fewer tickers than the model saw: a per-ticker scaler keeps each ticker's own
    statistics and `ticker_id` keeps its trained value (no silent re-indexing)."""
    from conftest import write_ticker_csvs

    from stocklab.config import PredictConfig
    from stocklab.jobs.predict import run_predict

    full = write_ticker_csvs(bars, tmp_path / "full")
    cfg = _cfg(full, features="ohlcv", scaler="standard_ticker", seq_len=6, epochs=1)
    uri = mlflow.get_run(run_train(cfg)["run_id"]).data.tags["stocklab.model_uri"]
    both = run_predict(PredictConfig(model_uri=uri, data=str(full), output=str(tmp_path / "a.csv"), cache_dir=""))
    some = write_ticker_csvs(bars[bars["Name"].isin(["T02", "T04"])], tmp_path / "some")
    sub = run_predict(PredictConfig(model_uri=uri, data=str(some), output=str(tmp_path / "b.csv"), cache_dir=""))
    assert list(sub["ticker"]) == ["T02", "T04"]
    # same inputs; only the batch differs (2 windows vs 6), which moves float32 sums in the last bit
    np.testing.assert_allclose(
        sub["prediction"].to_numpy(), both.set_index("ticker").loc[["T02", "T04"], "prediction"].to_numpy(), rtol=1e-5
    )


# (argv, expected TrainConfig values, expected model hyper-parameters or None: not checked)
PRESET_CASES = {
    "explicit values apply over the preset's": (
        ["--preset", "seed000-deep", "--epochs", "3", "--dropout", "0.2"],
        {"model": "cnn2d", "seq_len": 96, "batch_size": 64, "lr": 1e-5, "features": "ohlcv", "epochs": 3},
        {"variant": "deep", "dropout": 0.2},
    ),
    "an explicit value equal to the default still wins": (
        ["--preset", "seed000-deep", "--lr", "0.001", "--batch_size", "256"],
        {"lr": 1e-3, "batch_size": 256},
        None,
    ),
    "a preset sets the label scale": (["--preset", "seed000-deep-scale10"], {"label_scale": 10.0}, None),
    "a monthly preset sets strides and horizon": (
        ["--preset", "seed004-cnn1d"],
        {"model": "cnn1d", "window_stride": 21, "return_period": 21, "seq_len": 12, "horizon": 21},
        None,
    ),
    "another model drops the preset's model hyper-parameters": (
        ["--preset", "seed000-deep", "--model", "lstm"],
        {"model": "lstm", "seq_len": 96},
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(PRESET_CASES))
def test_presets_apply_underneath_explicit_values(case):
    from stocklab.cli import parse_model_job

    argv, values, model_args = PRESET_CASES[case]
    cfg, margs, explicit = parse_model_job("train", argv)
    assert {k: getattr(cfg, k) for k in values} == values
    if model_args is not None:
        assert margs == model_args
    assert explicit == {a[2:] for a in argv if a.startswith("--")}


def test_every_preset_names_a_real_model_with_valid_values_and_an_unknown_one_is_an_error():
    from stocklab.cli import parse_model_job
    from stocklab.presets import PRESETS

    for name in PRESETS:
        cfg, _, _ = parse_model_job("train", ["--preset", name])
        cfg.validate()
    with pytest.raises(ValueError, match="preset: unknown preset 'x'"):
        parse_model_job("train", ["--preset", "x"])


def test_tune_takes_every_train_parameter_presets_included():
    from stocklab.cli import parse_model_job
    from stocklab.config import TuneConfig

    tcfg, _, _ = parse_model_job(
        "tune", ["--preset", "seed000-deep", "--split", "0.5,0.25,0.25", "--scaler", "minmax"], TuneConfig
    )
    assert (tcfg.model, tcfg.split, tcfg.scaler, tcfg.seq_len) == ("cnn2d", "0.5,0.25,0.25", "minmax", 96)


@pytest.mark.slow
def test_monthly_cnn1d_preset_trains_and_records_effective_params(tracking, tmp_path):
    from conftest import synthetic_bars, write_ticker_csvs

    from stocklab.cli import main

    data = write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=900), tmp_path / "long")
    assert main(["train", "--preset", "seed004-cnn1d", "--data", str(data), "--epochs", "1", "--cache_dir", ""]) == 0
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert run["params.model"] == "cnn1d" and run["params.window_stride"] == "21" and run["params.seq_len"] == "12"
    config = mlflow.artifacts.load_dict(f"runs:/{run['run_id']}/config.json")
    assert config["return_period"] == 21 and config["horizon"] == 21


def test_an_unusable_tracking_store_is_a_one_line_error(tmp_path, tracking, capsys):
    """MLflow 3 refuses a plain file store: the CLI says so in one line and exits non-zero."""
    from conftest import synthetic_bars, write_ticker_csvs

    from stocklab.cli import main

    mlflow.set_tracking_uri(f"file:{tmp_path / 'mlruns'}")
    data = write_ticker_csvs(synthetic_bars(n_tickers=2, n_days=120), tmp_path / "csvs")
    assert main(["train", "--data", str(data), "--epochs", "1", "--cache_dir", ""]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stocklab: error: MLflow: ") and "file" in err[0].lower()


def test_system_metrics_are_one_flag_away_on_cpu(tracking, csv_dir, monkeypatch):
    """STOCKLAB_SYSTEM_METRICS=true makes a CPU job's run start MLflow's system-metrics monitor
    (on by default only where CUDA is available), false keeps it off; a value that is not a
    boolean is a one-line error. What the run asked MLflow for is checked, not what a timed
    sampler happened to log."""
    asked = []
    start_run = mlflow.start_run

    def recording(*args, **kwargs):
        asked.append(kwargs.get("log_system_metrics"))
        return start_run(*args, **kwargs)

    monkeypatch.setattr(mlflow, "start_run", recording)
    for value, expected in (("true", True), ("false", False)):
        monkeypatch.setenv("STOCKLAB_SYSTEM_METRICS", value)
        asked.clear()
        run_train(_cfg(csv_dir, epochs=1))
        assert asked == [expected], (value, asked)
    monkeypatch.setenv("STOCKLAB_SYSTEM_METRICS", "maybe")
    with pytest.raises(StockLabError, match="STOCKLAB_SYSTEM_METRICS: 'maybe' must be true or false"):
        run_train(_cfg(csv_dir, epochs=1))
