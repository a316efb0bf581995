"""What a study shows in MLflow: the saved trials view, the study's summary and plots on its
parent run, and the best trial's full evaluation and registration (`finish`)."""

from __future__ import annotations

import hashlib
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from stocklab import registry, tracking
from stocklab.config import DIRECTIONS, TUNE_METRICS, TuneConfig
from stocklab.errors import describe, one_line
from stocklab.pipeline.logged import complete_run, has_model
from stocklab.study.budget import worker_id
from stocklab.study.objective import RESULT_KEY

FULL_EVALUATION_PARAM = "full_evaluation_by"  # the best trial run's param: the worker that completed it


STUDY_VIEW_METRICS = (
    "test_mse", "test_rank_ic", "test_ls_sharpe_net", "test_spread_q5_q1", "train_best_epoch", "train_time_s"
)  # fmt: skip


def save_study_view(cfg: TuneConfig, study_name: str, space: dict, experiment_id: str) -> str:
    """A saved runs-table view ("Views" menu of the experiment page) listing the study's trials,
    best objective first, with the objective, the test metrics and the searched parameters as
    columns: the UI shows no metric column until one is picked, and this view is that pick.
    Its link also goes into the experiment's and the parent run's description."""
    objectives = [RESULT_KEY[o] for o in TUNE_METRICS[cfg.metric]]
    search = "tags.`stocklab.role` = 'trial'"
    if "'" not in study_name:  # a study sharing its experiment (-P experiment=...) with others
        search = f"tags.`stocklab.study` = '{study_name}' and {search}"
    path = tracking.save_runs_view(
        experiment_id,
        view_id=f"stocklab-study-{hashlib.sha1(study_name.encode()).hexdigest()[:10]}",
        name=f"study {study_name}: trials",
        search_filter=search,
        order_by=f"metrics.`{objectives[0]}`",
        ascending=DIRECTIONS[TUNE_METRICS[cfg.metric][0]] == "minimize",
        metrics=[*objectives, *(m for m in STUDY_VIEW_METRICS if m not in objectives)],
        params=list(space),
        tags=["stocklab.trial_state"],
    )
    # a relative link: the UI is a hash-routed page, so it opens under whichever server shows it
    note = (
        f"Trials of study `{study_name}` with their key metrics: [open the trials table]({path}), "
        f"also under **Views > study {study_name}: trials** above the runs table."
    )
    client = mlflow.MlflowClient()
    if "mlflow.note.content" not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, "mlflow.note.content", note)
    mlflow.set_tag("mlflow.note.content", note)
    return path


def best_trial(study: optuna.Study, cfg: TuneConfig) -> optuna.trial.FrozenTrial | None:
    """The trial whose model is registered: the best one, or for `metric=both` the trial of
    the Pareto front (valid loss vs valid rank IC) with the best validation rank IC."""
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        return None
    if len(TUNE_METRICS[cfg.metric]) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (t.values[1], -t.number))


def log_study(study: optuna.Study, cfg: TuneConfig) -> dict:
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
    # params cannot change once logged: a resumed study's best shows in the tag (and the metrics)
    tracking.log_params_once({f"best_{k}": v for k, v in best.params.items()})
    mlflow.set_tag("stocklab.best_params", ", ".join(f"{k}={v}" for k, v in best.params.items())[:5000])
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
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    for name, plot in plots:
        if name == "param_importances" and complete < 2:  # Optuna would draw equal bars and warn
            mlflow.set_tag(f"plot_{name}_skipped", f"needs >= 2 completed trials, the study has {complete}")
            continue
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
    keys = ("valid_loss_min", "valid_mse_min", "valid_rank_ic", "valid_ls_sharpe_net", "train_best_epoch",
            "test_mse", "test_mse_skill", "test_rank_ic", "test_ls_sharpe_net")  # fmt: skip
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


def _in_this_store(run_id: str) -> bool:
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def finish(study: optuna.Study, cfg: TuneConfig, parent_run_id: str, busy: list[int]) -> dict:
    """The study's summary on the active parent run; then, if no other worker's trial still runs
    (`busy`) and no other worker claimed it first, the best trial's full evaluation (model,
    plots, tear sheet: trials log weights only) and its registration."""
    summary = log_study(study, cfg)
    summary["parent_run_id"] = parent_run_id
    best_run = summary.get("best_run_id")
    if best_run and not _in_this_store(best_run):  # a study carried on from another tracking store
        print(
            f"stocklab: warning: the best trial's run {best_run} is in another tracking store; its model is not "
            "evaluated or registered here (point MLFLOW_TRACKING_URI at that store to register it)",
            file=sys.stderr,
        )
        return summary
    if best_run and busy:
        # the best may still change: the last worker to end evaluates and registers it
        print(
            "best trial's full evaluation and registration: left to the worker that ends "
            f"last (trial{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} still running)"
        )
        return summary
    if best_run and not has_model(best_run):
        # workers ending together: exactly one claims the evaluation (a write-once param),
        # so the best model is logged and registered once
        holder = tracking.claim_run(best_run, FULL_EVALUATION_PARAM, worker_id())
        if holder is not None:
            print(
                f"best trial's full evaluation and registration: done by worker {holder} "
                f"(should it have died: stocklab evaluate --run_id {best_run})"
            )
            return summary
    if best_run:
        try:
            complete_run(best_run, cfg.cache_dir, cfg.tear_sheet)
        except Exception as e:  # noqa: BLE001 - never lose the study over the best run's extras
            mlflow.MlflowClient().set_tag(best_run, "stocklab.complete_error", describe(e, 400))
            print(f"best trial's full evaluation failed: {describe(e)}")
        if cfg.register:
            summary.update(register_best(study, cfg, best_run))
    return summary
