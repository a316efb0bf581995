"""Several workers on one study, the study-total budget, per-trial seeding, killed workers and
the input cache: real processes, a real journal storage and a real MLflow store."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings

import mlflow
import optuna
import pytest
from conftest import ROOT, synthetic_bars, write_ticker_csvs
from optuna.trial import TrialState

from stocklab.config import TrainConfig, TuneConfig
from stocklab.jobs.tune import run_tune
from stocklab.pipeline.inputs import InputCache, folds_of
from stocklab.study.budget import budget_trials, fail_dead_local_trials, open_budget, trials_of_other_workers
from stocklab.study.storage import TrialSeededSampler, claim_study, make_storage
from stocklab.study.workers import PARENT_ATTR, wait_for_parent
from stocklab.tracking import claim_run

SPACE = """
hidden_size: {type: int, low: 4, high: 16}
lr: {type: float, low: 1.0e-4, high: 2.0e-2, log: true}
dropout: {type: float, low: 0.0, high: 0.3}
"""


def _tune_cfg(tmp_path, data, **kw) -> TuneConfig:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    values = dict(
        data=str(data),
        study_name="w",
        storage=str(tmp_path / "study.log"),
        space=str(space),
        epochs=1,
        horizon=1,
        seq_len=5,
        features="returns",
        batch_size=64,
        register=False,
        tear_sheet=False,  # the best trial's tear sheet: test_tune.py
        metric="valid_loss",  # lower is better: the tests' hand-told values read as losses
    )
    return TuneConfig(**{**values, **kw})


def _runs(experiment: str):
    exp = mlflow.get_experiment_by_name(experiment)
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


@pytest.fixture
def small_data(tmp_path):
    return write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=260), tmp_path / "csvs")


@pytest.mark.slow
def test_two_workers_run_exactly_n_trials_with_distinct_configurations(tmp_path, tracking, small_data):
    # registration and the tear sheet of the best trial: test_tune.py and the last-worker case below
    # trials long enough (6 epochs, patience 6) that the second worker, which starts a few
    # seconds after the first (imports), still finds trials to run
    cfg = _tune_cfg(tmp_path, small_data, n_trials=4, n_jobs=2, pruner="none", epochs=6, patience=6)
    summary = run_tune(cfg)

    study = optuna.load_study(study_name="w", storage=make_storage(cfg.storage))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    counted = budget_trials(study.trials)
    assert len(finished) == 4 and len(counted) == 4, [(t.number, t.state) for t in study.trials]
    assert sorted(t.number for t in counted) == [0, 1, 2, 3]
    configs = {tuple(sorted(t.params.items())) for t in finished}
    assert len(configs) == 4  # no configuration trained twice
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both workers ran trials

    runs = _runs("stocklab-tune-w")
    parents = [r for r in runs if r.data.tags.get("stocklab.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("stocklab.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    # trials log weights only; the best one got the model afterwards
    best = summary["best_run_id"]
    client = mlflow.MlflowClient()
    for r in trials:
        assert client.list_artifacts(r.info.run_id, "model_state")
        if r.info.run_id != best:
            assert "stocklab.model_uri" not in r.data.tags
    assert "stocklab.model_uri" in client.get_run(best).data.tags

    # run again with the same target: nothing to do, the same parent run is reused
    again = run_tune(cfg)
    assert again["parent_run_id"] == parents[0].info.run_id
    assert len(optuna.load_study(study_name="w", storage=make_storage(cfg.storage)).trials) == len(study.trials)


@pytest.mark.slow
def test_workers_started_together_make_one_parent_run(tmp_path, tracking, small_data):
    """Of two workers starting a new study at once, exactly one creates it (atomic in the
    storage) and makes the parent run; the other waits for that run instead of making its own."""
    cfg = _tune_cfg(tmp_path, small_data, n_trials=1, pruner="none")
    creator, created = claim_study(cfg)
    assert created
    _, created_again = claim_study(cfg)
    assert not created_again  # the second process to arrive loads it

    # the creator is still starting its parent run when the second worker's run_tune begins
    # (a client, not mlflow.set_experiment: that exports MLFLOW_EXPERIMENT_ID to later tests)
    client = mlflow.MlflowClient()
    creators = client.create_run(client.create_experiment("stocklab-tune-w"), run_name="study w")
    client.set_terminated(creators.info.run_id)
    timer = threading.Timer(1.5, creator.set_user_attr, (PARENT_ATTR, creators.info.run_id))
    timer.start()
    summary = run_tune(cfg)
    timer.join()

    assert summary["parent_run_id"] == creators.info.run_id
    runs = _runs("stocklab-tune-w")
    tops = [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert tops == [creators.info.run_id]
    trials = [r for r in runs if r.data.tags.get("stocklab.role") == "trial"]
    assert len(trials) == 1 and trials[0].data.tags["mlflow.parentRunId"] == creators.info.run_id


@pytest.mark.slow
def test_the_last_worker_to_end_ends_the_parent_and_completes_the_best_trial(tmp_path, tracking, small_data):
    """Workers started separately share the parent run: one that ends while another's trial
    runs leaves the parent RUNNING and the best trial's full evaluation and registration to the
    last one, so the best model is logged and registered once."""
    cfg = _tune_cfg(tmp_path, small_data, n_trials=2, pruner="none", register=True)
    study, _ = claim_study(cfg)
    other = study.ask()  # a trial of a worker on another machine, still running
    other.set_user_attr("worker", "another-host:4242")

    first = run_tune(cfg)  # runs the one open trial, ends while the other worker's runs
    client = mlflow.MlflowClient()
    assert client.get_run(first["parent_run_id"]).info.status == "RUNNING"
    best = first["best_run_id"]
    assert "stocklab.model_uri" not in client.get_run(best).data.tags and "registered_version" not in first

    study.tell(other, 1.0)  # the other worker's trial ends (worse); the next worker to end is last
    second = run_tune(cfg)
    assert second["parent_run_id"] == first["parent_run_id"] and second["best_run_id"] == best
    assert client.get_run(first["parent_run_id"]).info.status == "FINISHED"
    assert "stocklab.model_uri" in client.get_run(best).data.tags
    assert int(second["registered_version"]) == 1
    experiment = client.get_run(best).info.experiment_id
    assert len(mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")) == 1


def test_a_run_claim_goes_to_exactly_one_of_several_processes(tracking):
    from concurrent.futures import ThreadPoolExecutor

    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("claims")).info.run_id
    owners = [f"host:{i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:  # at once, each with its own owner
        holders = list(pool.map(lambda o: claim_run(run, "full_evaluation_by", o), owners))
    winners = [o for o, h in zip(owners, holders) if h is None]
    assert len(winners) == 1
    assert all(h == winners[0] for h in holders if h is not None)
    assert client.get_run(run).data.params["full_evaluation_by"] == winners[0]
    assert claim_run(run, "full_evaluation_by", winners[0]) is None  # the holder may claim again


@pytest.mark.slow
def test_a_worker_that_loses_the_claim_leaves_the_best_trial_to_its_holder(tmp_path, tracking, small_data, monkeypatch):
    import stocklab.study.report as report

    real = report.tracking.claim_run

    def another_worker_first(run_id, key, owner):
        assert real(run_id, key, "another-host:7") is None  # a worker ending at the same moment
        return real(run_id, key, owner)

    monkeypatch.setattr(report.tracking, "claim_run", another_worker_first)
    summary = run_tune(_tune_cfg(tmp_path, small_data, n_trials=1, pruner="none", register=True))
    best = mlflow.MlflowClient().get_run(summary["best_run_id"])
    assert best.data.params["full_evaluation_by"] == "another-host:7"
    assert "stocklab.model_uri" not in best.data.tags and "registered_version" not in summary


def test_a_dead_workers_trial_does_not_hold_back_the_best_trials_evaluation(tmp_path):
    # on an RDB storage another machine's worker counts as live until its heartbeat stops;
    # once stopped its trial must not count, or no worker would evaluate the best trial
    study = optuna.create_study(study_name="hb", storage=make_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=1))
    with warnings.catch_warnings():  # Optuna: heartbeat is meant for Study.optimize (this stands in for one)
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    trial.set_user_attr("worker", "another-host:7")
    study._storage.record_heartbeat(trial._trial_id)
    assert trials_of_other_workers(study) == [trial.number]  # beating: a live worker's trial
    # the worker stopped beating a minute ago (well past the grace period of 2 heartbeats):
    # backdated in the store rather than slept for, SQLite's timestamps having whole seconds
    with sqlite3.connect(tmp_path / "s.db") as con:
        con.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-60 seconds')")
    con.close()
    assert trials_of_other_workers(study) == []
    assert study.get_trials(deepcopy=False)[trial.number].state == TrialState.FAIL


def test_a_joining_worker_stops_waiting_for_a_creator_that_never_made_a_parent(tmp_path):
    study = optuna.create_study(study_name="orphan", storage=make_storage(str(tmp_path / "j.log")))
    start = time.monotonic()
    assert wait_for_parent(study, wait_s=0.5, poll_s=0.05) is None
    assert 0.5 <= time.monotonic() - start < 5


def test_budget_counts_running_and_waiting_but_not_retried_surplus_or_interrupted(tmp_path):
    study = optuna.create_study(storage=make_storage(str(tmp_path / "j.log")))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state, **attrs):
        value = 1.0 if state == TrialState.COMPLETE else None
        study.add_trial(
            optuna.create_trial(state=state, params={"x": 0.5}, distributions=dist, user_attrs=attrs, value=value)
        )

    add(TrialState.COMPLETE)
    add(TrialState.FAIL)  # a real failure: counts only with count_failed
    add(TrialState.FAIL, surplus=True)
    add(TrialState.FAIL, interrupted=True)
    add(TrialState.FAIL)  # #4: its worker died; retried as #5
    retry = optuna.create_trial(
        state=TrialState.WAITING,
        params={"x": 0.5},
        distributions=dist,
        system_attrs={"failed_trial": 4, "retry_history": [4]},
    )
    study.add_trial(retry)
    assert [t.number for t in budget_trials(study.trials, count_failed=True)] == [0, 1, 5]
    assert [t.number for t in budget_trials(study.trials)] == [0, 5]  # the default: no failure counts
    assert open_budget(study, 2, count_failed=True)  # a waiting retry is always run
    assert open_budget(study, 3, count_failed=True)
    study2 = optuna.create_study(storage=make_storage(str(tmp_path / "j2.log")))
    for t in budget_trials(study.trials, count_failed=True)[:2]:
        study2.add_trial(t)
    assert not open_budget(study2, 2, count_failed=True) and open_budget(study2, 3, count_failed=True)


def test_per_trial_seeding_gives_distinct_draws_and_is_reproducible():
    def draws(seed, n):
        study = optuna.create_study(sampler=TrialSeededSampler(seed))
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append((trial.suggest_float("x", 0, 1), trial.suggest_int("k", 0, 10**6)))
            study.tell(trial, out[-1][0])
        return out

    a, b = draws(0, 12), draws(0, 12)
    assert a == b  # same seed, same history -> same configurations (TPE after 10 startup trials too)
    assert len(set(a)) == 12
    assert draws(1, 3) != a[:3]


def test_input_cache_prepares_once_per_data_recipe(csv_dir):
    cache = InputCache()
    cfg = TrainConfig(data=str(csv_dir), features="returns", horizon=1, seq_len=5, device="cpu", cache_dir="")
    first = cache.inputs(cfg)
    assert cache.inputs(TrainConfig(**{**cfg.__dict__, "lr": 0.1, "batch_size": 7})) is first
    assert cache.loads == 1 and cache.hits == 1
    fold = folds_of(cfg, len(first.panel.dates))[0]
    w1 = cache.windows(cfg, "cpu", fold)
    assert cache.windows(TrainConfig(**{**cfg.__dict__, "lr": 0.5}), "cpu", fold) is w1
    assert first.panel.X[0] is not w1.panel.X[0]  # the cached raw panel is never scaled in place
    cache.inputs(TrainConfig(**{**cfg.__dict__, "seq_len": 8}))
    assert cache.loads == 2


def test_input_cache_keeps_at_most_max_entries_least_recently_used_out(csv_dir):
    cache = InputCache(max_entries=2)
    cfg = TrainConfig(data=str(csv_dir), features="returns", horizon=1, seq_len=5, device="cpu", cache_dir="")
    recipes = [TrainConfig(**{**cfg.__dict__, "seq_len": k}) for k in (5, 6, 7)]
    first = cache.inputs(recipes[0])
    cache.inputs(recipes[1])
    cache.inputs(recipes[0])  # used again: now the most recent
    cache.inputs(recipes[2])  # a third recipe: the least recently used (6) goes
    assert cache.loads == 3 and cache.inputs(recipes[0]) is first and cache.loads == 3
    cache.inputs(recipes[1])
    assert cache.loads == 4  # 6 was evicted, so it is loaded again
    assert len(cache._inputs) == 2


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_dead_local_workers_trial_is_failed_killed_and_queued_with_its_params(tmp_path, tracking):
    """A journal file has no heartbeat: a RUNNING trial whose worker process on this machine is
    gone (what SIGKILL leaves) is failed, its MLflow run ended KILLED, and a retry with the same
    parameters queued (the retry running to completion under another worker after a real
    SIGKILL: test_scale_out.py)."""
    import socket

    study = optuna.create_study(study_name="w", storage=make_storage(str(tmp_path / "j.log")))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    run = mlflow.MlflowClient().create_run(mlflow.MlflowClient().create_experiment("e")).info.run_id
    trial.set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")
    trial.set_user_attr("mlflow_run_id", run)
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # this live process

    assert fail_dead_local_trials(study) == 1
    by_number = {t.number: t for t in study.trials}
    assert by_number[trial.number].state == TrialState.FAIL and by_number[alive.number].state == TrialState.RUNNING
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].params == by_number[trial.number].params
    assert mlflow.get_run(run).info.status == "KILLED"
    assert fail_dead_local_trials(study) == 0  # once only


@pytest.mark.e2e
def test_sigterm_to_mlflow_run_reaches_the_job_and_ends_every_run_killed(tmp_path, tracking):
    # `timeout 150 mlflow run ...` signals only the mlflow CLI, which dies at once: the job
    # (its child) gets SIGTERM from the kernel when its parent dies (PR_SET_PDEATHSIG). The one
    # SIGTERM test through a process: a second SIGTERM during cleanup is test_reliability.py's.
    import psutil

    data = write_ticker_csvs(synthetic_bars(n_tickers=10, n_days=500), tmp_path / "csvs")
    cmd = [shutil.which("mlflow") or "mlflow", "run", str(ROOT), "-e", "train", "--env-manager", "local"]
    # patience = epochs: the job is still training when the signal comes, whatever the load
    for k, v in {"data": data, "epochs": 200, "patience": 200, "horizon": 1, "seq_len": 20}.items():
        cmd += ["-P", f"{k}={v}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "mlflow-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)

    def training():
        if proc.poll() is not None:  # ended before training: say why, not "timed out"
            raise AssertionError(f"mlflow run exited {proc.returncode} early:\n{log.read_text()[-3000:]}")
        return any("train_loss" in r.data.metrics for r in _runs("stocklab-train"))

    try:
        _wait_for(training, 300, "the first epoch", poll=2.0)
        job_procs = psutil.Process(proc.pid).children(recursive=True)  # the job (and a shell, if any)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log.read_text()[-3000:]}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    # wait for the job's own exit (however loaded the machine), then read its run once
    _, alive = psutil.wait_procs(job_procs, timeout=300)
    assert not alive, f"the job outlived SIGTERM to mlflow run by 300 s: {alive}\n{log.read_text()[-3000:]}"
    (job,) = _runs("stocklab-train")
    assert job.info.status == "KILLED", log.read_text()[-3000:]
    text = log.read_text()  # the job stops like Ctrl-C: its runs ended, one line, no traceback
    assert "received signal 15" in text and f"run {job.info.run_id} ended KILLED" in text
    assert "Traceback" not in text
    launcher = mlflow.get_run(job.data.tags["stocklab.launcher_run_id"])
    assert launcher.info.status == "KILLED"
