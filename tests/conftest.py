"""Shared fixtures: synthetic OHLCV panels written in the supported file formats, an isolated
MLflow tracking store per test, the CLI's one-line errors, and a stand-in for the run that
`mlflow run` opens before its job starts.

Markers say what a test costs (pyproject.toml): tests marked `e2e`, `shared` or `postgres` are
`slow` too (added here), so `-m "not slow"` is the inner-loop tier."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# pytest-xdist runs the suite in worker processes, one per core: one intra-op thread each (and
# for every job a test starts), or the workers' OpenMP pools oversubscribe the cores. Set before
# numpy and torch size their pools.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def mlflow_run(entry: str, params: dict, tracking_uri: str, cwd: Path, *args: str):
    """`mlflow run <checkout> -e <entry> --env-manager local -P k=v ...` as a user types it; the
    entry point's `python` is this interpreter's (its folder first on PATH)."""
    cmd = [MLFLOW, "run", str(ROOT), "-e", entry, "--env-manager", "local", *args]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


SHARED_DATA = ROOT.parent / "shared" / "data" / "sp500_5yr"


def synthetic_bars(n_tickers: int = 6, n_days: int = 300, seed: int = 0, signal: float = 0.0) -> pd.DataFrame:
    """Long OHLCV frame of geometric random walks on business days.

    With `signal` > 0 the next day's return is `signal` times today's return plus noise, so a
    window that ends today predicts tomorrow (a learnable, planted effect).
    """
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-01", periods=n_days)
    frames = []
    for i in range(n_tickers):
        eps = rng.normal(0, 0.01, n_days)
        r = np.zeros(n_days)
        for d in range(1, n_days):
            r[d] = signal * r[d - 1] + eps[d]
        close = 50 * (1 + i) * np.exp(np.cumsum(r))
        spread = np.abs(rng.normal(0, 0.005, n_days)) * close
        open_ = close * np.exp(rng.normal(0, 0.003, n_days))
        high = np.maximum(open_, close) + spread
        low = np.minimum(open_, close) - spread
        vol = rng.integers(1_000, 100_000, n_days)
        frames.append(
            pd.DataFrame(
                {
                    "date": dates.strftime("%Y-%m-%d"),
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": vol,
                    "Name": f"T{i:02d}",
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_ticker_csvs(df: pd.DataFrame, folder: Path, style: str = "data") -> Path:
    """One CSV per ticker: style 'data' -> T00_data.csv (date, Name columns);
    style 'us' -> T00.US_D1.csv (datetime column, ticker only in the file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, g in df.groupby("Name"):
        if style == "data":
            g.to_csv(folder / f"{name}_data.csv", index=False)
        else:
            g.drop(columns="Name").rename(columns={"date": "datetime"}).to_csv(
                folder / f"{name}.US_D1.csv", index=False
            )
    return folder


def assert_metrics_say_their_split(run) -> None:
    """Every metric of a train, trial or evaluate run names what it measures in its prefix
    (tracking.METRIC_SPLITS): `metrics.test_rank_ic` never mixes splits."""
    from stocklab.tracking import metric_split

    unnamed = sorted(k for k in run.data.metrics if metric_split(k) is None)
    assert run.data.metrics and not unnamed, f"{run.info.run_name}: {unnamed}"


# the longest files first: each goes whole to one worker (`--dist loadfile`), and one handed out
# last would keep its worker busy long after the other ran out of files
LONGEST_FIRST = ("test_learnability.py", "test_tune.py", "test_scale_out.py", "test_e2e.py", "test_tune_workers.py",
                 "test_models.py", "test_reliability.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(m) for m in ("e2e", "shared", "postgres")):
            item.add_marker(pytest.mark.slow)
    first = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a file's own order is kept


def long_bars(df: pd.DataFrame) -> pd.DataFrame:
    """`synthetic_bars` as the long frame `build_panel` reads (ticker column, datetime dates)."""
    out = df.rename(columns={"Name": "ticker"})
    out["date"] = out["date"].astype("datetime64[ns]")
    return out


def scramble_prices_after(df: pd.DataFrame, date) -> pd.Series:
    """Multiply every price of `df` (a long_bars frame) after `date` by a random factor in
    place, keeping high/low the bar's extremes; returns which rows changed (the leak tests)."""
    later = df["date"] > date
    rng = np.random.default_rng(1)
    for col in ("open", "high", "low", "close"):
        df.loc[later, col] *= rng.uniform(0.5, 2.0, later.sum())
    df.loc[later, "high"] = df.loc[later, ["open", "high", "low", "close"]].max(axis=1)
    df.loc[later, "low"] = df.loc[later, ["open", "high", "low", "close"]].min(axis=1)
    return later


# what a job writes into its working directory by default: no test may leave it in the checkout
JOB_STATE = ("mlruns", "mlflow.db", ".stocklab_cache", "optuna-journal.log", "predictions.csv")


@pytest.fixture(autouse=True)
def _checkout_stays_clean():
    before = {name for name in JOB_STATE if (ROOT / name).exists()}
    yield
    left = sorted(name for name in JOB_STATE if (ROOT / name).exists() and name not in before)
    assert not left, f"the test wrote {left} into the checkout {ROOT} (work in tmp_path)"


@pytest.fixture
def bars() -> pd.DataFrame:
    return synthetic_bars()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> str:
    """One parsed-panel cache for every test on ../shared/data: its 405 files are parsed once
    per session, not once per test (what a cache hit returns is data.py's own test)."""
    return str(tmp_path_factory.mktemp("panel-cache"))


@pytest.fixture
def csv_dir(tmp_path, bars) -> Path:
    return write_ticker_csvs(bars, tmp_path / "csvs")


def cli_error(capsys, argv: list[str], code: int = 2) -> str:
    """Run `stocklab <argv>` in-process; it must exit `code` with exactly one error line and no
    traceback. Returns that line."""
    from stocklab.cli import main

    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("stocklab: error:")]
    assert len(lines) == 1, err
    return lines[0]


def launched(job: str, params: dict, monkeypatch, experiment: str | None = None) -> tuple[int, str]:
    """`mlflow run . -e <job> -P k=v ... [--experiment-name X]` in-process: what MLflow does
    around its job (a run in X, else "Default", holding every -P value as a param, shell-quoted
    as MLflow puts it in the command; MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID set for the job;
    that run ended FINISHED or FAILED once the job exits), with the job as `stocklab <job>`.
    Returns (exit code, the launcher run's id). The real `mlflow run` is exercised once per
    entry point in test_e2e.py and test_tune.py."""
    import shlex

    import mlflow

    from stocklab.cli import main

    client = mlflow.MlflowClient()
    exp_id = "0"  # MLflow's "Default"
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id)
    for k, v in params.items():
        client.log_param(run.info.run_id, k, shlex.quote(str(v)))
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp_id)
    code = main([job, *(x for k, v in params.items() for x in (f"--{k}", str(v)))])
    client.set_terminated(run.info.run_id, "FINISHED" if code == 0 else "FAILED")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return code, run.info.run_id


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, created once per session: a new store runs MLflow's schema
    migrations (~2.4 s on the 2-core machine), a copy of a migrated one opens in ~0.04 s."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def private_store(folder: Path, migrated_store: Path) -> str:
    """The URI of a private sqlite tracking store in `folder`: a copy of the migrated empty store
    whose Default experiment stores its artifacts under `folder`, as a store created there would."""
    import sqlite3

    db = folder / "mlflow.db"
    shutil.copyfile(migrated_store, db)
    with sqlite3.connect(db) as con:
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns" / "0"),)
        )
    con.close()
    return f"sqlite:///{db}"


def as_current_store(run, monkeypatch):
    """For a fixture over a module-scoped run held in its own store (`run.uri`):
    `yield from as_current_store(run, monkeypatch)` makes that store the current one for a test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", run.uri)
    mlflow.set_tracking_uri(run.uri)
    yield run
    mlflow.set_tracking_uri(None)


@pytest.fixture
def tracking(tmp_path, monkeypatch, migrated_store) -> str:
    """A private tracking store (and artifact root) per test, the current one, in the test's folder."""
    import mlflow

    uri = private_store(tmp_path, migrated_store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
