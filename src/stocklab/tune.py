"""The `tune` job: an Optuna study in which every trial is a nested MLflow run.

    mlflow run . -e tune --env-manager local                          # lstm on the built-in sample
    mlflow run . -e tune --env-manager local -P model=cnn2d -P data=../shared/data/sp500_5yr -P n_trials=6

`objective(trial)` samples a configuration from the model's search space (stocklab/spaces/), opens a nested MLflow run,
calls the same `pipeline.train_in_run` as the `train` job, and reports the study's metric every
epoch so the pruner can stop bad trials early; it ends the run FINISHED, KILLED (pruned) or
FAILED itself. Every `train` parameter (split, scaler, preset, ...) sets the trials' base
configuration; a parameter given explicitly is not searched. The study is stored in `storage`
(default: an Optuna journal file, safe for several processes on one machine; an RDB URL such
as postgresql://... works too), so running
the same `study_name` again resumes it: `n_trials` is the study's total of finished trials.
The best trial's model is registered as a new version of `stocklab-<model>`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from pathlib import Path

import mlflow
import optuna

from stocklab import registry, tracking
from stocklab.config import (
    DEFAULT_JOURNAL,
    DIRECTIONS,
    TUNE_METRICS,
    StockLabError,
    TrainConfig,
    TuneConfig,
    with_values,
)
from stocklab.errors import describe, one_line
from stocklab.models import MODELS
from stocklab.pipeline import EpochInfo, add_tear_sheet, train_in_run
from stocklab.spaces import load_space, suggest

# what each study metric reads from a finished trial's results (both are validation-only)
RESULT_KEY = {"valid_loss": "valid_loss_min", "valid_rank_ic": "valid_rank_ic"}


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


def _objective(cfg: TuneConfig, model_overrides: dict, space: dict, study_name: str, experiment_id: str):
    """objective(trial): sample a configuration, train it in a nested MLflow run, return the
    validation metric. The run ends FINISHED, KILLED (pruned) or FAILED (with the reason)."""
    base = cfg.train_config()
    objectives = TUNE_METRICS[cfg.metric]
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # the study's values of what is not searched (for `when` conditions on them)
    context = {**dataclasses.asdict(base), **dataclasses.asdict(MODELS[cfg.model][1]), **model_overrides}

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space, context)
        best_ic: dict[tuple[int, int], float] = {}  # (fold, best-loss epoch) -> its rank IC, once each

        def report(info: EpochInfo) -> None:
            # report what the trial would return if it stopped now: the validation loss of the
            # kept (best) epoch, or that epoch's rank IC (Optuna cannot prune multi-objective trials)
            if len(objectives) > 1:
                return
            # with walk-forward folds the step counts epochs across folds, so trials are compared
            # on the same fold at the same epoch
            if cfg.metric == "valid_loss":
                value = info.valid_loss_min
            else:
                key = (info.fold, info.best_epoch)
                if key not in best_ic and info.best_epoch == info.epoch:
                    best_ic[key] = info.valid_rank_ic()
                value = best_ic.get(key, float("nan"))
            trial.report(value, info.step)
            if trial.should_prune():
                where = f"fold {info.fold + 1} epoch {info.epoch}" if cfg.folds > 1 else f"epoch {info.epoch}"
                raise optuna.TrialPruned(f"pruned at {where} ({cfg.metric}={value:.6g})")

        tags = {"stocklab.study": study_name, "stocklab.trial": str(trial.number), "stocklab.role": "trial"}
        shown = {**context, **params}
        name = tracking.run_name(cfg.model, shown, shown["seq_len"], shown["lr"], prefix=f"t{trial.number:03d}")
        run = mlflow.start_run(nested=True, run_name=name, tags=tags, experiment_id=experiment_id)
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        try:
            tcfg = with_values(base, {k: v for k, v in params.items() if k in train_fields})
            overrides = {**model_overrides, **{k: v for k, v in params.items() if k not in train_fields}}
            res = train_in_run(tcfg, overrides, on_epoch=report, tear_sheet=False)
        except optuna.TrialPruned as e:
            mlflow.set_tags({"stocklab.trial_state": "PRUNED", "stocklab.pruned_reason": one_line(e)})
            mlflow.end_run("KILLED")
            raise
        except Exception as e:
            reason = describe(e)
            trial.set_user_attr("fail_reason", reason)
            mlflow.set_tags({"stocklab.trial_state": "FAILED", "stocklab.fail_reason": reason})
            mlflow.end_run("FAILED")
            print(f"trial {trial.number} failed: {reason}")
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit: the trial did not finish
            mlflow.end_run("KILLED")
            raise
        mlflow.set_tag("stocklab.trial_state", "COMPLETE")
        mlflow.end_run("FINISHED")
        values = tuple(res[RESULT_KEY[o]] for o in objectives)
        return values if len(values) > 1 else values[0]

    return objective


def run_tune(cfg: TuneConfig, model_overrides: dict | None = None, fixed: set[str] | frozenset = frozenset()) -> dict:
    """Run (or resume) the study. `model_overrides` fix model hyper-parameters for every trial;
    `fixed` names the parameters given explicitly, which are not searched."""
    cfg.validate()
    if cfg.model not in MODELS:
        raise StockLabError(f"model: unknown model '{cfg.model}' (choose from {', '.join(MODELS)})")
    space = load_space(cfg.model, MODELS[cfg.model][1], cfg.space, set(fixed) | set(model_overrides or {}))
    study_name = cfg.resolved_study_name()
    study = optuna.create_study(
        study_name=study_name,
        storage=make_storage(cfg.storage),
        directions=[DIRECTIONS[o] for o in TUNE_METRICS[cfg.metric]],
        pruner=make_pruner(cfg.pruner, cfg.epochs * cfg.folds),  # steps count epochs across folds
        load_if_exists=True,
    )
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done = len(study.get_trials(deepcopy=False, states=done_states))
    # a resumed study must not replay the first invocation's random draws: offset the seed by
    # the trials already there (still deterministic for a given study history)
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    remaining = max(cfg.n_trials - done, 0)
    experiment = cfg.experiment or f"stocklab-tune-{study_name}"  # one experiment per study
    with tracking.job_run(experiment, bool(cfg.experiment), run_name=f"study {study_name}") as parent:
        mlflow.set_tags({"stocklab.study": study_name, "stocklab.role": "study", "stocklab.model": cfg.model})
        tracking.log_params_once(
            {**dataclasses.asdict(cfg), **(model_overrides or {}), "study_name_resolved": study_name}
        )
        print(f"study {study_name}: {done} finished trials, running {remaining} more (target {cfg.n_trials})")
        if remaining:
            study.optimize(
                _objective(cfg, model_overrides or {}, space, study_name, parent.info.experiment_id),
                n_trials=remaining,
                timeout=cfg.timeout or None,
                catch=(Exception,),  # a failed trial is recorded as FAIL and the study goes on
            )
        summary = _log_study(study, cfg)
        summary["parent_run_id"] = parent.info.run_id
        best_run = summary.get("best_run_id")
        if best_run and not mlflow.MlflowClient().list_artifacts(best_run, "tearsheet"):
            # trials skip the tear sheet (seconds each); the model a study picks gets one
            try:
                add_tear_sheet(best_run, cfg.cache_dir)
            except Exception as e:  # noqa: BLE001 - a tear sheet must never lose the study
                mlflow.MlflowClient().set_tag(best_run, "tearsheet_error", describe(e, 400))
        if cfg.register and best_run:
            summary.update(register_best(study, cfg, best_run))
    return summary


def best_trial(study: optuna.Study, cfg: TuneConfig) -> optuna.trial.FrozenTrial | None:
    """The trial whose model is registered: the best one, or for `metric=both` the trial of
    the Pareto front (valid loss vs valid rank IC) with the best validation rank IC."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return None
    if len(TUNE_METRICS[cfg.metric]) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (t.values[1], -t.number))


