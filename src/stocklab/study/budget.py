"""A study's budget and the trials of dead workers.

budget_trials / open_budget:  which trials count towards `n_trials`, and whether more are needed
retry_stale_trial:           a dead worker's trial is failed and queued again with its params
fail_dead_local_trials:      on a journal file (no heartbeat): trials of this machine's dead processes
trials_of_other_workers:     the RUNNING trials of live workers other than this one
"""

from __future__ import annotations

import os
import socket
import warnings

import mlflow
import optuna
from optuna.trial import TrialState

from stocklab.cpu_share import pid_alive


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def budget_trials(trials: list, count_failed: bool = False) -> list:
    """The trials that count towards `n_trials`: all but failed ones, unless `count_failed`;
    then still not those that were retried (a dead worker's trial: its retry counts instead),
    interrupted ones (Ctrl-C, SIGTERM: a resume replaces them) and surplus ones (started in a
    race, never run)."""
    if not count_failed:
        return [t for t in trials if t.state != TrialState.FAIL]
    # RetryFailedTrialCallback records, in each retry, the numbers of the trials it replaces
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return [t for t in trials if not (t.state == TrialState.FAIL and (t.number in retried or _uncounted(t)))]


def _uncounted(trial) -> bool:
    return bool(trial.user_attrs.get("surplus") or trial.user_attrs.get("interrupted"))


def open_budget(study: optuna.Study, n_trials: int, count_failed: bool = False) -> bool:
    """True while the study needs more trials started: fewer than n_trials finished or running,
    or a retry waiting to be run."""
    trials = budget_trials(study.get_trials(deepcopy=False), count_failed)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return waiting > 0 or len(trials) - waiting < n_trials


def _end_mlflow_run(run_id: str | None, status: str, reason: str) -> None:
    if not run_id:
        return
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "stocklab.trial_state", "FAILED")
            client.set_tag(run_id, "stocklab.fail_reason", reason)
            client.set_terminated(run_id, status)
    except mlflow.exceptions.MlflowException:
        pass  # a run of another tracking store (or deleted): nothing to end


MAX_RETRIES = 2  # a configuration whose worker died three times is left FAIL (and counted)


def retry_stale_trial(study: optuna.Study, trial) -> None:
    """A trial whose worker died: end its MLflow run KILLED and queue a retry with the same
    params, recorded as optuna.storages.RetryFailedTrialCallback does (`failed_trial`,
    `retry_history`), without the dead worker's `worker`/`mlflow_run_id` attributes (a live
    worker must never mistake the retry for the dead one's trial)."""
    _end_mlflow_run(trial.user_attrs.get("mlflow_run_id"), "KILLED", "worker died (no heartbeat)")
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    if len(system_attrs["retry_history"]) > MAX_RETRIES:
        return
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("worker", "mlflow_run_id")}
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={**user_attrs, "retry_of": trial.number},
            system_attrs=system_attrs,
        )
    )


def fail_dead_local_trials(study: optuna.Study) -> int:
    """Fail and retry RUNNING trials of workers on this machine whose process is gone (a journal
    file has no heartbeat; on an RDB storage the heartbeat does this across machines)."""
    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("worker", ""))
        if not owner.startswith(f"{host}:") or pid_alive(int(owner.rsplit(":", 1)[1])):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        print(f"trial {t.number}: its worker {owner} is gone; failed and queued for a retry")
        retry_stale_trial(study, study._storage.get_trial(t._trial_id))
        n += 1
    return n


def trials_of_other_workers(study: optuna.Study) -> list[int]:
    """Numbers of the RUNNING trials of other live workers. On an RDB storage, trials whose
    heartbeat stopped are failed (and queued for retry) first; on a journal file, a trial of this
    machine whose process is gone does not count, another machine's counts as live."""
    with warnings.catch_warnings():  # a no-op without heartbeat (a journal file)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    me, host = worker_id(), socket.gethostname()
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("worker", ""))  # unset for a moment after a trial starts
        if owner == me or (owner.startswith(f"{host}:") and not pid_alive(int(owner.rsplit(":", 1)[1]))):
            continue
        numbers.append(t.number)
    return numbers
