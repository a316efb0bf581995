"""One trial: the Optuna objective, in the optuna-examples shape.

    objective(trial): sample a configuration from the space -> open the trial's nested MLflow
    run -> train it with the shared `train_in_run`, reporting each epoch for pruning -> return
    the validation metric.

`trial_run` opens and ends that run exactly once: FINISHED, KILLED (pruned, or interrupted by
Ctrl-C/SIGTERM) or FAILED with the reason. A trial that failed in training returns NaN (Optuna
records FAIL) with one line as its `fail_reason`, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import mlflow
import optuna

from stocklab import tracking
from stocklab.config import TUNE_METRICS, TuneConfig, split_params, with_values
from stocklab.errors import describe, one_line
from stocklab.models import model_defaults, run_name
from stocklab.pipeline.fitting import EpochInfo, train_in_run
from stocklab.pipeline.inputs import InputCache
from stocklab.spaces import suggest
from stocklab.study.budget import worker_id

# what each study metric reads from a finished trial's results (both are validation-only)
RESULT_KEY = {
    "valid_loss": "valid_loss_min",
    "valid_rank_ic": "valid_rank_ic",
    "valid_ls_sharpe_net": "valid_ls_sharpe_net",
    "valid_topk_ir": "valid_topk_ir",
}


class TrialFailed(Exception):
    """Training failed inside the trial's run; the run is ended FAILED and the reason recorded."""


@dataclass(frozen=True)
class StudySetup:
    """What every trial of one study shares, in every worker process."""

    cfg: TuneConfig
    model_overrides: dict  # model hyper-parameters fixed for every trial
    space: dict  # the search space (stocklab/spaces/<model>.yaml, minus the fixed parameters)
    parent_run_id: str
    experiment_id: str

    def failed_value(self):
        """What a failed trial returns: NaN per objective (Optuna records FAIL)."""
        n = len(TUNE_METRICS[self.cfg.metric])
        return tuple(math.nan for _ in range(n)) if n > 1 else math.nan


@contextlib.contextmanager
def trial_run(trial: optuna.Trial, setup: StudySetup, name: str):
    """The trial's nested MLflow run, ended once with the trial's state."""
    tags = {
        "stocklab.study": setup.cfg.resolved_study_name(),
        "stocklab.trial": str(trial.number),
        "stocklab.role": "trial",
        "stocklab.worker": worker_id(),
    }
    run = mlflow.start_run(
        run_name=name,
        tags=tags,
        experiment_id=setup.experiment_id,
        parent_run_id=setup.parent_run_id,
        nested=mlflow.active_run() is not None,
        log_system_metrics=tracking.system_metrics(),
    )
    trial.set_user_attr("mlflow_run_id", run.info.run_id)
    try:
        yield run
    except optuna.TrialPruned as e:
        # KILLED and FAILED share the UI's red cross: the run name tells a pruned trial apart
        tags = {"stocklab.trial_state": "PRUNED", "stocklab.pruned_reason": one_line(e)}
        mlflow.set_tags({**tags, "mlflow.runName": f"{name} [pruned]"})
        mlflow.end_run("KILLED")
        raise
    except Exception as e:
        reason = describe(e)
        trial.set_user_attr("fail_reason", reason)
        tags = {"stocklab.trial_state": "FAILED", "stocklab.fail_reason": reason}
        mlflow.set_tags({**tags, "mlflow.runName": f"{name} [failed]"})
        mlflow.end_run("FAILED")
        raise TrialFailed(reason) from e
    except BaseException:  # KeyboardInterrupt, SystemExit (SIGTERM): the trial did not finish
        trial.set_user_attr("interrupted", True)
        mlflow.set_tag("stocklab.trial_state", "KILLED")
        mlflow.end_run("KILLED")
        raise
    mlflow.set_tag("stocklab.trial_state", "COMPLETE")
    mlflow.end_run("FINISHED")


def epoch_reporter(trial: optuna.Trial, cfg: TuneConfig):
    """on_epoch for train_in_run: report what the trial would return if it stopped now (the
    validation loss of the kept epoch, or that epoch's rank IC or validation book's net Sharpe)
    and prune if told to.
    With walk-forward folds the step counts epochs across folds, so trials are compared on the
    same fold at the same epoch. Optuna cannot prune multi-objective trials: nothing to report."""
    kept: dict[tuple[int, int], float] = {}  # (fold, kept epoch) -> its value, computed once each

    def report(info: EpochInfo) -> None:
        if len(TUNE_METRICS[cfg.metric]) > 1:
            return
        if cfg.metric == "valid_loss":
            value = info.valid_loss_min
        else:
            key = (info.fold, info.best_epoch)
            if key not in kept and info.best_epoch == info.epoch:
                kept[key] = info.valid_rank_ic() if cfg.metric == "valid_rank_ic" else info.valid_book(cfg.metric)
            value = kept.get(key, float("nan"))
        trial.report(value, info.step)
        if trial.should_prune():
            where = f"fold {info.fold + 1} epoch {info.epoch}" if cfg.folds > 1 else f"epoch {info.epoch}"
            raise optuna.TrialPruned(f"pruned at {where} ({cfg.metric}={value:.6g})")

    return report


def make_objective(setup: StudySetup, cache: InputCache):
    """objective(trial) for `study.optimize`; `cache` holds this worker's prepared inputs."""
    cfg = setup.cfg
    base = cfg.train_config()
    # the study's values of what is not searched (for `when` conditions on them)
    context = {**dataclasses.asdict(base), **model_defaults(cfg.model), **setup.model_overrides}
    context["metric"] = cfg.metric  # the built-in spaces search the training target only on rank IC

    def objective(trial: optuna.Trial):
        params = suggest(trial, setup.space, context)
        train_values, model_values = split_params(params)
        overrides = {**setup.model_overrides, **model_values}
        shown = {**context, **params}
        name = run_name(cfg.model, shown, shown["seq_len"], shown["lr"], prefix=f"t{trial.number:03d}")
        try:
            with trial_run(trial, setup, name):
                tcfg = with_values(base, train_values)
                full = cfg.trial_artifacts == "all"
                res = train_in_run(tcfg, overrides, epoch_reporter(trial, cfg), full=full, cache=cache)
        except TrialFailed:
            return setup.failed_value()  # the reason is the trial's `fail_reason`
        values = tuple(res.get(RESULT_KEY[o], float("nan")) for o in TUNE_METRICS[cfg.metric])
        return values if len(values) > 1 else values[0]

    return objective
