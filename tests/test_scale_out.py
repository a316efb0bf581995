"""Scale-out against real servers: a PostgreSQL cluster (the Optuna study and MLflow's backend
store) and an `mlflow server` serving artifacts, started by stocklab.stack as a user would.
Skipped only where the PostgreSQL server binaries are not installed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import ROOT, synthetic_bars, write_ticker_csvs
from optuna.trial import TrialState

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        shutil.which("pg_ctl") is None or shutil.which("initdb") is None,
        reason="PostgreSQL server binaries (pg_ctl, initdb) are not installed on this machine",
    ),
]

SPACE = """
hidden_size: {type: int, low: 4, high: 16}
lr: {type: float, low: 1.0e-4, high: 2.0e-2, log: true}
dropout: {type: float, low: 0.0, high: 0.3}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack():
    from stocklab.stack import start, stop

    folder = tempfile.mkdtemp(prefix="stocklab-stack-", dir="/tmp")  # the postgres user must reach it
    s = start(folder, _free_port(), _free_port())
    try:
        yield s
    finally:
        stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _password(stack) -> str:
    return stack.pgpass.read_text().strip().rsplit(":", 1)[1]


def _env(stack) -> dict:
    return {**os.environ, **stack.env(), "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _tune(stack, tmp_path, data, study, *extra) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return [
        sys.executable, "-m", "stocklab.cli", "tune", "--data", str(data), "--study_name", study,
        "--space", str(space), "--epochs", "1", "--horizon", "1", "--seq_len", "5", "--features", "returns",
        "--batch_size", "64", "--pruner", "none", "--tear_sheet", "false", *extra,
    ]  # fmt: skip


def _study(stack, name, monkeypatch):
    monkeypatch.setenv("PGPASSFILE", str(stack.pgpass))
    from stocklab.study.storage import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(stack.db_url("optuna")))


def test_four_workers_share_one_postgres_study_and_one_tracking_server(stack, tmp_path, monkeypatch):
    data = write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=260), tmp_path / "csvs")
    password = _password(stack)
    # the worst case: the password inside the storage URL given on the command line
    url = stack.db_url("optuna").replace("stocklab@", f"stocklab:{password}@")
    cmd = _tune(stack, tmp_path, data, "so", "--n_jobs", "4", "--n_trials", "4", "--storage", url)
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(stack), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert password not in done.stdout + done.stderr

    study = _study(stack, "so", monkeypatch)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    others = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in study.trials if t not in finished]
    assert sorted(t.number for t in finished) == list(range(4)), others
    assert len({t.user_attrs["worker"] for t in finished}) >= 2  # the workers shared the work

    client = mlflow.MlflowClient(tracking_uri=stack.tracking_uri)  # through the REST API
    exp = client.get_experiment_by_name("stocklab-tune-so")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stocklab.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("stocklab.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["stocklab.trial"]) for r in trials) == list(range(4))
    assert not [r for r in runs if r.info.status == "RUNNING"]
    versions = client.search_model_versions("name='stocklab-lstm'")
    assert len(versions) == 1  # the best model, registered once

    # the password is in no param or tag of any run, nor in any file the project or server wrote
    every = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    for r in every:
        for value in [*r.data.params.values(), *r.data.tags.values()]:
            assert password not in str(value), r.info.run_id
    assert parents[0].data.params["storage"].startswith("postgresql+psycopg://stocklab:***@")
    for folder in (tmp_path, Path(stack.dir) / "artifacts"):
        for path in folder.rglob("*"):
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path


def test_a_sigkilled_worker_trial_is_retried_by_another_worker(stack, tmp_path, monkeypatch):
    data = write_ticker_csvs(synthetic_bars(n_tickers=20, n_days=600), tmp_path / "csvs")
    cmd = _tune(stack, tmp_path, data, "kill", "--n_jobs", "2", "--n_trials", "3", "--heartbeat", "2")
    cmd += ["--register", "false"]
    cmd[cmd.index("--epochs") + 1] = "6"
    cmd[cmd.index("--seq_len") + 1] = "30"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(stack), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    monkeypatch.setenv("PGPASSFILE", str(stack.pgpass))
    victim = None
    end = time.monotonic() + 300
    while victim is None and time.monotonic() < end:
        try:
            study = _study(stack, "kill", monkeypatch)
            running = [t for t in study.trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if running:
                victim = running[0]
        except KeyError:  # the study does not exist yet
            pass
        time.sleep(0.5)
    assert victim is not None, "no trial started"
    time.sleep(1)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]

    study = _study(stack, "kill", monkeypatch)
    dead = next(t for t in study.trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == dead.params
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 3
    client = mlflow.MlflowClient(tracking_uri=stack.tracking_uri)
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    exp = client.get_experiment_by_name("stocklab-tune-kill")
    assert not [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"]
