"""The tune -> promote -> predict workflow (through `mlflow run` as users run it, once per entry
point), studies of every model, search spaces and the promotion rules."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from conftest import assert_metrics_say_their_split, launched, long_bars, mlflow_run, synthetic_bars, write_ticker_csvs

from stocklab.config import PromoteConfig, StockLabError, TuneConfig, split_params, with_values
from stocklab.features import build_panel
from stocklab.jobs.promote import direction_for, run_promote
from stocklab.jobs.tune import run_tune
from stocklab.models import BASELINES, MODELS, build_model, effective_config, model_config, model_defaults
from stocklab.spaces import builtin_models, load_space, suggest
from stocklab.study.storage import make_storage
from stocklab.training import fit, predict
from stocklab.windows import WindowSet

SPACE = """
hidden_size: {type: int, low: 4, high: 8}
lr: {type: float, low: 1.0e-3, high: 2.0e-2, log: true}
dropout: {type: float, low: 0.0, high: 0.2}
batch_size: {type: categorical, choices: [32]}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One study through `mlflow run . -e tune`, run once for the tests that read it: four
    pinned trials whose outcomes are certain (two good ones, one that cannot learn (lr 1e-7,
    pruned after epoch 1 by the median rule), one with an invalid dropout). What the study
    looked like right after that run is kept, since later tests resume it."""
    tmp = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    data = write_ticker_csvs(synthetic_bars(n_tickers=8, n_days=400, signal=0.5), tmp / "csvs")
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    journal = tmp / "study.log"
    pinned = optuna.create_study(study_name="s1", storage=make_storage(str(journal)), direction="minimize")
    for p in (
        {"hidden_size": 8, "lr": 0.02, "dropout": 0.0},
        {"hidden_size": 8, "lr": 0.01, "dropout": 0.0},
        {"hidden_size": 4, "lr": 1e-7, "dropout": 0.0},
        {"hidden_size": 4, "lr": 0.01, "dropout": 1.5},
    ):
        pinned.enqueue_trial({**p, "batch_size": 32})
    # the source studies' recipe on validation losses: the pinned outcomes are certain there
    params = {"data": data, "n_trials": 4, "epochs": 2, "study_name": "s1", "storage": journal, "space": space,
              "horizon": 1, "features": "returns", "seed": 0, "count_failed": "true", "recipe": "raw",
              "metric": "valid_loss"}  # fmt: skip
    r = mlflow_run("tune", params, uri, tmp)
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(search_all_experiments=True)
        versions = mlflow.MlflowClient().search_model_versions("name='stocklab-lstm'")
    finally:
        mlflow.set_tracking_uri(None)
    trials = optuna.load_study(study_name="s1", storage=make_storage(str(journal))).trials
    return SimpleNamespace(tmp=tmp, uri=uri, data=data, journal=journal, params=params, result=r, runs=runs,
                           versions=versions, trials=trials)  # fmt: skip


@pytest.fixture
def study_store(study, monkeypatch):
    """The study's tracking store as the current one (what `mlflow ui` in its folder shows)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", study.uri)
    monkeypatch.chdir(study.tmp)
    mlflow.set_tracking_uri(study.uri)
    yield study
    mlflow.set_tracking_uri(None)


# one real `mlflow run . -e tune` (the module's `study` fixture), read by the named cases below


def _trial_runs(study) -> tuple[str, pd.DataFrame]:
    """(parent run id, the trials' runs indexed by trial number as text)."""
    runs = study.runs
    parent = runs[runs["tags.stocklab.role"] == "study"]
    assert len(parent) == 1
    parent_id = parent["run_id"].iloc[0]
    return parent_id, runs[runs["tags.mlflow.parentRunId"] == parent_id].set_index("tags.stocklab.trial")


