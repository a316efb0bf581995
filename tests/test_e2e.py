"""End to end through `mlflow run . -e <entry> --env-manager local`, as a user runs it (train,
evaluate, benchmark here; tune, promote and predict in test_tune.py). What only depends on the
run `mlflow run` opens for its job (params already logged, the experiment it chose) is proven
in-process with conftest.launched."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from conftest import MLFLOW, ROOT, launched, mlflow_run, synthetic_bars, write_ticker_csvs

from stocklab.pipeline.logged import load_network


def job_runs():
    """Every run but the launcher records `mlflow run` leaves in "Default"."""
    runs = mlflow.search_runs(search_all_experiments=True)
    role = runs["tags.stocklab.role"] if "tags.stocklab.role" in runs else None
    return runs if role is None else runs[role != "launcher"].reset_index(drop=True)


@pytest.mark.e2e
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
            "tear_sheet": "false",
        },
        tracking,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = job_runs()
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    run = mlflow.get_run(runs.loc[0, "run_id"])
    # the run is in the train experiment, named by what it is; the launcher points to it
    assert mlflow.get_experiment(run.info.experiment_id).name == "stocklab-train"
    assert re.fullmatch(r"lstm h8 L2 T10 lr1e-03 #[0-9a-f]{4}", run.info.run_name)  # unique per run
    launcher = mlflow.get_run(run.data.tags["stocklab.launcher_run_id"])
    assert launcher.info.experiment_id == "0" and launcher.data.tags["stocklab.launched_run_id"] == run.info.run_id
    for k in ("test_mse", "valid_mse_min", "train_best_epoch", "train_time_s", "test_naive_mse", "test_mse_skill"):
        assert math.isfinite(run.data.metrics[k]), k
    p = run.data.params
    assert p["hidden_size"] == "8" and p["epochs"] == "2" and float(p["lr"]) == 1e-3 and p["data"] == str(csv_dir)
    model, bundle = load_network(f"runs:/{run.info.run_id}/model")
    with torch.no_grad():
        out = model(torch.randn(3, 10, 5))  # the default recipe's relative o/h/l/c/volume
    assert out.shape == (3,) and torch.isfinite(out).all()
    assert bundle.features == "relative" and bundle.scaler.shift.shape == (1, 5) and bundle.data == str(csv_dir)

    # `evaluate` re-scores the logged model into a new run linked by a tag
    r = mlflow_run("evaluate", {"run_id": run.info.run_id, "tear_sheet": "false"}, tracking, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.`stocklab.source_run_id` = '{run.info.run_id}'"
    )
    assert len(ev) == 1 and ev.loc[0, "status"] == "FINISHED"
    assert ev.loc[0, "metrics.test_mse"] == pytest.approx(run.data.metrics["test_mse"], rel=1e-5)
    assert math.isfinite(ev.loc[0, "metrics.test_rank_ic"])


@pytest.mark.e2e
def test_mlflow_run_bad_input_fails_cleanly(tmp_path, tracking):
    """The one subprocess case of a bad parameter: `mlflow run` exits non-zero with one line,
    and both runs (the launcher's, the job's) are recorded FAILED (the other error cases are
    in-process: test_config, test_reliability, test_train)."""
    r = mlflow_run("train", {"data": "/no/such/dir"}, tracking, tmp_path)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("stocklab: error:")]
    assert len(errors) == 1 and "data: '/no/such/dir' is not" in errors[0]
    _all_failed_and_linked("data")


def test_a_bad_model_under_mlflow_run_fails_its_run_and_the_launcher(tracking, monkeypatch, capsys):
    code, _ = launched("train", {"model": "nope"}, monkeypatch)
    assert code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("stocklab: error:")]
    assert len(errors) == 1 and "model: unknown model" in errors[0]
    _all_failed_and_linked("model")


def _all_failed_and_linked(param: str) -> None:
    runs = mlflow.search_runs(search_all_experiments=True)
    assert set(runs["status"]) == {"FAILED"}  # recorded, marked failed, nothing lost
    if len(runs) == 2:  # failed inside the job's run: the launcher points to it
        launcher = runs[runs["tags.stocklab.role"] == "launcher"].iloc[0]
        assert launcher["tags.stocklab.launched_run_id"] in set(runs["run_id"])
        failed = mlflow.get_run(launcher["tags.stocklab.launched_run_id"])
        assert param in failed.data.tags["stocklab.error"]


@pytest.mark.slow
def test_preset_run_params_are_what_was_trained(csv_dir, tracking, monkeypatch):
    """MLflow logs every -P value itself: the run's params must still be the effective
    configuration, and an explicit value equal to the built-in default beats the preset."""
    params = {
        "data": csv_dir,
        "preset": "seed000-deep",
        "epochs": 1,
        "batch_size": 256,
        "lr": "0.001",
        "tear_sheet": False,
    }
    assert launched("train", params, monkeypatch)[0] == 0
    run = mlflow.get_run(job_runs().loc[0, "run_id"])
    p = run.data.params
    assert (p["model"], p["variant"], p["seq_len"], p["features"]) == ("cnn2d", "deep", "96", "ohlcv")
    assert (p["batch_size"], float(p["lr"]), p["epochs"]) == ("256", 1e-3, "1")  # explicit beats the preset
    assert run.data.tags["stocklab.preset"] == "seed000-deep" and "stocklab.effective_params" not in run.data.tags
    config = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json")
    assert config["lr"] == 1e-3 and config["seq_len"] == 96 and config["variant"] == "deep"


@pytest.mark.slow
def test_experiment_chosen_by_the_user_is_used_as_is(csv_dir, tracking, monkeypatch):
    common = {"data": csv_dir, "epochs": 1, "seq_len": 5, "horizon": 5, "hidden_size": 4, "tear_sheet": False}
    assert launched("train", common, monkeypatch, experiment="mine")[0] == 0  # --experiment-name mine
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and mlflow.get_experiment(runs.loc[0, "experiment_id"]).name == "mine"
    assert runs.loc[0, "params.model"] == "lstm"  # the projects run is the train run itself
    assert launched("train", {**common, "experiment": "elsewhere"}, monkeypatch, experiment="mine")[0] == 0
    other = mlflow.get_experiment_by_name("elsewhere")
    moved = mlflow.search_runs([other.experiment_id])
    assert len(moved) == 1 and moved.loc[0, "status"] == "FINISHED"
    assert other.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.e2e
def test_mlflow_run_benchmark_models_suite_end_to_end(tmp_path, csv_dir, tracking):
    """`-e benchmark -P suite=models` with walk-forward folds at its default horizons, through
    MLflow Projects (the suite's own parameters pass through MLproject as `--name value`)."""
    report = tmp_path / "out" / "models.md"
    params = {"suite": "models", "data": csv_dir, "models": "naive:zero,factor:reversal_1m", "folds": 2,
              "model_tickers": 0, "report": report, "tear_sheet": "false"}  # fmt: skip
    r = mlflow_run("benchmark", params, tracking, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = job_runs()
    children = runs[runs["tags.stocklab.role"] == "benchmark"]
    # every entry at each default horizon (20 and 5 days), one report each
    fits = sorted(zip(children["tags.stocklab.benchmark_entry"], children["params.horizon"]))
    assert fits == [
        ("factor:reversal_1m", "20"),
        ("factor:reversal_1m", "5"),
        ("naive:zero", "20"),
        ("naive:zero", "5"),
    ]
    assert (children["params.folds"] == "2").all() and (children["status"] == "FINISHED").all()
    for path, horizon in ((report, 20), (report.with_name("models_h5.md"), 5)):
        text = path.read_text()
        assert "| factor:reversal_1m |" in text and "-P models=naive:zero,factor:reversal_1m" in text
        assert f"label horizon {horizon} days" in text and f"| {horizon} days |" in text  # its MDE row


REMOTE = "https://example.invalid/stocklab.git"  # never fetched: git rewrites it to the bare repo


def bare_repo_of_the_working_tree(tmp_path: Path) -> Path:
    """The project as a remote holds it: the working tree's files (tracked and untracked, not
    ignored) committed to a bare git repository."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    tree = tmp_path / "tree"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        subprocess.run([*git, *cmd], cwd=tree, check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(tree), str(tmp_path / "stocklab.git")], check=True)
    return tmp_path / "stocklab.git"


@pytest.mark.e2e
def test_tune_from_a_git_uri_keeps_its_study_in_the_launch_directory(tmp_path):
    """`mlflow run <git URI> -e tune` runs in a fresh temporary checkout each time; the journal,
    the relative `data` path, the tracking store (a relative sqlite URI too) and the artifacts of
    the experiment the job creates resolve against the directory `mlflow run` started in, not
    the checkout, which is gone when the next run starts. So the same command rerun there finds
    the study and resumes it (that a rerun with the same journal runs only the trials it lacks
    is test_tune's `test_a_resumed_study_runs_only_the_trials_it_lacks`)."""
    bare = bare_repo_of_the_working_tree(tmp_path)
    caller = tmp_path / "caller"
    write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=260, signal=0.5), caller / "bars")
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db", "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": f"url.file://{bare}.insteadOf", "GIT_CONFIG_VALUE_0": REMOTE}  # fmt: skip
    env.pop("STOCKLAB_HOME", None)
    cmd = [MLFLOW, "run", REMOTE, "-e", "tune", "--env-manager", "local"]
    for p in ("data=bars", "epochs=1", "seq_len=5", "horizon=1", "features=returns", "register=false",
              "tear_sheet=false", "n_trials=1"):  # fmt: skip
        cmd += ["-P", p]
    r = subprocess.run(cmd, cwd=caller, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Fetching project from https://example.invalid" in r.stderr  # a temporary checkout
    assert f"resolve against {caller}" in r.stderr
    study = optuna.load_study(study_name="lstm-bars", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(caller / "optuna-journal.log"))))  # fmt: skip
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    mlflow.set_tracking_uri(f"sqlite:///{caller / 'mlflow.db'}")
    try:
        runs = job_runs()
        parents = runs[runs["tags.stocklab.role"] == "study"]
        assert len(parents) == 1
        children = runs[runs["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]]
        assert list(children["run_id"]) == [study.trials[0].user_attrs["mlflow_run_id"]]
        experiment = mlflow.get_experiment(parents["experiment_id"].iloc[0])
        assert experiment.artifact_location.startswith(caller.as_uri()) or experiment.artifact_location.startswith(
            str(caller)
        ), experiment.artifact_location
    finally:
        mlflow.set_tracking_uri(None)
