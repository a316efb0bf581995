"""The `tune` job: an Optuna study in which every trial is a nested MLflow run.

    mlflow run . -e tune --env-manager local                          # lstm on the built-in sample
    mlflow run . -e tune --env-manager local -P model=cnn2d -P data=../shared/data/sp500_5yr -P n_trials=6

`objective(trial)` samples a configuration from `tuning/<model>.yaml`, calls the same `run_train`
as the `train` job, and reports the validation loss every epoch so the pruner can stop bad
trials early. The study is stored in `storage` (default: an Optuna journal file, safe for
several processes on one machine; an RDB URL such as postgresql://... works too), so running
the same `study_name` again resumes it: `n_trials` is the study's total of finished trials.
The best trial's model is registered as a new version of `stocklab-<model>`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna
import yaml

from stocklab import tracking
from stocklab.config import StockLabError, TrainConfig, update
from stocklab.models import MODELS
from stocklab.train import run_train, valid_rank_ic

METRICS = {"valid_mse": "minimize", "valid_rank_ic": "maximize"}
PRUNERS = ("median", "hyperband", "none")
DEFAULT_JOURNAL = "optuna-journal.log"


@dataclass
class TuneConfig:
    model: str = "lstm"
    data: str = "sample"
    n_trials: int = field(default=8, metadata={"help": "total finished trials of the study"})
    timeout: float = field(default=0.0, metadata={"help": "seconds for this invocation (0 = none)"})
    epochs: int = 4
    study_name: str = field(default="", metadata={"help": "default: <model>-<data name>"})
    storage: str = field(default="", metadata={"help": f"journal file (default {DEFAULT_JOURNAL}) or RDB URL"})
    metric: str = field(default="valid_mse", metadata={"help": "valid_mse|valid_rank_ic"})
    pruner: str = field(default="median", metadata={"help": "|".join(PRUNERS)})
    seed: int = 0
    space: str = field(default="", metadata={"help": "search-space YAML (default tuning/<model>.yaml)"})
    features: str = "auto"
    horizon: int = 20
    patience: int = 3
    max_tickers: int = 0
    register: bool = field(default=True, metadata={"help": "register the best trial's model"})

    def validate(self) -> TuneConfig:
        if self.model not in MODELS:
            raise StockLabError(f"model: unknown model '{self.model}' (choose from {', '.join(MODELS)})")
        if self.n_trials < 1:
            raise StockLabError(f"n_trials: {self.n_trials} must be >= 1")
        if self.timeout < 0:
            raise StockLabError(f"timeout: {self.timeout} must be >= 0")
        if self.metric not in METRICS:
            raise StockLabError(f"metric: {self.metric!r} must be one of {', '.join(METRICS)}")
        if self.pruner not in PRUNERS:
            raise StockLabError(f"pruner: {self.pruner!r} must be one of {', '.join(PRUNERS)}")
        return self

    def resolved_study_name(self) -> str:
        data_name = "sample" if self.data == "sample" else Path(self.data.rstrip("/")).name
        return self.study_name or f"{self.model}-{data_name}"


def load_space(cfg: TuneConfig) -> dict:
    path = Path(cfg.space or f"tuning/{cfg.model}.yaml")
    if not path.is_file():
        raise StockLabError(f"space: search-space file '{path}' not found (run from the project root)")
    try:
        space = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StockLabError(f"space: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(MODELS[cfg.model][1])}
    for name, spec in space.items():
        if name not in train_fields | model_fields:
            raise StockLabError(f"space: {path}: '{name}' is neither a train nor a {cfg.model} parameter")
        if not isinstance(spec, dict) or spec.get("type") not in ("int", "float", "categorical"):
            raise StockLabError(f"space: {path}: '{name}' needs type int, float or categorical")
    return space


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """One configuration sampled from the search space."""
    out = {}
    for name, spec in space.items():
        if spec["type"] == "int":
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "float":
            out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            out[name] = trial.suggest_categorical(name, spec["choices"])
    return out


def make_storage(storage: str):
    if "://" in storage:
        return storage  # an RDB URL: optuna.create_study accepts it as is
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # a journal file uses file locks, so several workers on one machine can share it (SQLite cannot)
    return JournalStorage(JournalFileBackend(storage or DEFAULT_JOURNAL))


def make_pruner(name: str, epochs: int):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def _objective(cfg: TuneConfig, space: dict, study_name: str, client):
    base = TrainConfig(
        data=cfg.data,
        model=cfg.model,
        features=cfg.features,
        horizon=cfg.horizon,
        epochs=cfg.epochs,
        patience=cfg.patience,
        seed=cfg.seed,
        max_tickers=cfg.max_tickers,
    )
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        tcfg = update(base, {k: v for k, v in params.items() if k in train_fields})
        overrides = {k: v for k, v in params.items() if k not in train_fields}
        run_ids: list[str] = []

        def on_start(run_id: str) -> None:
            run_ids.append(run_id)
            trial.set_user_attr("mlflow_run_id", run_id)

        def on_epoch(epoch, valid_loss, model, prep):
            value = valid_loss if cfg.metric == "valid_mse" else valid_rank_ic(model, prep, tcfg)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({cfg.metric}={value:.6g})")

        tags = {"stocklab.study": study_name, "stocklab.trial": str(trial.number)}
        try:
            res = run_train(
                tcfg,
                overrides,
                nested=True,
                run_name=f"trial-{trial.number:03d}",
                tags=tags,
                on_start=on_start,
                on_epoch=on_epoch,
                tear_sheet=False,
            )
        except optuna.TrialPruned as e:
            if run_ids:  # the run context marked it FAILED; a pruned trial is KILLED
                client.set_tag(run_ids[0], "stocklab.trial_state", "PRUNED")
                client.set_tag(run_ids[0], "stocklab.pruned_reason", str(e))
                client.set_terminated(run_ids[0], "KILLED")
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
            trial.set_user_attr("fail_reason", reason)
            if run_ids:
                client.set_tag(run_ids[0], "stocklab.trial_state", "FAILED")
                client.set_tag(run_ids[0], "stocklab.fail_reason", reason)
            print(f"trial {trial.number} failed: {reason}")
            raise
        value = res["valid_mse_min"] if cfg.metric == "valid_mse" else res["valid_rank_ic"]
        client.set_tag(run_ids[0], "stocklab.trial_state", "COMPLETE")
        return value

    return objective


def run_tune(cfg: TuneConfig) -> dict:
    cfg.validate()
    space = load_space(cfg)
    study_name = cfg.resolved_study_name()
    direction = METRICS[cfg.metric]
    study = optuna.create_study(
        study_name=study_name,
        storage=make_storage(cfg.storage),
        direction=direction,
        pruner=make_pruner(cfg.pruner, cfg.epochs),
        load_if_exists=True,
    )
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done = len(study.get_trials(deepcopy=False, states=done_states))
    # a resumed study must not replay the first invocation's random draws: offset the seed by
    # the trials already there (still deterministic for a given study history)
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    remaining = max(cfg.n_trials - done, 0)
    client = mlflow.tracking.MlflowClient()
    with mlflow.start_run(run_name=f"study-{study_name}") as parent:
        mlflow.set_tags({"stocklab.study": study_name, "stocklab.role": "study"})
        tracking.log_params_once({**dataclasses.asdict(cfg), "study_name_resolved": study_name})
        print(f"study {study_name}: {done} finished trials, running {remaining} more (target {cfg.n_trials})")
        if remaining:
            study.optimize(
                _objective(cfg, space, study_name, client),
                n_trials=remaining,
                timeout=cfg.timeout or None,
                catch=(Exception,),  # a failed trial is recorded as FAIL and the study goes on
            )
        summary = _log_study(study, cfg)
        summary["parent_run_id"] = parent.info.run_id
        if cfg.register and summary.get("best_run_id"):
            summary.update(register_best(study, cfg, summary["best_run_id"], client))
    return summary


def _log_study(study: optuna.Study, cfg: TuneConfig) -> dict:
    """Best params/value, history and importance plots, and the trials table on the parent run."""
    trials = study.trials_dataframe()
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    mlflow.log_metrics({f"trials_{str(k).lower()}": v for k, v in states.items()})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        trials.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        mlflow.set_tag("stocklab.best", "no trial completed")
        return {"best_value": None, "best_run_id": None, "states": states}
    best = study.best_trial
    mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
    mlflow.log_metrics({"best_value": best.value, f"best_{cfg.metric}": best.value, "best_trial": best.number})
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    for name, plot in [
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
        ("intermediate_values", ovm.plot_intermediate_values),
    ]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            mlflow.log_figure(fig, f"plots/{name}.png")
        except Exception as e:  # noqa: BLE001 - e.g. importances need >= 2 completed trials
            mlflow.set_tag(f"plot_{name}_skipped", str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
        finally:
            plt.close("all")
    return {
        "best_value": best.value,
        "best_params": best.params,
        "best_trial": best.number,
        "best_run_id": best.user_attrs.get("mlflow_run_id"),
        "states": states,
    }


def registered_name(model: str) -> str:
    return f"stocklab-{model}"


def register_best(study: optuna.Study, cfg: TuneConfig, run_id: str, client) -> dict:
    """Register the best trial's model as a new version carrying the trial's metrics."""
    name = registered_name(cfg.model)
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:  # a resumed study whose best trial did not change: no duplicate version
        print(f"best trial's model is already {name} version {existing[0].version}")
        return {"registered_name": name, "registered_version": int(existing[0].version)}
    run = client.get_run(run_id)
    version = mlflow.register_model(run.data.tags.get("stocklab.model_uri", f"runs:/{run_id}/model"), name)
    metrics = run.data.metrics
    for key in ("test_mse", "valid_mse_min", "mse_skill", "naive_mse", "best_epoch", "valid_rank_ic"):
        if key in metrics:
            client.set_model_version_tag(name, version.version, key, str(metrics[key]))
    client.set_model_version_tag(name, version.version, "study", study.study_name)
    client.set_model_version_tag(name, version.version, "trial", str(study.best_trial.number))
    mlflow.set_tag("stocklab.registered", f"{name} v{version.version}")
    print(f"registered {name} version {version.version} (trial {study.best_trial.number}, run {run_id})")
    return {"registered_name": name, "registered_version": int(version.version)}