def _best(study):
    return min((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)


@pytest.mark.e2e
def test_mlflow_run_tune_exits_0_and_a_failed_trial_is_one_line(study_store):
    r = study_store.result
    assert r.returncode == 0, r.stderr[-4000:]
    # the failed trial is one line (number, state, reason), not an Optuna traceback
    assert "Traceback" not in r.stderr + r.stdout
    assert any(line.startswith("trial   3 FAIL") and "dropout: 1.5" in line for line in r.stdout.splitlines())
    assert "dropout: 1.5 must be in [0, 1)" in study_store.trials[3].user_attrs["fail_reason"]


@pytest.mark.e2e
def test_every_trial_is_a_named_child_run_of_one_study_run_with_its_state(study_store):
    trials = study_store.trials
    parent_id, children = _trial_runs(study_store)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert sorted(children.index) == ["0", "1", "2", "3"]
    assert list(children.loc[["0", "1", "2", "3"], "status"]) == ["FINISHED", "FINISHED", "KILLED", "FAILED"]
    assert (children["tags.stocklab.study"] == "s1").all()
    # one experiment per study; runs named by their trial and key hyper-parameters
    assert set(children["experiment_id"]) == {mlflow.get_run(parent_id).info.experiment_id}
    assert mlflow.get_experiment(children["experiment_id"].iloc[0]).name == "stocklab-tune-s1"
    assert children.loc["0", "tags.mlflow.runName"] == "t000 lstm h8 L2 T20 lr2e-02"
    # the UI shows KILLED and FAILED alike: the name tells pruned and failed trials apart
    assert children.loc["2", "tags.mlflow.runName"].endswith("[pruned]")
    assert children.loc["3", "tags.mlflow.runName"].endswith("[failed]")
    for t in trials:  # every Optuna trial knows its MLflow run
        assert t.user_attrs["mlflow_run_id"] == children.loc[str(t.number), "run_id"]


@pytest.mark.e2e
def test_each_trial_logs_its_epochs_and_metrics_named_by_their_split(study_store):
    _, children = _trial_runs(study_store)
    client = mlflow.tracking.MlflowClient()
    hist = client.get_metric_history(children.loc["0", "run_id"], "valid_loss")
    assert [h.step for h in hist] == [1, 2]
    for run_id in children.loc[["0", "1", "2"], "run_id"]:  # finished and pruned trials
        assert_metrics_say_their_split(client.get_run(run_id))


@pytest.mark.e2e
def test_the_study_run_holds_the_best_value_its_params_the_space_and_plots(study_store):
    parent_id, _ = _trial_runs(study_store)
    best = _best(study_store)
    client = mlflow.tracking.MlflowClient()
    prun = client.get_run(parent_id)
    assert prun.data.metrics["best_value"] == pytest.approx(best.value)
    assert prun.data.params["best_lr"] == str(best.params["lr"])
    # the parent names the space, not base values of what was searched (those are the trials')
    assert "lr" not in prun.data.params and "hidden_size" not in prun.data.params
    assert json.loads(prun.data.params["search_space"])["lr"]["log"] is True
    arts = {a.path for a in client.list_artifacts(parent_id)} | {
        a.path for a in client.list_artifacts(parent_id, "plots")
    }
    assert {"trials.csv", "plots/optimization_history.png", "plots/param_importances.png"} <= arts


@pytest.mark.e2e
def test_only_the_best_trial_has_a_tear_sheet_and_is_registered(study_store):
    _, children = _trial_runs(study_store)
    client = mlflow.tracking.MlflowClient()
    best = _best(study_store)
    best_run = best.user_attrs["mlflow_run_id"]
    sheets = {a.path for a in client.list_artifacts(best_run, "tearsheet")}
    assert {"tearsheet/returns.png", "tearsheet/information.png", "tearsheet/turnover.png"} <= sheets
    other = children.loc["1" if best_run == children.loc["0", "run_id"] else "0", "run_id"]
    assert not client.list_artifacts(other, "tearsheet")
    versions = study_store.versions
    assert len(versions) == 1 and versions[0].run_id == best_run
    assert float(versions[0].tags["valid_loss_min"]) == pytest.approx(best.value)
    assert versions[0].tags["metric"] == "valid_loss"


@pytest.mark.slow
def test_a_resumed_study_runs_only_the_trials_it_lacks(study_store, monkeypatch):
    """Rerunning `tune` (as `mlflow run` starts it: conftest.launched) with the same target
    runs nothing again; one more trial runs exactly one, never a finished configuration."""
    params = study_store.params
    storage = make_storage(str(study_store.journal))
    assert launched("tune", params, monkeypatch)[0] == 0
    assert len(optuna.load_study(study_name="s1", storage=storage).trials) == 4
    assert launched("tune", {**params, "n_trials": 5}, monkeypatch)[0] == 0
    trials = optuna.load_study(study_name="s1", storage=storage).trials
    assert len(trials) == 5 and len({t.user_attrs.get("mlflow_run_id") for t in trials}) == 5
    assert trials[4].params not in [t.params for t in trials[:4]]  # no finished trial repeated
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`stocklab.role` = 'study'")
    assert len(parents) == 1  # every resume joins the study's one parent run


@pytest.mark.e2e
def test_mlflow_run_promote_then_predict_with_the_champion(study_store):
    tmp, uri = study_store.tmp, study_store.uri
    r = mlflow_run("promote", {"model": "lstm"}, uri, tmp)  # default: valid_rank_ic
    assert r.returncode == 0 and "champion -> v" in r.stdout, r.stderr[-3000:]
    out = tmp / "preds.csv"
    r = mlflow_run("predict", {"model": "lstm", "data": study_store.data, "output": out}, uri, tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    preds = pd.read_csv(out, parse_dates=["date"])
    assert sorted(preds["ticker"]) == [f"T{i:02d}" for i in range(8)]
    assert (preds["date"] == preds["date"].max()).all() and preds["prediction"].map(math.isfinite).all()


def _register(name: str, metrics: dict, params: dict | None = None) -> str:
    """A version of `name` whose source run has these metrics (and params)."""
    with mlflow.start_run():
        mlflow.log_metrics(metrics)
        mlflow.log_params(params or {})
        # explicit requirements: MLflow would otherwise infer them (seconds per model)
        info = mlflow.pytorch.log_model(
            torch.nn.Linear(2, 1), name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    return mlflow.register_model(info.model_uri, name).version


def test_promote_guard_is_direction_aware(tracking, capsys):
    name = "stocklab-lstm"
    client = mlflow.tracking.MlflowClient()
    _register(name, {"valid_mse_min": 0.5, "valid_rank_ic": 0.02})
    _register(name, {"valid_mse_min": 0.9, "valid_rank_ic": 0.05})
    res = run_promote(PromoteConfig(model="lstm", metric="valid_mse_min"))
    assert res["champion"] == 1 and "there was no champion" in capsys.readouterr().out
    _register(name, {"valid_mse_min": 0.7, "valid_rank_ic": 0.01})  # the best candidate, but worse than v1
    res = run_promote(PromoteConfig(model="lstm", metric="valid_mse_min"))
    assert res["champion"] == 1 and "champion stays v1" in capsys.readouterr().out
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 3
    _register(name, {"valid_mse_min": 0.1, "valid_rank_ic": 0.0})  # better: takes the alias
    res = run_promote(PromoteConfig(model="lstm", metric="valid_mse_min"))
    assert res["champion"] == 4 and "champion v1 -> v4" in capsys.readouterr().out
    # a rank IC is maximised: v2 (0.05) beats the champion v4 (0.0)
    assert run_promote(PromoteConfig(model="lstm", metric="valid_rank_ic"))["champion"] == 2
    assert direction_for("valid_mse_min") == "minimize" and direction_for("test_rank_ic") == "maximize"


def test_promote_decides_on_validation_and_refuses_incomparable_versions(tracking, capsys):
    name, client = "stocklab-gru", mlflow.tracking.MlflowClient()
    same = {"data_fingerprint": "abc", "horizon": 20, "label_scale": 1.0, "split": "0.6,0.2,0.2", "max_tickers": 0}
    _register(name, {"valid_loss_min": 0.5, "test_mse": 0.1}, same)
    _register(name, {"valid_loss_min": 0.7, "test_mse": 0.01}, same)  # better test, worse valid
    assert run_promote(PromoteConfig(model="gru", metric="valid_loss_min"))["champion"] == 1
    capsys.readouterr()
    # twice with no better candidate: the champion stays and there is still one challenger, v2
    for _ in range(2):
        res = run_promote(PromoteConfig(model="gru", metric="valid_loss_min"))
        out = capsys.readouterr().out
        assert res["champion"] == 1 and "champion stays v1" in out
        # test metrics are shown side by side; v2's far better test_mse does not decide
        assert "champion v1 (valid_loss_min=0.5, test_mse=0.1)" in out
        assert "candidate v2 (valid_loss_min=0.7, test_mse=0.01)" in out
        assert int(client.get_model_version_by_alias(name, "challenger").version) == 2
    # a better version trained with another label horizon is not comparable...
    _register(name, {"valid_loss_min": 0.1}, {**same, "horizon": 5})
    with pytest.raises(ValueError, match="different data or labels \\(horizon 20 vs 5\\)"):
        run_promote(PromoteConfig(model="gru", metric="valid_loss_min"))
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1  # nothing changed
    # ... unless forced; then the challenger that became champion keeps one role only
    client.set_registered_model_alias(name, "challenger", "3")
    assert run_promote(PromoteConfig(model="gru", metric="valid_loss_min", force=True))["champion"] == 3
    assert {k: int(v) for k, v in client.get_registered_model(name).aliases.items()} == {"champion": 3}
    # a loss on another training target is not comparable either (a version without the param
    # trained on the raw label); its valid_rank_ic, judged on raw returns, is
    _register(name, {"valid_loss_min": 0.01, "valid_rank_ic": 0.2}, {**same, "horizon": 5, "label": "cs_rank"})
    with pytest.raises(ValueError, match="\\(label raw vs cs_rank\\); their valid_loss_min values are not"):
        run_promote(PromoteConfig(model="gru", metric="valid_loss_min"))
    assert run_promote(PromoteConfig(model="gru"))["champion"] == 4  # the default: rank IC compares labels


def _study(data, tmp_path, **kw) -> TuneConfig:
    """A small in-process study on `data` (linear, 2 trials of 1 epoch, journal in tmp_path)."""
    values = dict(data=str(data), model="linear", n_trials=2, epochs=1, horizon=5, cache_dir="",
                  storage=str(tmp_path / "j.log"), pruner="none", metric="valid_loss")  # fmt: skip
    return TuneConfig(**{**values, **kw})


def test_a_study_resumes_only_with_its_own_model_and_data(tracking, csv_dir, tmp_path):
    run_tune(_study(csv_dir, tmp_path, n_trials=1, study_name="s", register=False))
    with pytest.raises(StockLabError, match="model: study 's' tunes linear, not rnn: rerun with --model linear"):
        run_tune(_study(csv_dir, tmp_path, n_trials=2, study_name="s", model="rnn", register=False))
    other = tmp_path / "other"
    other.mkdir()
    for path in sorted(csv_dir.iterdir())[:-1]:  # the same folder less one ticker
        (other / path.name).write_bytes(path.read_bytes())
    with pytest.raises(StockLabError, match="data: study 's' was run on other data"):
        run_tune(_study(other, tmp_path, n_trials=2, study_name="s", register=False))
    study = optuna.load_study(study_name="s", storage=make_storage(str(tmp_path / "j.log")))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # nothing ran, nothing was lost


@pytest.mark.slow
def test_a_space_may_search_the_feature_set_and_the_registered_model_keeps_its_own(tracking, csv_dir, tmp_path):
    """`features` is a dimension like any other: each trial builds (and caches) the panel of its
    set, and the registered model's Bundle names the winning trial's set and columns."""
    space = tmp_path / "space.yaml"
    space.write_text("features: {type: categorical, choices: [relative, alpha158]}\n"
                     "alpha: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")  # fmt: skip
    optuna_study = optuna.create_study(study_name="f", storage=make_storage(str(tmp_path / "j.log")))
    for features in ("relative", "alpha158"):
        optuna_study.enqueue_trial({"features": features, "alpha": 1e-3})
    res = run_tune(_study(csv_dir, tmp_path, study_name="f", space=str(space), seq_len=5))
    trials = optuna.load_study(study_name="f", storage=make_storage(str(tmp_path / "j.log"))).trials
    widths = {}
    for t in trials:
        run = mlflow.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.params["features"] == t.params["features"]
        bundle = json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="model_bundle/preprocess.json")).read_text())  # fmt: skip
        assert bundle["inputs"]["features"] == t.params["features"]
        widths[t.params["features"]] = len(bundle["feature_names"])
    assert widths["alpha158"] == 157 and widths["relative"] < 10
    version = mlflow.MlflowClient().get_model_version("stocklab-linear", str(res["registered_version"]))
    assert version.run_id == trials[res["best_trial"]].user_attrs["mlflow_run_id"]