def _log_study(study: optuna.Study, cfg: TuneConfig) -> dict:
    """Best params/values, history/importance (or Pareto front) plots and the trials table on the parent run."""
    trials = study.trials_dataframe()
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    mlflow.log_metrics({f"trials_{str(k).lower()}": v for k, v in states.items()})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        trials.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    best = best_trial(study, cfg)
    if best is None:
        mlflow.set_tag("stocklab.best", "no trial completed")
        return {"best_value": None, "best_run_id": None, "states": states}
    objectives = TUNE_METRICS[cfg.metric]
    mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
    mlflow.log_metrics({f"best_{o}": v for o, v in zip(objectives, best.values)})
    mlflow.log_metrics({"best_value": best.values[0], "best_trial": best.number})
    if len(objectives) > 1:
        mlflow.log_metric("pareto_front_size", len(study.best_trials))
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    if len(objectives) == 1:
        plots = [
            ("optimization_history", ovm.plot_optimization_history),
            ("param_importances", ovm.plot_param_importances),
            ("intermediate_values", ovm.plot_intermediate_values),
        ]
    else:
        plots = [("pareto_front", lambda s: ovm.plot_pareto_front(s, target_names=list(objectives)))]
    for name, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            mlflow.log_figure(fig, f"plots/{name}.png")
        except Exception as e:  # noqa: BLE001 - e.g. importances need >= 2 completed trials
            mlflow.set_tag(f"plot_{name}_skipped", one_line(e, 300))
        finally:
            plt.close("all")
    return {
        "best_value": best.values[0] if len(best.values) == 1 else tuple(best.values),
        "best_params": best.params,
        "best_trial": best.number,
        "best_run_id": best.user_attrs.get("mlflow_run_id"),
        "states": states,
    }


def register_best(study: optuna.Study, cfg: TuneConfig, run_id: str) -> dict:
    """Register the best trial's model as a version of stocklab-<model> carrying its
    validation metrics (what `promote` decides on) and its test metrics (shown, not used)."""
    name = registry.registered_name(cfg.model)
    metrics = mlflow.get_run(run_id).data.metrics
    keys = ("valid_loss_min", "valid_mse_min", "valid_rank_ic", "best_epoch", "test_mse", "mse_skill", "rank_ic")
    tags = {k: metrics[k] for k in keys if k in metrics}
    trial = best_trial(study, cfg)
    tags.update(study=study.study_name, trial=trial.number, metric=cfg.metric)
    version, created = registry.register_run_model(name, run_id, tags)
    mlflow.set_tag("stocklab.registered", f"{name} v{version}")
    if created:
        print(f"registered {name} version {version} (trial {trial.number}, run {run_id})")
    else:
        print(f"best trial's model is already {name} version {version}")
    return {"registered_name": name, "registered_version": version}
