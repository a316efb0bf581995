"""End to end through `mlflow run . -e train --env-manager local`, as a user runs it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import ROOT

from stocklab.pipeline import load_model_bundle

pytestmark = pytest.mark.e2e
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def mlflow_run(entry: str, params: dict, tracking_uri: str, cwd: Path):
    cmd = [MLFLOW, "run", str(ROOT), "-e", entry, "--env-manager", "local"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_mlflow_run_train_end_to_end(tmp_path, csv_dir, tracking):
    r = mlflow_run(
        "train",
        {
            "data": csv_dir,
            "model": "lstm",
            "epochs": 2,
            "seq_len": 10,
            "horizon": 5,
            "batch_size": 64,
            "hidden_size": 8,
            "lr": "1e-3",
        },
        tracking,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    run = mlflow.get_run(runs.loc[0, "run_id"])
    for k in ("test_mse", "valid_mse_min", "best_epoch", "train_time_s", "naive_mse", "mse_skill"):
        assert math.isfinite(run.data.metrics[k]), k
    p = run.data.params
    assert p["hidden_size"] == "8" and p["epochs"] == "2" and p["lr"] == "1e-3" and p["data"] == str(csv_dir)
    model, bundle = load_model_bundle(f"runs:/{run.info.run_id}/model")
    with torch.no_grad():
        out = model(torch.randn(3, 10, 7))
    assert out.shape == (3,) and torch.isfinite(out).all()
    assert bundle.scaler.shift.shape == (1, 7) and bundle.data == str(csv_dir)

    # `evaluate` re-scores the logged model into a new run linked by a tag
    r = mlflow_run("evaluate", {"run_id": run.info.run_id}, tracking, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.`stocklab.source_run_id` = '{run.info.run_id}'"
    )
    assert len(ev) == 1 and ev.loc[0, "status"] == "FINISHED"
    assert ev.loc[0, "metrics.test_mse"] == pytest.approx(run.data.metrics["test_mse"], rel=1e-5)
    assert math.isfinite(ev.loc[0, "metrics.rank_ic"])


@pytest.mark.parametrize(
    "params, message",
    [({"data": "/no/such/dir"}, "data: '/no/such/dir' is not"), ({"model": "nope"}, "model: unknown model")],
)
def test_mlflow_run_bad_input_fails_cleanly(tmp_path, tracking, params, message):
    r = mlflow_run("train", params, tracking, tmp_path)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("stocklab: error:")]
    assert len(errors) == 1 and message in errors[0]
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"]  # recorded, marked failed, nothing lost


def test_preset_run_params_are_what_was_trained(tmp_path, csv_dir, tracking):
    """MLflow logs every -P value itself: the run's params must still be the effective
    configuration, and an explicit value equal to the built-in default beats the preset."""
    params = {"data": csv_dir, "preset": "seed000-deep", "epochs": 1, "batch_size": 256, "lr": "0.001"}
    r = mlflow_run("train", params, tracking, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = mlflow.get_run(mlflow.search_runs(search_all_experiments=True).loc[0, "run_id"])
    p = run.data.params
    assert (p["model"], p["variant"], p["seq_len"], p["features"]) == ("cnn2d", "deep", "96", "ohlcv")
    assert (p["batch_size"], float(p["lr"]), p["epochs"]) == ("256", 1e-3, "1")  # explicit beats the preset
    assert run.data.tags["stocklab.preset"] == "seed000-deep" and "stocklab.effective_params" not in run.data.tags
    config = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json")
    assert config["lr"] == 1e-3 and config["seq_len"] == 96 and config["variant"] == "deep"
