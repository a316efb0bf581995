"""Several workers, one study: the trial loop, worker processes and the shared parent run.

Any number of workers (`-P n_jobs=N`, or the command started N times, anywhere) share a study:
  * `n_trials` is the study's total: a worker starts a trial only while fewer than `n_trials`
    trials are finished or running (study/budget.py); a trial started in a race after the last
    slot went is a surplus one, ended at once and not counted;
  * each trial's sampler is seeded from (seed, trial number) (study/storage.py);
  * a trial whose worker died is failed and retried with the same parameters (study/budget.py);
  * one parent MLflow run per study, reused by every worker and every resume: of workers that
    start a new study together, the one whose call creates it makes the parent, the others wait
    for it here; the last worker to end ends it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import mlflow
import optuna
from optuna.trial import TrialState

from stocklab.config import StockLabError
from stocklab.errors import mask_secrets, one_line
from stocklab.interrupts import install_signal_handlers, quiet_optuna_interrupts
from stocklab.pipeline.inputs import InputCache
from stocklab.study.budget import (
    budget_trials,
    fail_dead_local_trials,
    open_budget,
    trials_of_other_workers,
    worker_id,
)
from stocklab.study.objective import StudySetup, make_objective
from stocklab.study.storage import open_study

PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the study's one parent run
TRACKING_ATTR = "mlflow_tracking_uri"  # ... the tracking store it is in (passwords masked)
EXPERIMENT_ATTR = "mlflow_experiment_id"  # ... and its experiment
PARENT_WAIT_S = 30.0  # how long a joining worker waits for the study's creator to make its parent


def print_trial(study: optuna.Study, trial) -> None:
    """One line per finished trial: number, state, value, seconds, worker (and why it failed)."""
    if trial.user_attrs.get("surplus"):
        return
    secs = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0
    value = "" if trial.values is None else " ".join(f"{v:.6g}" for v in trial.values)
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = f"{list(trial.intermediate_values.values())[-1]:.6g} (last report)"
    why = f"  {trial.user_attrs.get('fail_reason', 'no value')}" if trial.state == TrialState.FAIL else ""
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    print(f"trial {trial.number:>3} {trial.state.name:<8} {value:<22} {secs:7.1f}s  {params}{why}", flush=True)


def guard_budget(objective, setup: StudySetup):
    """`objective` for a shared budget: a trial that another worker's trial beat to the last
    slot is marked surplus and ends at once (FAIL, not counted)."""

    def guarded(trial: optuna.Trial):
        trial.set_user_attr("worker", worker_id())
        trials = trial.study.get_trials(deepcopy=False)
        earlier = [t for t in budget_trials(trials, setup.cfg.count_failed) if t.number < trial.number]
        if len([t for t in earlier if t.state != TrialState.WAITING]) >= setup.cfg.n_trials:
            trial.set_user_attr("surplus", True)
            return setup.failed_value()
        return objective(trial)

    return guarded


def work(setup: StudySetup, deadline: float | None = None) -> int:
    """Run trials of the study until its budget is full or the wall-clock `deadline` (the
    invocation's `timeout`, shared by its workers) passes; returns the number of trials run."""
    study = open_study(setup.cfg)
    cache = InputCache()  # this worker's prepared inputs, reused across its trials
    objective = guard_budget(make_objective(setup, cache), setup)
    ran = 0
    # failed trials need not count (count_failed): a worker still starts at most n_trials in
    # one invocation, so a configuration that always fails cannot loop for ever
    while (deadline is None or time.time() < deadline) and ran < setup.cfg.n_trials:
        # before each trial: dead workers' trials are queued for a retry and the budget is re-read
        # from the storage (Optuna's heartbeat check runs inside optimize, on RDB storages)
        fail_dead_local_trials(study)
        if not open_budget(study, setup.cfg.n_trials, setup.cfg.count_failed):
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[print_trial])
        ran += 1
    return ran


