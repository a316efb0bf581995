"""The `tune` job: an Optuna study in which every trial is a nested MLflow run.

    mlflow run . -e tune --env-manager local                          # lstm on the built-in sample
    mlflow run . -e tune --env-manager local -P model=cnn2d -P data=../shared/data/sp500_5yr -P n_trials=6
    mlflow run . -e tune --env-manager local -P n_jobs=4             # four worker processes, one study

`objective(trial)` samples a configuration from the model's search space (stocklab/spaces/), opens
a nested MLflow run, calls the same `pipeline.train_in_run` as the `train` job, and reports the
study's metric every epoch so the pruner can stop bad trials early; it ends the run FINISHED,
KILLED (pruned) or FAILED itself. Every `train` parameter (split, scaler, preset, ...) sets the
trials' base configuration; a parameter given explicitly is not searched.

The study lives in `storage` (default: an Optuna journal file, safe for several processes on one
machine; an RDB URL such as postgresql://... for several machines), so running the same
`study_name` again resumes it, and any number of workers (`-P n_jobs=N`, or the command started
N times, anywhere) share it:
  * `n_trials` is the study's total: a worker starts a trial only while fewer than `n_trials`
    trials are finished or running, however many workers there are;
  * each trial's sampler is seeded from (seed, trial number), so concurrent workers draw
    different configurations and a study's history is reproducible (TPE, constant liar);
  * a trial whose worker died (SIGKILL, a lost machine) is failed and retried with the same
    parameters: on an RDB storage through Optuna's heartbeat, on a journal file when its
    worker's process is gone; its MLflow run is ended KILLED;
  * one parent MLflow run per study, reused by every worker and every resume; of workers that
    start a new study together, the one whose call creates it makes the parent (claim_study).
A worker prepares the data once (pipeline.InputCache) and trials log metrics, loss curves and
weights only; the best trial then gets the full evaluation (model, plots, tear sheet) and is
registered as a new version of `stocklab-<model>`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import optuna
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import TrialState

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
from stocklab.errors import describe, mask_secrets, one_line
from stocklab.models import MODELS
from stocklab.pipeline import EpochInfo, InputCache, complete_run, has_model, train_in_run
from stocklab.spaces import load_space, suggest

# what each study metric reads from a finished trial's results (both are validation-only)
RESULT_KEY = {"valid_loss": "valid_loss_min", "valid_rank_ic": "valid_rank_ic"}
PARENT_ATTR = "mlflow_parent_run_id"  # study user attribute: the study's one parent run
FULL_EVALUATION_PARAM = "full_evaluation_by"  # the best trial run's param: the worker that completed it


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def make_storage(storage: str = DEFAULT_JOURNAL, heartbeat: int = 60):
    """An Optuna storage for a URL (RDB, with heartbeat and retry of stale trials) or a journal file."""
    if "://" in storage:
        engine_kwargs = {"pool_pre_ping": True}
        if storage.startswith(("postgresql", "mysql")):
            # an unreachable server fails in seconds, not after minutes of TCP retries
            engine_kwargs["connect_args"] = {"connect_timeout": 5}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(
                storage,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=retry_stale_trial,
            )
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # a journal file uses file locks, so several workers on one machine can share it (SQLite cannot)
    return JournalStorage(JournalFileBackend(storage))


def make_pruner(name: str, epochs: int):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


class TrialSeededSampler(BaseSampler):
    """TPE whose random draws for a trial come from (seed, trial number) alone.

    Trial numbers are handed out by the storage, unique across workers, so concurrent workers
    never repeat each other's draws (one shared seed made two workers train the same three
    configurations twice); and a study's configurations depend on its seed and history, not on
    which worker ran what. `constant_liar` lets TPE treat running trials as bad ones, so
    concurrent workers also steer away from each other's open trials.
    """

    def __init__(self, seed: int, multi_objective: bool = False):
        self.seed = seed
        self._multi = multi_objective
        self._by_trial: dict[int, TPESampler] = {}

    def _for(self, trial) -> TPESampler:
        key = trial._trial_id
        if key not in self._by_trial:
            seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._by_trial[key] = TPESampler(seed=seed, constant_liar=not self._multi)
        return self._by_trial[key]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial._trial_id, None)

    def reseed_rng(self) -> None:  # draws are a function of (seed, trial number) by design
        pass


# --- the study's budget: what counts towards n_trials ---


def budget_trials(trials: list) -> list:
    """The trials that count towards `n_trials`: all but failed ones that were retried (a dead
    worker's trial: its retry counts instead), interrupted ones (Ctrl-C, SIGTERM: a resume
    replaces them) and surplus ones (started in a race, never run)."""
    # RetryFailedTrialCallback records, in each retry, the numbers of the trials it replaces
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return [t for t in trials if not (t.state == TrialState.FAIL and (t.number in retried or _uncounted(t)))]


def _uncounted(trial) -> bool:
    return bool(trial.user_attrs.get("surplus") or trial.user_attrs.get("interrupted"))


def open_budget(study: optuna.Study, n_trials: int) -> bool:
    """True while the study needs more trials started: fewer than n_trials finished or running,
    or a retry waiting to be run."""
    trials = budget_trials(study.get_trials(deepcopy=False))
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
        if not owner.startswith(f"{host}:") or _alive(int(owner.rsplit(":", 1)[1])):
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- one trial ---


class _Surplus(Exception):
    """Started in a race after the budget was full: ended FAIL at once, not counted."""


def _objective(cfg: TuneConfig, model_overrides: dict, space: dict, parent_run_id: str, experiment_id: str):
    """objective(trial): sample a configuration, train it in a nested MLflow run, return the
    validation metric. The run ends FINISHED, KILLED (pruned) or FAILED (with the reason); a
    failure is returned as NaN (Optuna records FAIL) with one line, not a traceback."""
    base = cfg.train_config()
    objectives = TUNE_METRICS[cfg.metric]
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # the study's values of what is not searched (for `when` conditions on them)
    context = {**dataclasses.asdict(base), **dataclasses.asdict(MODELS[cfg.model][1]), **model_overrides}
    cache = InputCache()  # this worker's prepared inputs, reused across its trials
    nan = tuple(math.nan for _ in objectives) if len(objectives) > 1 else math.nan

    def objective(trial: optuna.Trial):
        trial.set_user_attr("worker", worker_id())
        earlier = [t for t in budget_trials(trial.study.get_trials(deepcopy=False)) if t.number < trial.number]
        if len([t for t in earlier if t.state != TrialState.WAITING]) >= cfg.n_trials:
            trial.set_user_attr("surplus", True)  # another worker took the last slot first
            return nan
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

        tags = {
            "stocklab.study": cfg.resolved_study_name(),
            "stocklab.trial": str(trial.number),
            "stocklab.role": "trial",
            "stocklab.worker": worker_id(),
        }
        shown = {**context, **params}
        name = tracking.run_name(cfg.model, shown, shown["seq_len"], shown["lr"], prefix=f"t{trial.number:03d}")
        run = mlflow.start_run(
            run_name=name,
            tags=tags,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            nested=mlflow.active_run() is not None,
        )
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        try:
            tcfg = with_values(base, {k: v for k, v in params.items() if k in train_fields})
            overrides = {**model_overrides, **{k: v for k, v in params.items() if k not in train_fields}}
            res = train_in_run(tcfg, overrides, on_epoch=report, full=cfg.trial_artifacts == "all", cache=cache)
        except optuna.TrialPruned as e:
            # KILLED and FAILED share the UI's red cross: the run name tells a pruned trial apart
            mlflow.set_tags(
                {
                    "stocklab.trial_state": "PRUNED",
                    "stocklab.pruned_reason": one_line(e),
                    "mlflow.runName": f"{name} [pruned]",
                }
            )
            mlflow.end_run("KILLED")
            raise
        except Exception as e:
            reason = describe(e)
            trial.set_user_attr("fail_reason", reason)
            mlflow.set_tags(
                {"stocklab.trial_state": "FAILED", "stocklab.fail_reason": reason, "mlflow.runName": f"{name} [failed]"}
            )
            mlflow.end_run("FAILED")
            return nan  # Optuna records FAIL; the reason is the trial's `fail_reason`
        except BaseException:  # KeyboardInterrupt, SystemExit (SIGTERM): the trial did not finish
            trial.set_user_attr("interrupted", True)
            mlflow.set_tag("stocklab.trial_state", "KILLED")
            mlflow.end_run("KILLED")
            raise
        mlflow.set_tag("stocklab.trial_state", "COMPLETE")
        mlflow.end_run("FINISHED")
        values = tuple(res[RESULT_KEY[o]] for o in objectives)
        return values if len(values) > 1 else values[0]

    return objective


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


# --- workers ---


STORAGE_ENV = "STOCKLAB_STORAGE"  # a storage URL kept out of -P values (MLflow logs those)


def resolve_storage(cfg: TuneConfig) -> str:
    """`storage`, else $STOCKLAB_STORAGE, else the default journal file."""
    return cfg.storage or os.environ.get(STORAGE_ENV, "") or DEFAULT_JOURNAL


def open_study(cfg: TuneConfig) -> optuna.Study:
    """Create or load the study; a storage that cannot be opened is one line naming it (password
    masked) and why, within seconds (`connect_timeout`), never a driver traceback."""
    return claim_study(cfg, claim=False)[0]


def claim_study(cfg: TuneConfig, claim: bool = True) -> tuple[optuna.Study, bool]:
    """(study, created): created is True for the one process whose call made the study.

    Creating a study is atomic in every Optuna storage (the journal's log order, the RDB's unique
    study name), so of several brand-new workers started at once exactly one creates it; that
    one makes the study's parent MLflow run and the others wait for it (`run_tune`)."""
    url = resolve_storage(cfg)
    try:
        storage = make_storage(url, cfg.heartbeat)
        kwargs = dict(
            study_name=cfg.resolved_study_name(),
            storage=storage,
            directions=[DIRECTIONS[o] for o in TUNE_METRICS[cfg.metric]],
            sampler=TrialSeededSampler(cfg.seed, multi_objective=len(TUNE_METRICS[cfg.metric]) > 1),
            pruner=make_pruner(cfg.pruner, cfg.epochs * cfg.folds),  # steps count epochs across folds
        )
        if claim:
            try:
                return optuna.create_study(**kwargs, load_if_exists=False), True
            except optuna.exceptions.DuplicatedStudyError:
                pass  # another process (or an earlier run) made it: load it below
        return optuna.create_study(**kwargs, load_if_exists=True), False
    except ImportError as e:  # Optuna re-raises the driver's ModuleNotFoundError as a bare ImportError
        scheme = url.split("://", 1)[0]
        driver = getattr(e, "name", None) or (scheme.split("+", 1)[1] if "+" in scheme else f"the {scheme} default")
        raise StockLabError(
            f"storage: {mask_secrets(url)} needs the database driver '{driver}', which is not installed "
            "(PostgreSQL: pip install 'psycopg[binary]' and a postgresql+psycopg:// URL)"
        ) from None
    except ValueError as e:  # e.g. the study exists with other directions
        raise StockLabError(f"study_name: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's OperationalError/ArgumentError, a bad journal path
        where = _host_port(url)
        raise StockLabError(f"storage: cannot open {mask_secrets(url)}{where}: {one_line(e, 300)}") from None


def _host_port(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f" (host {parts.hostname}, port {parts.port or 'default'})" if parts.hostname else ""
    except ValueError:
        return ""


def work(
    cfg: TuneConfig, model_overrides: dict, space: dict, parent_run_id: str, experiment_id: str, deadline=None
) -> int:
    """Run trials of the study until its budget is full or the wall-clock `deadline` (the
    invocation's `timeout`, shared by its workers) passes; returns the number of trials run."""
    study = open_study(cfg)
    objective = _objective(cfg, model_overrides, space, parent_run_id, experiment_id)
    ran = 0
    while deadline is None or time.time() < deadline:
        # before each trial: dead workers' trials are queued for a retry and the budget is re-read
        # from the storage (Optuna's heartbeat check runs inside optimize, on RDB storages)
        fail_dead_local_trials(study)
        if not open_budget(study, cfg.n_trials):
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[print_trial])
        ran += 1
    return ran


def _worker_main(cfg, model_overrides, space, parent_run_id, experiment_id, uris, threads, deadline) -> None:
    """A worker process of `-P n_jobs=N` (spawned: a fresh interpreter, no inherited CUDA state)."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # never resume the launcher's run as a trial's
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    mlflow.set_tracking_uri(uris[0])
    mlflow.set_registry_uri(uris[1])
    tracking.install_signal_handlers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        work(cfg, model_overrides, space, parent_run_id, experiment_id, deadline)
    except StockLabError as e:
        print(f"stocklab: error: worker {worker_id()}: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)  # its trial's run is ended KILLED; the launcher reports


def _run_workers(cfg: TuneConfig, model_overrides: dict, space: dict, parent_run_id: str, experiment_id: str, deadline):
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // cfg.n_jobs)  # n workers x all cores would thrash
    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(cfg, model_overrides, space, parent_run_id, experiment_id, uris, threads, deadline),
            name=f"stocklab-tune-worker-{i}",
        )
        for i in range(cfg.n_jobs)
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


def run_tune(cfg: TuneConfig, model_overrides: dict | None = None, fixed: set[str] | frozenset = frozenset()) -> dict:
    """Run (or resume, or join) the study. `model_overrides` fix model hyper-parameters for every
    trial; `fixed` names the parameters given explicitly, which are not searched."""
    cfg.validate()
    model_overrides = model_overrides or {}
    if cfg.model not in MODELS:
        raise StockLabError(f"model: unknown model '{cfg.model}' (choose from {', '.join(MODELS)})")
    space = load_space(cfg.model, MODELS[cfg.model][1], cfg.space, set(fixed) | set(model_overrides))
    study_name = cfg.resolved_study_name()
    study, created = claim_study(cfg)
    fail_dead_local_trials(study)
    trials = budget_trials(study.get_trials(deepcopy=False))
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
    experiment = cfg.experiment or f"stocklab-tune-{study_name}"  # one experiment per study
    tracking.install_signal_handlers()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # print_trial gives one line per trial
    parent_id = None if created else _wait_for_parent(study)
    joined: str | None = None  # the parent run this process ended, once it has one
    try:
        with tracking.job_run(
            experiment, bool(cfg.experiment), run_name=f"study {study_name}", run_id=parent_id
        ) as parent:
            joined = parent.info.run_id
            if parent_id is None:  # the study's creator: every later worker joins this run
                study.set_user_attr(PARENT_ATTR, parent.info.run_id)
            mlflow.set_tags({"stocklab.study": study_name, "stocklab.role": "study", "stocklab.model": cfg.model})
            view = _save_study_view(cfg, study_name, space, parent.info.experiment_id)
            params = {**dataclasses.asdict(cfg), **model_overrides, "study_name_resolved": study_name}
            params["storage"] = mask_secrets(cfg.storage)  # never a password in the tracking store
            params["storage_resolved"] = mask_secrets(resolve_storage(cfg))
            tracking.log_params_once(params)
            remaining = max(cfg.n_trials - len(trials), 0)
            print(
                f"study {study_name}: {done} finished trials, {remaining} to start (target {cfg.n_trials}), "
                f"{cfg.n_jobs} worker{'s' if cfg.n_jobs > 1 else ''}"
            )
            print(f"trials table in the MLflow UI: {tracking.ui_link(view)}")
            experiment_id = parent.info.experiment_id
            deadline = time.time() + cfg.timeout if cfg.timeout else None
            if cfg.n_jobs > 1:
                _run_workers(cfg, model_overrides, space, parent.info.run_id, experiment_id, deadline)
            # alone, this process is the worker; after N workers it runs what a worker killed last
            # left behind (a queued retry, an open slot), within the same deadline
            work(cfg, model_overrides, space, parent.info.run_id, experiment_id, deadline)
            busy = _trials_of_other_workers(study)  # looked at first: with none running, the best is final
            summary = _log_study(study, cfg)
            summary["parent_run_id"] = parent.info.run_id
            best_run = summary.get("best_run_id")
            if best_run and busy:
                # the best may still change: the last worker to end evaluates and registers it
                print(
                    "best trial's full evaluation and registration: left to the worker that ends "
                    f"last (trial{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} still running)"
                )
                best_run = None
            if best_run and not has_model(best_run):
                # workers ending together: exactly one claims the evaluation (a write-once param),
                # so the best model is logged and registered once
                holder = tracking.claim_run(best_run, FULL_EVALUATION_PARAM, worker_id())
                if holder is not None:
                    print(
                        f"best trial's full evaluation and registration: done by worker {holder} "
                        f"(should it have died: stocklab evaluate --run_id {best_run})"
                    )
                    best_run = None
            if best_run:
                # trials log weights only; the model a study picks gets its model, plots, tear sheet
                try:
                    complete_run(best_run, cfg.cache_dir)
                except Exception as e:  # noqa: BLE001 - never lose the study over the best run's extras
                    mlflow.MlflowClient().set_tag(best_run, "stocklab.complete_error", describe(e, 400))
                    print(f"best trial's full evaluation failed: {describe(e)}")
            if cfg.register and best_run:
                summary.update(register_best(study, cfg, best_run))
    finally:
        if joined is not None:
            _hand_parent_to_other_workers(study, joined)
    return summary


def _hand_parent_to_other_workers(study: optuna.Study, run_id: str) -> None:
    """The study's parent run ends with its last worker. A worker that ends (done, failed or
    stopped) while trials of other workers still run has just ended the shared parent: set it
    back to RUNNING (MLflow cannot leave a run open for another process) so the UI does not show
    a finished study; the last worker to end ends it for good. Each worker's trials end before
    its run does, so a second look after the reopening closes the race with a worker that ended
    in between: it is then this worker that ends the run again."""
    try:
        others = _trials_of_other_workers(study)
        if not others:
            return
        client = mlflow.MlflowClient()
        ended_as = client.get_run(run_id).info.status
        client.update_run(run_id, status="RUNNING")
        if not _trials_of_other_workers(study):
            client.set_terminated(run_id, ended_as)  # they ended meanwhile: this is the last worker
            return
        print(
            f"study {study.study_name}: trial{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} "
            "of other workers still running; the last worker to end ends the parent run"
        )
    except Exception as e:  # noqa: BLE001 - the job's own outcome stands; say why the status may be early
        print(f"study {study.study_name}: could not check for other workers ({one_line(e, 200)})")


def _trials_of_other_workers(study: optuna.Study) -> list[int]:
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
        if owner == me or (owner.startswith(f"{host}:") and not _alive(int(owner.rsplit(":", 1)[1]))):
            continue
        numbers.append(t.number)
    return numbers


STUDY_VIEW_METRICS = ("test_mse", "rank_ic", "spread_q5_q1", "best_epoch", "train_time_s")


def _save_study_view(cfg: TuneConfig, study_name: str, space: dict, experiment_id: str) -> str:
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


PARENT_WAIT_S = 30.0  # how long a joining worker waits for the study's creator to make its parent


def _wait_for_parent(study: optuna.Study, wait_s: float = PARENT_WAIT_S, poll_s: float = 0.2) -> str | None:
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


def best_trial(study: optuna.Study, cfg: TuneConfig) -> optuna.trial.FrozenTrial | None:
    """The trial whose model is registered: the best one, or for `metric=both` the trial of
    the Pareto front (valid loss vs valid rank IC) with the best validation rank IC."""
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
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
