"""The `tune` job: an Optuna study in which every trial is a nested MLflow run.

    mlflow run . -e tune --env-manager local                          # lstm on the built-in sample
    mlflow run . -e tune --env-manager local -P model=cnn2d -P data=../shared/data/sp500_5yr -P n_trials=6
    mlflow run . -e tune --env-manager local -P n_jobs=4             # four worker processes, one study

Every `train` parameter (split, scaler, preset, ...) sets the trials' base configuration; a
parameter given explicitly is not searched. The study lives in `storage` (default: an Optuna
journal file, safe for several processes on one machine; an RDB URL such as postgresql://...
for several machines), so running the same `study_name` again resumes it and any number of
workers share it. The pieces:

    study/objective.py  one trial: sample, train in a nested run, report each epoch, return the metric
    study/workers.py    the trial loop, worker processes, the study's shared parent run
    study/budget.py     what counts towards n_trials; trials of dead workers failed and retried
    study/storage.py    the Optuna storage, the per-trial seeded sampler, the pruner
    study/report.py     the trials view, the study summary, the best trial's evaluation and registration

A worker prepares the data once (pipeline.inputs.InputCache) and trials log metrics, loss
curves and weights only; the best trial then gets the full evaluation (model, plots, tear
sheet) and is registered as a new version of `stocklab-<model>`.
"""

from __future__ import annotations

import json
import time

import mlflow
import optuna
from optuna.trial import TrialState

from stocklab import tracking
from stocklab.config import StockLabError, TuneConfig
from stocklab.data import ReadOptions, check_source
from stocklab.errors import mask_secrets
from stocklab.interrupts import install_signal_handlers, quiet_optuna_interrupts
from stocklab.models import MODELS, check_model
from stocklab.spaces import check_comparable, load_space
from stocklab.study import report
from stocklab.study.budget import budget_trials, fail_dead_local_trials, trials_of_other_workers
from stocklab.study.objective import StudySetup
from stocklab.study.storage import claim_study, resolve_storage
from stocklab.study.workers import (
    EXPERIMENT_ATTR,
    PARENT_ATTR,
    TRACKING_ATTR,
    hand_parent_to_other_workers,
    run_workers,
    wait_for_parent,
    work,
)


def run_tune(cfg: TuneConfig, model_overrides: dict | None = None, fixed: set[str] | frozenset = frozenset()) -> dict:
    """Run (or resume, or join) the study: open it -> its parent run -> work -> finish.
    `model_overrides` fix model hyper-parameters for every trial; `fixed` names the parameters
    given explicitly, which are not searched."""
    cfg.validate()
    model_overrides = model_overrides or {}
    check_model(cfg.model)
    source = check_source(cfg.data, ReadOptions.of(cfg))  # before the study: each trial would fail on it
    space = load_space(cfg.model, MODELS[cfg.model][1], cfg.space, set(fixed) | set(model_overrides))
    check_comparable(space, cfg.metric)
    study_name = cfg.resolved_study_name()
    study, created = claim_study(cfg, source=source)
    fail_dead_local_trials(study)
    trials = budget_trials(study.get_trials(deepcopy=False), cfg.count_failed)  # before this worker starts any
    install_signal_handlers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # print_trial gives one line per trial
    quiet_optuna_interrupts()
    parent_id = None if created else wait_for_parent(study)
    experiment = cfg.experiment or f"stocklab-tune-{study_name}"  # one experiment per study
    joined: str | None = None  # the parent run this process ended, once it has one
    try:
        with tracking.job_run(
            experiment, bool(cfg.experiment), run_name=f"study {study_name}", run_id=parent_id
        ) as parent:
            joined = parent.info.run_id
            if parent_id is None:  # the study's creator: every later worker joins this run
                study.set_user_attr(PARENT_ATTR, parent.info.run_id)
                # where the runs are, from the study alone (optuna-dashboard, another machine)
                study.set_user_attr(TRACKING_ATTR, mask_secrets(mlflow.get_tracking_uri()))
                study.set_user_attr(EXPERIMENT_ATTR, parent.info.experiment_id)
            setup = StudySetup(cfg, model_overrides, space, parent.info.run_id, parent.info.experiment_id)
            _start_parent(study, setup, trials)
            deadline = time.time() + cfg.timeout if cfg.timeout else None
            if cfg.n_jobs > 1:
                run_workers(setup, deadline)
            # alone, this process is the worker; after N workers it runs what a worker killed last
            # left behind (a queued retry, an open slot), within the same deadline
            work(setup, deadline)
            busy = trials_of_other_workers(study)  # looked at first: with none running, the best is final
            summary = report.finish(study, cfg, parent.info.run_id, busy)
            if not busy:
                _check_some_trial_completed(study, cfg.timeout)
            return summary
    finally:
        if joined is not None:
            hand_parent_to_other_workers(study, joined)


def _start_parent(study: optuna.Study, setup: StudySetup, trials: list) -> None:
    """Tags, params and the trials view on the parent run, and the study's one status line."""
    cfg, study_name = setup.cfg, study.study_name
    mlflow.set_tags({"stocklab.study": study_name, "stocklab.role": "study", "stocklab.model": cfg.model})
    view = report.save_study_view(cfg, study_name, setup.space, setup.experiment_id)
    # a searched parameter's base value would read as a trial's: the parent logs the space
    # instead (`search_space`, and search_space.json), and its trials their drawn values
    values = {**tracking.run_params(cfg), **setup.model_overrides}
    params = {k: v for k, v in values.items() if k not in setup.space}
    params |= {"study_name_resolved": study_name, "search_space": _space_param(setup.space)}
    mlflow.log_dict(setup.space, "search_space.json")
    params["storage"] = mask_secrets(cfg.storage)  # never a password in the tracking store
    params["storage_resolved"] = mask_secrets(resolve_storage(cfg))
    tracking.log_params_once(params)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
    remaining = max(cfg.n_trials - len(trials), 0)
    print(
        f"study {study_name}: {done} finished trials, {remaining} to start (target {cfg.n_trials}), "
        f"{cfg.n_jobs} worker{'s' if cfg.n_jobs > 1 else ''}"
    )
    print(f"trials table in the MLflow UI: {tracking.ui_link(view)}")


def _space_param(space: dict) -> str:
    """The searched dimensions in one param (MLflow keeps 6,000 characters; the JSON artifact
    has all of it)."""
    text = json.dumps(space, separators=(",", ":"), default=str)
    return text if len(text) <= 6000 else text[:5980] + "... (search_space.json)"


def _check_some_trial_completed(study: optuna.Study, timeout: float = 0.0) -> None:
    """A study with no completed trial has no result: an error with the trials' reasons (the
    parent run ends FAILED and the exit is non-zero), never a quiet success."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return
    reasons = dict.fromkeys(t.user_attrs.get("fail_reason", t.state.name) for t in trials)
    none = f"none ran: timeout={timeout:g} s passed before the first trial" if timeout else "none ran"
    raise StockLabError(
        f"study '{study.study_name}': no trial completed ({len(trials)} trial(s): {'; '.join(reasons) or none})"
    )