@pytest.mark.slow
def test_multi_objective_study_registers_the_pareto_trial_with_the_best_rank_ic(tracking, csv_dir, tmp_path):
    cfg = _study(csv_dir, tmp_path, metric="both", n_trials=4, pruner="median")
    res = run_tune(cfg)
    study = optuna.load_study(study_name="linear-csvs", storage=make_storage(str(tmp_path / "j.log")))
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["valid_loss", "valid_rank_ic"]  # named in optuna-dashboard
    parent_run = mlflow.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert study.user_attrs["mlflow_experiment_id"] == parent_run.info.experiment_id
    assert study.user_attrs["mlflow_tracking_uri"] == tracking
    front = study.best_trials
    chosen = max(front, key=lambda t: t.values[1])
    assert res["best_trial"] == chosen.number and chosen.number in [t.number for t in front]
    version = mlflow.tracking.MlflowClient().get_model_version("stocklab-linear", str(res["registered_version"]))
    assert version.run_id == chosen.user_attrs["mlflow_run_id"] and version.tags["metric"] == "both"
    run = mlflow.get_run(chosen.user_attrs["mlflow_run_id"])
    assert chosen.values == [run.data.metrics["valid_loss_min"], run.data.metrics["valid_rank_ic"]]
    parent = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`stocklab.role` = 'study'")
    arts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(parent["run_id"].iloc[0], "plots")}
    assert "plots/pareto_front.png" in arts