def _worker_main(setup: StudySetup, uris: tuple[str, str], threads: int, deadline: float | None) -> None:
    """A worker process of `-P n_jobs=N` (spawned: a fresh interpreter, no inherited CUDA state)."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # never resume the launcher's run as a trial's
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    mlflow.set_tracking_uri(uris[0])
    mlflow.set_registry_uri(uris[1])
    install_signal_handlers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_optuna_interrupts()
    try:
        work(setup, deadline)
    except StockLabError as e:
        print(f"stocklab: error: worker {worker_id()}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)  # its trial's run is ended KILLED; the launcher reports


def run_workers(setup: StudySetup, deadline: float | None) -> None:
    """`n_jobs` worker processes on this machine, sharing its cores; failures tag the parent run."""
    n_jobs = setup.cfg.n_jobs
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // n_jobs)  # n workers x all cores would thrash
    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    procs = [
        ctx.Process(target=_worker_main, args=(setup, uris, threads, deadline), name=f"stocklab-tune-worker-{i}")
        for i in range(n_jobs)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:  # their signal handlers end their trials' runs KILLED
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(30)
        raise
    failed = [p for p in procs if p.exitcode != 0]
    if failed:
        mlflow.set_tag("stocklab.workers_failed", ", ".join(f"{p.name} exit {p.exitcode}" for p in failed))


# --- the study's one parent run ---


def wait_for_parent(study: optuna.Study, wait_s: float = PARENT_WAIT_S, poll_s: float = 0.2) -> str | None:
    """The parent run of a study this process did not create. A study without trials and
    without a parent is being set up by the worker that created it a moment ago (workers started
    together): wait for its parent rather than make a second one. After `wait_s` (a creator that
    died first, or a study made outside stocklab) this worker makes the parent itself."""
    deadline = time.monotonic() + wait_s
    said = False
    while (run_id := _existing_parent(study)) is None and not study.get_trials(deepcopy=False):
        if time.monotonic() >= deadline:
            print(f"study {study.study_name}: no parent run after {wait_s:g} s; this worker makes it")
            return None
        if not said:
            print(f"study {study.study_name}: waiting for the worker that created it to start its parent run")
            said = True
        time.sleep(poll_s)
    recorded = study.user_attrs.get(PARENT_ATTR)
    if run_id is None and recorded:  # carried on in this store: say so, naming both
        print(
            f"stocklab: warning: study {study.study_name}: its parent run {recorded} is not in this tracking store "
            f"({mask_secrets(mlflow.get_tracking_uri())}; the study recorded "
            f"{study.user_attrs.get(TRACKING_ATTR, 'another store')}): a new parent run here summarises its trials",
            file=sys.stderr,
        )
    return run_id


def _existing_parent(study: optuna.Study) -> str | None:
    """The study's parent run, if it exists in this tracking store."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id:
        return None
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None  # the study moved to another tracking store: start a new parent there
    return run_id


def hand_parent_to_other_workers(study: optuna.Study, run_id: str) -> None:
    """The study's parent run ends with its last worker. A worker that ends (done, failed or
    stopped) while trials of other workers still run has just ended the shared parent: set it
    back to RUNNING (MLflow cannot leave a run open for another process) so the UI does not show
    a finished study; the last worker to end ends it for good. Each worker's trials end before
    its run does, so a second look after the reopening closes the race with a worker that ended
    in between: it is then this worker that ends the run again."""
    try:
        others = trials_of_other_workers(study)
        if not others:
            return
        client = mlflow.MlflowClient()
        ended_as = client.get_run(run_id).info.status
        client.update_run(run_id, status="RUNNING")
        if not trials_of_other_workers(study):
            client.set_terminated(run_id, ended_as)  # they ended meanwhile: this is the last worker
            return
        print(
            f"study {study.study_name}: trial{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} "
            "of other workers still running; the last worker to end ends the parent run"
        )
    except Exception as e:  # noqa: BLE001 - the job's own outcome stands; say why the status may be early
        print(f"study {study.study_name}: could not check for other workers ({one_line(e, 200)})")