@pytest.mark.slow
@pytest.mark.parametrize("metric,select", [("valid_rank_ic", "rank_ic"), ("valid_ls_sharpe_net", "loss")])
def test_pruning_reports_what_the_trial_returns(tracking, csv_dir, tmp_path, metric, select):
    """The per-epoch report is the value the trial would return if it stopped there, so the
    last report equals the trial's value (valid rank IC, or the validation book's net Sharpe,
    of the kept epoch); with select=rank_ic it is the trainer's own per-epoch rank IC (the best
    of those logged)."""
    recipe = {"select": select, "label": "cs_rank", "batching": "daily"}
    cfg = _study(csv_dir, tmp_path, metric=metric, epochs=3, patience=3, **recipe)
    run_tune(cfg, fixed=set(recipe))
    study = optuna.load_study(study_name="linear-csvs", storage=make_storage(str(tmp_path / "j.log")))
    client = mlflow.MlflowClient()
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        assert steps and t.intermediate_values[steps[-1]] == pytest.approx(t.value, rel=1e-9)
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert t.value == pytest.approx(run.data.metrics[metric], rel=1e-12)
        history = client.get_metric_history(t.user_attrs["mlflow_run_id"], "valid_rank_ic_epoch")
        if select == "rank_ic":
            best = max(m.value for m in history)
            assert len(history) == len(steps) and t.intermediate_values[steps[-1]] == pytest.approx(best, rel=1e-9)
        else:
            assert not history  # computed only when it decides the kept epoch


def test_promote_with_no_versions_or_a_test_metric_is_a_clear_error(tracking):
    with pytest.raises(ValueError, match="no registered versions of 'stocklab-cnn2d'"):
        run_promote(PromoteConfig(model="cnn2d"))
    with pytest.raises(ValueError, match="metric: 'test_rank_ic' is measured on out-of-sample data"):
        run_promote(PromoteConfig(model="cnn2d", metric="test_rank_ic"))  # before looking for versions


def test_tune_config_and_space_errors(tmp_path):
    with pytest.raises(ValueError, match="metric: 'ic' must be one of"):
        TuneConfig(metric="ic").validate()
    with pytest.raises(ValueError, match="pruner: 'x' must be one of"):
        TuneConfig(pruner="x").validate()
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("hidden: {type: int, low: 1, high: 2}\n", "'hidden' is neither a train nor a lstm parameter"),
        ("hidden_size: {type: int, low: 8}\n", "'hidden_size' needs 'high'"),
        ("hidden_size: {type: int, low: 9, high: 2}\n", "hidden_size: low 9 > high 2"),
        ("seq_len: {type: categorical, choices: [ten]}\n", "seq_len: 'ten' is not a valid int"),
        ("dropout: {type: float, low: 0, high: 1, when: {depth: 2}}\n", "depends on unknown parameter 'depth'"),
        ("lr: [1, 2]\n", "'lr' needs type int, float or categorical"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            load_space("lstm", MODELS["lstm"][1], str(bad))
    with pytest.raises(ValueError, match="no built-in search space for model 'naive'"):
        load_space("naive", MODELS["naive"][1])
    assert TuneConfig(data="/x/sp500_5yr/").resolved_study_name() == "lstm-sp500_5yr"


def test_a_study_on_missing_data_fails_before_it_starts(tracking, tmp_path):
    journal = tmp_path / "study.log"
    with pytest.raises(StockLabError, match=f"looked for '{tmp_path / 'nope'}'"):
        run_tune(TuneConfig(data="nope", storage=str(journal)))
    assert not journal.exists() and mlflow.search_runs(search_all_experiments=True).empty  # no trial, no run


def test_every_trainable_model_has_a_shipped_space_covering_its_dimensions():
    trainable = sorted(set(MODELS) - {"naive", "factor"})
    assert builtin_models() == trainable
    for name in trainable:
        cfg = MODELS[name][1]
        space = load_space(name, cfg)
        if name == "lgbm":  # trees: their own size, shrinkage, sampling and rounds
            assert {"num_leaves", "learning_rate", "feature_fraction", "n_estimators", "seq_len"} <= set(space)
            assert space["learning_rate"].get("log")
            continue
        assert {"lr"} <= set(space) and ("seq_len" in space or name == "cnn_ta"), name
        if name != "linear":  # the ridge baseline has no layers to normalise or drop out
            needed = {"dropout", "weight_decay"} | ({"batch_norm"} & set(dataclasses.asdict(cfg)))
            needed |= set() if MODELS[name][0].whole_days else {"batch_size"}  # cross: one date a step
            assert needed <= set(space), name
        size = {"hidden_size", "d_model", "channels", "channels1"} & set(space)
        assert size or name == "linear", name
        assert space["lr"].get("log"), name
    # a parameter given explicitly is not searched
    assert "seq_len" not in load_space("lstm", MODELS["lstm"][1], fixed={"seq_len"})


def test_conditional_dimensions_follow_their_condition():
    space = load_space("cnn2d", MODELS["cnn2d"][1])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        params = suggest(study.ask(), space, {})
        seen.add(params["variant"])
        assert ("channels1" in params) == (params["variant"] == "custom")
    assert seen == {"baseline", "deep", "custom"}
    rnn = load_space("rnn", MODELS["rnn"][1])
    for layers in (1, 2):  # dropout only between stacked layers; a fixed num_layers decides too
        fixed = {k: v for k, v in rnn.items() if k != "num_layers"}
        params = suggest(optuna.create_study().ask(), fixed, {"num_layers": layers})
        assert ("dropout" in params) == (layers > 1)


@pytest.mark.parametrize("model", sorted(set(MODELS) - set(BASELINES)) + ["linear", "lgbm"])
def test_every_shipped_space_draws_configurations_that_train(bars, model):
    """What the shipped space of every trainable model draws (Optuna's sampler, `when`
    conditions included) goes through the trial's own steps (split_params -> TrainConfig ->
    model_config -> the model's fixed inputs) and trains: three draws each build, fit an epoch
    and predict finite values. Real studies through the same objective: the mlflow-run study
    above and the linear studies below."""
    space = load_space(model, MODELS[model][1])
    base = TuneConfig(model=model, epochs=1, horizon=5, features="technical" if model == "cnn_ta" else "ohlcv")
    context = {**dataclasses.asdict(base.train_config()), **model_defaults(model)}
    panel = build_panel(long_bars(bars), base.features, base.horizon, base.label_scale)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        params = suggest(study.ask(), space, context)
        train_values, model_values = split_params(params)
        mcfg = model_config(model, model_values)
        cfg = effective_config(with_values(base.train_config(), train_values), mcfg).validate()
        ws = WindowSet(panel, cfg.seq_len, cfg.horizon, cfg.split_fractions(), cfg.scaler, stride=cfg.window_stride)
        net = build_model(model, ws.n_features, cfg.seq_len, mcfg)
        assert fit(net, ws, cfg).train_loss, params
        pred, _, _, _ = predict(net, ws, "test")
        assert len(pred) and np.isfinite(pred).all(), params


@pytest.mark.slow
def test_a_walk_forward_study_reports_each_fold_and_returns_the_fold_mean(tracking, csv_dir, tmp_path):
    cfg = _study(csv_dir, tmp_path, folds=2, split="0.5,0.2,0.3", pruner="median")
    run_tune(cfg)
    study = optuna.load_study(study_name="linear-csvs", storage=make_storage(str(tmp_path / "j.log")))
    client = mlflow.MlflowClient()
    for trial in study.trials:
        # one report per fold and epoch: step = fold * epochs + epoch
        assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        per_fold = [m.value for m in client.get_metric_history(run.info.run_id, "fold/valid_loss_min")]
        assert trial.value == pytest.approx(sum(per_fold) / 2) == pytest.approx(run.data.metrics["valid_loss_min"])


@pytest.mark.slow
def test_the_study_saves_a_ui_view_of_its_trials_with_their_key_metrics(tracking, csv_dir, tmp_path, capsys):
    """The runs table shows no metric column until one is picked: `tune` saves a view (the
    UI's "Views" menu) whose filter finds the trials and whose columns they all have."""
    cfg = _study(csv_dir, tmp_path, metric="valid_rank_ic", register=False, pruner="median")
    run_tune(cfg)
    exp = mlflow.get_experiment_by_name("stocklab-tune-linear-csvs")
    views = {k: v for k, v in exp.tags.items() if k.startswith("mlflow.sharedViewState.")}
    assert len(views) == 1
    (key, raw), = views.items()  # fmt: skip
    envelope = json.loads(raw)
    assert envelope["name"] == "study linear-csvs: trials" and envelope["createdAt"] <= envelope["updatedAt"]
    state = json.loads(envelope["state"])
    # the UI runs the view's filter and sort through the same search API
    asc = "ASC" if state["orderByAsc"] else "DESC"
    trials = mlflow.search_runs(
        [exp.experiment_id], filter_string=state["searchFilter"], order_by=[f"{state['orderByKey']} {asc}"]
    )
    assert sorted(trials["tags.stocklab.trial"]) == ["0", "1"]
    assert state["orderByKey"] == "metrics.`valid_rank_ic`" and not state["orderByAsc"]  # maximised: best first
    assert trials["metrics.valid_rank_ic"].is_monotonic_decreasing
    cols = [c.replace("`", "") for c in state["selectedColumns"]]
    for wanted in ("valid_rank_ic", "test_mse", "test_rank_ic", "train_best_epoch", "train_time_s"):
        assert f"metrics.{wanted}" in cols
    for col in cols:  # every column is filled on every trial (a renamed metric would be blank)
        assert col in trials and trials[col].notna().all(), col
    searched = set(load_space("linear", MODELS["linear"][1]))
    assert searched and {f"params.{p}" for p in searched} <= set(cols)
    view_id = key.removeprefix("mlflow.sharedViewState.")
    assert f"viewStateShareKey={view_id}" in capsys.readouterr().out
    # the experiment's description links the view (a relative link: it works under any server)
    assert f"](#/experiments/{exp.experiment_id}/runs?viewStateShareKey={view_id}&" in exp.tags["mlflow.note.content"]

    run_tune(TuneConfig(**{**cfg.__dict__, "n_trials": 3}))  # resumed: the same view, refreshed
    tags = mlflow.get_experiment(exp.experiment_id).tags
    assert [k for k in tags if k.startswith("mlflow.sharedViewState.")] == [key]
    again = json.loads(tags[key])
    assert again["createdAt"] == envelope["createdAt"] and again["updatedAt"] >= envelope["updatedAt"]


def test_a_timeout_starts_no_trial_after_its_deadline(tracking, csv_dir, tmp_path):
    """timeout: a deadline that passed before the first trial leaves the study with none, a
    one-line error, not 50 trials."""
    with pytest.raises(StockLabError, match=r"no trial completed .*none ran: timeout=0\.001 s passed before the first"):
        run_tune(_study(csv_dir, tmp_path, n_trials=50, timeout=1e-3, register=False))
    study = optuna.load_study(study_name="linear-csvs", storage=make_storage(str(tmp_path / "j.log")))
    assert not study.trials


def test_hyperband_prunes_a_trial_on_its_epoch_reports(tracking, csv_dir, tmp_path):
    """pruner=hyperband: Optuna's HyperbandPruner over the epochs (1 to `epochs`) stops the
    second trial, worse after its first epoch than the first trial was."""
    from stocklab.study.storage import make_pruner

    pruner = make_pruner("hyperband", 2)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource) == (1, 2)
    run_tune(_study(csv_dir, tmp_path, n_trials=2, epochs=2, patience=2, pruner="hyperband", tear_sheet=False,
                    register=False))  # fmt: skip
    study = optuna.load_study(study_name="linear-csvs", storage=make_storage(str(tmp_path / "j.log")))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert sorted(study.trials[1].intermediate_values) == [1]


def test_trial_artifacts_all_logs_every_trials_model_not_only_the_best(tracking, csv_dir, tmp_path):
    run_tune(_study(csv_dir, tmp_path, n_trials=2, trial_artifacts="all", tear_sheet=False, register=False))
    study = optuna.load_study(study_name="linear-csvs", storage=make_storage(str(tmp_path / "j.log")))
    client = mlflow.MlflowClient()
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:  # the best and the other: the full run's importance and book plot
        run_id = t.user_attrs["mlflow_run_id"]
        paths = {a.path for folder in (None, "plots") for a in client.list_artifacts(run_id, folder)}
        assert {"model_bundle", "feature_importance.csv", "plots/portfolio.png"} <= paths, (t.number, paths)
