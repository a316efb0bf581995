"""Hostile input: every case ends in one line naming the file or parameter, a non-zero exit,
no traceback, and no password anywhere it is printed."""

from __future__ import annotations

import gzip
import re
import shutil
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import cli_error, synthetic_bars, write_ticker_csvs

from stocklab.cli import main
from stocklab.config import StockLabError, TrainConfig, TuneConfig
from stocklab.data import load_panel
from stocklab.errors import mask_secrets, one_line
from stocklab.models import MODELS, build_model, model_config
from stocklab.spaces import load_space
from stocklab.study.storage import claim_study


def _train(data, *extra):
    return [
        "train",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--horizon",
        "1",
        "--seq_len",
        "5",
        "--tear_sheet",
        "false",
        *extra,
    ]


def test_truncated_gzip_and_corrupt_parquet_name_the_file(tmp_path, tracking, capsys):
    folder = write_ticker_csvs(synthetic_bars(n_tickers=3, n_days=120), tmp_path / "gz")
    raw = (folder / "T00_data.csv").read_bytes()
    (folder / "T00_data.csv").unlink()
    (folder / "T00_data.csv.gz").write_bytes(gzip.compress(raw)[:-40])  # cut before the end marker
    line = cli_error(capsys, _train(folder))
    assert "T00_data.csv.gz" in line and "cannot be read" in line

    bad = tmp_path / "bars.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    line = cli_error(capsys, _train(bad))
    assert "bars.parquet" in line and "cannot be read" in line


def test_a_folder_with_two_sources_for_one_ticker_is_an_error_naming_both(tmp_path, tracking, capsys):
    bars = synthetic_bars(n_tickers=3, n_days=120)
    folder = write_ticker_csvs(bars, tmp_path / "mixed")
    long = bars[bars["Name"] == "T01"].drop(columns=["open", "high", "low"])
    long.assign(close=long["close"] * 100).to_csv(folder / "all_stocks.csv", index=False)
    line = cli_error(capsys, _train(folder))
    assert "'T01'" in line and "T01_data.csv" in line and "all_stocks.csv" in line


def test_close_only_fallback_is_announced(tmp_path, tracking, capsys):
    bars = synthetic_bars(n_tickers=3, n_days=120)
    folder = write_ticker_csvs(bars, tmp_path / "cols")
    g = bars[bars["Name"] == "T02"][["date", "close"]]
    g.to_csv(folder / "T02_data.csv", index=False)
    raw, report = load_panel(str(folder), "")
    err = capsys.readouterr().err
    assert "open, high, low, volume missing from 1 file(s) (e.g. 'T02_data.csv')" in err
    assert list(raw.columns) == ["date", "ticker", "close"] and report.repaired["columns_not_in_every_file"] == 4


def test_no_valid_rows_says_why(tmp_path, tracking, capsys):
    bars = synthetic_bars(n_tickers=2, n_days=60)
    bars["close"] = -1.0
    folder = write_ticker_csvs(bars, tmp_path / "neg")
    line = cli_error(capsys, _train(folder))
    assert "no valid rows after cleaning" in line and "nonpositive_price: 120" in line
    bars["close"] = "n/a"
    folder = write_ticker_csvs(bars, tmp_path / "text")
    line = cli_error(capsys, _train(folder))
    assert "missing_price: 120" in line and "positive numbers" in line


def test_a_diverging_train_is_one_line_and_its_run_ends_failed(tmp_path, tracking, capsys):
    data = write_ticker_csvs(synthetic_bars(n_tickers=3, n_days=200), tmp_path / "csvs")
    line = cli_error(capsys, _train(data, "--lr", "1e20", "--model", "linear", "--recipe", "raw"))
    assert line.startswith("stocklab: error: lr: training diverged at epoch 1 with lr=1e+20")
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["stocklab.error"]


def test_the_cached_panel_reports_this_runs_source(tmp_path):
    a = write_ticker_csvs(synthetic_bars(n_tickers=2, n_days=60), tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    cache = tmp_path / "cache"
    _, first = load_panel(str(a), str(cache))
    _, second = load_panel(str(b), str(cache))  # same bytes: served from the cache
    assert first.fingerprint == second.fingerprint
    assert first.source == str(a.resolve()) and second.source == str(b.resolve())


@pytest.mark.parametrize(
    "url, expect",
    [
        ("postgresql+psycopg://bob:s3cret-pw@127.0.0.1:1/optuna", "(host 127.0.0.1, port 1)"),
        ("mysql+pymysql://bob:s3cret-pw@127.0.0.1:1/optuna", "needs the database driver 'pymysql'"),
    ],
)
def test_an_unreachable_or_driverless_study_database_fails_fast_without_the_password(
    tmp_path, tracking, capsys, url, expect
):
    t0 = time.monotonic()
    line = cli_error(capsys, ["tune", "--storage", url, "--n_trials", "1"])
    assert time.monotonic() - t0 < 10
    assert expect in line and "s3cret-pw" not in line and "bob:***@127.0.0.1" in line
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")  # nothing half-written


def test_mask_secrets():
    assert (
        mask_secrets("postgresql://u:p@ss@h:5432/d and http://a:b@c/")
        == "postgresql://u:***@h:5432/d and http://a:***@c/"
    )
    assert mask_secrets("postgresql://u@h/d sqlite:///x.db") == "postgresql://u@h/d sqlite:///x.db"
    assert (
        mask_secrets("postgresql+psycopg://u@h/d?sslmode=require&password=s3cr3t https://x/?Token=abc")
        == "postgresql+psycopg://u@h/d?sslmode=require&password=*** https://x/?Token=***"
    )
    assert one_line(RuntimeError("cannot reach postgresql://u:pw@h/d")) == "cannot reach postgresql://u:***@h/d"


def test_an_unreachable_tracking_server_fails_at_once_naming_host_and_port(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:pw-secret@127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    try:
        t0 = time.monotonic()
        line = cli_error(capsys, ["train", "--data", "sample", "--epochs", "1"])
        assert time.monotonic() - t0 < 10
    finally:
        mlflow.set_tracking_uri(None)
    assert f"(host 127.0.0.1, port {port})" in line and "MLFLOW_TRACKING_URI" in line
    assert "pw-secret" not in line and "alice:***@" in line


def test_mlflow_run_quoting_of_p_values_is_undone():
    from stocklab.tracking import _same, unquote_param

    # what `mlflow run` logs for -P preset= and -P data='/my data' (shell-quoted, as in its command)
    assert unquote_param("''") == "" and unquote_param("'/my data/x y'") == "/my data/x y"
    assert unquote_param("sample") == "sample" and unquote_param("'it'\"'\"'s'") == "it's"
    assert _same("''", "") and _same("'/my data'", "/my data") and not _same("'/my data'", "/other")


def test_only_the_first_sigterm_interrupts_a_job_a_second_one_cannot_cut_its_cleanup(capfd):
    """A job under `mlflow run` can get SIGTERM twice (the parent-death signal, again from the
    process that adopts it): the first unwinds it like Ctrl-C, one arriving while it ends its
    runs KILLED is ignored, so that cleanup always completes."""
    import os
    import signal

    from stocklab.interrupts import install_signal_handlers

    before = signal.getsignal(signal.SIGTERM)
    install_signal_handlers()
    try:
        with pytest.raises(KeyboardInterrupt, match="stopped by signal 15"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode: never reached
        os.kill(os.getpid(), signal.SIGTERM)  # during the cleanup: must not raise
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capfd.readouterr().err
    assert "received signal 15" in err and "signal 15 again while stopping" in err


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TuneConfig(timeout=NAN), "timeout: nan must be a finite number"),
        (lambda: TrainConfig(label_scale=INF), "label_scale: inf must be a finite number"),
        (lambda: TrainConfig(weight_decay=INF), "weight_decay: inf must be a finite number"),
        (lambda: TrainConfig(lr=NAN), "lr: nan must be a finite number"),
        (lambda: TrainConfig(split="0.6,0.4,nan"), "split: fractions '0.6,0.4,nan' must be three non-negative"),
        (lambda: TrainConfig(split="nan,nan,nan"), "split: fractions 'nan,nan,nan' must be three non-negative"),
        (lambda: TrainConfig(seed=-1), "seed: -1 must be in [0, 4294967295]"),
        (lambda: TrainConfig(seed=2**32), "seed: 4294967296 must be in [0, 4294967295]"),
        (lambda: model_config("linear", {"alpha": NAN}), "alpha: nan must be a finite number"),
        (lambda: build_model("cnn1d", 7, 20, model_config("cnn1d", {"kernel": 100})),
         "kernel: 100 is longer than the window (seq_len=20)"),
    ],
)  # fmt: skip
def test_numbers_that_make_no_sense_are_errors_naming_their_own_parameter(make, message):
    with pytest.raises(StockLabError, match=re.escape(message)):
        cfg = make()
        cfg.validate()


def test_a_log_scaled_search_range_from_zero_is_an_error_before_the_study(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.0, high: 0.01, log: true}\n")
    with pytest.raises(StockLabError, match=re.escape("lr: log: true needs low > 0 (low is 0.0)")):
        load_space("lstm", MODELS["lstm"][1], str(space))


def test_a_study_keeps_its_objective_and_names_it(tmp_path):
    journal = str(tmp_path / "journal.log")
    study, created = claim_study(TuneConfig(storage=journal, study_name="s", metric="valid_rank_ic"))
    assert created and study.metric_names == ["valid_rank_ic"]
    assert claim_study(TuneConfig(storage=journal, study_name="s", metric="valid_rank_ic"))[1] is False
    for other in ("valid_loss", "valid_ls_sharpe_net"):  # another direction, or the same one
        with pytest.raises(StockLabError, match="metric: study 's' in .* optimises valid_rank_ic, not " + other):
            claim_study(TuneConfig(storage=journal, study_name="s", metric=other))


def test_a_study_whose_every_trial_failed_exits_non_zero_with_the_reasons(tmp_path, tracking, capsys):
    data = write_ticker_csvs(synthetic_bars(n_tickers=3, n_days=120), tmp_path / "csvs")
    space = tmp_path / "space.yaml"
    space.write_text("dropout: {type: float, low: 1.5, high: 1.6}\n")  # every trial's model is invalid
    argv = ["tune", "--data", str(data), "--n_trials", "1", "--epochs", "1", "--horizon", "1", "--seq_len", "5",
            "--recipe", "raw", "--space", str(space), "--storage", str(tmp_path / "j.log"),
            "--study_name", "bad"]  # fmt: skip
    line = cli_error(capsys, argv)
    assert "study 'bad': no trial completed (1 trial(s): " in line and "dropout: 1.5" in line
    parent = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`stocklab.role` = 'study'")
    assert list(parent["status"]) == ["FAILED"]
    # fixed, the same command runs the trial it lacks: a failed trial does not fill the budget
    space.write_text("dropout: {type: float, low: 0.0, high: 0.1}\n")
    assert main(argv) == 0
    study = claim_study(TuneConfig(storage=str(tmp_path / "j.log"), study_name="bad"))[0]
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


def test_predict_onto_a_folder_is_an_error_before_any_model_is_loaded(tmp_path):
    from stocklab.config import PredictConfig
    from stocklab.jobs.predict import run_predict

    (folder := tmp_path / "preds.csv").mkdir()
    with pytest.raises(StockLabError, match=f"output: '{folder}' is a folder; name a .csv or .parquet file"):
        run_predict(PredictConfig(model_uri="models:/nothing@champion", output=str(folder)))


def test_constant_predictions_fail_the_run_with_a_tag_and_a_nonzero_exit(tracking, csv_dir, capsys, monkeypatch):
    """A trained model whose test predictions are constant is no result: the run keeps what it
    logged, is tagged `stocklab.degenerate` and ends FAILED, and the CLI exits 2 with one line.
    (The naive baselines are constant by design and exempt: the same model passes then.)"""
    from stocklab.models.baselines import Naive

    args = ["train", "--data", str(csv_dir), "--model", "naive", "--mode", "mean", "--epochs", "1",
            "--cache_dir", "", "--tear_sheet", "false"]  # fmt: skip
    assert main(args) == 0  # exempt
    monkeypatch.setattr(Naive, "constant_forecast", False)  # as if a network had collapsed to a constant
    message = cli_error(capsys, args)
    assert message.startswith("stocklab: error: predictions: the ") and "test predictions are constant" in message
    run = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"]).iloc[0]
    assert run["status"] == "FAILED" and "constant" in run["tags.stocklab.degenerate"]
    assert "metrics.test_mse" in run and np.isfinite(run["metrics.test_mse"])  # nothing recorded was lost


def test_an_interrupted_trial_prints_no_optuna_traceback(caplog):
    """Ctrl-C or SIGTERM inside a trial: Optuna would log the failed trial with the whole
    KeyboardInterrupt traceback before re-raising it; the job's one line is all that shows."""
    import optuna

    from stocklab.interrupts import quiet_optuna_interrupts

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.enable_propagation()  # Optuna's records reach caplog
    quiet_optuna_interrupts()

    def stopped(trial):
        raise KeyboardInterrupt("stopped by signal 15")

    def broken(trial):
        raise ValueError("a real bug")

    try:
        with pytest.raises(KeyboardInterrupt):
            optuna.create_study().optimize(stopped, n_trials=1)
        assert not [r for r in caplog.records if r.exc_info]  # no traceback logged
        optuna.create_study().optimize(broken, n_trials=1, catch=(ValueError,))
        assert "a real bug" in caplog.text  # other failures keep Optuna's message
    finally:
        optuna.logging.disable_propagation()


def test_a_study_whose_parent_is_in_another_tracking_store_carries_on_here(tmp_path, tracking, monkeypatch, capsys):
    """The user deleted mlflow.db (or pointed MLFLOW_TRACKING_URI elsewhere) and kept the
    journal: the study goes on in the new store with a new parent and a warning naming both."""
    from stocklab.jobs.tune import run_tune

    data = write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=150), tmp_path / "csvs")
    cfg = TuneConfig(data=str(data), model="linear", n_trials=1, epochs=1, horizon=1, seq_len=5, cache_dir="",
                     storage=str(tmp_path / "j.log"), study_name="moved", pruner="none", tear_sheet=False)  # fmt: skip
    run_tune(cfg)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    mlflow.set_tracking_uri(other)
    summary = run_tune(TuneConfig(**{**cfg.__dict__, "n_trials": 2}))
    err = capsys.readouterr().err
    assert "is not in this tracking store" in err and tracking in err and other in err
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`stocklab.role` = 'study'")
    assert list(parents["status"]) == ["FINISHED"] and summary["parent_run_id"] == parents["run_id"].iloc[0]
    study = claim_study(TuneConfig(storage=cfg.storage, study_name="moved", model="linear"))[0]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.user_attrs["mlflow_parent_run_id"] == summary["parent_run_id"]


def test_concurrent_jobs_divide_the_cores_and_dead_ones_are_forgotten(tmp_path, monkeypatch):
    import os
    import tempfile

    from stocklab import cpu_share

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    cpu_share.register_job()
    assert cpu_share.live_jobs() == 1 and cpu_share.fair_threads() == 8
    folder = tmp_path / f"stocklab-jobs-{os.getuid()}"
    (folder / str(os.getppid())).touch()  # another live job (the test runner's parent)
    (folder / "999999999").touch()  # a job that was killed: no such process
    assert cpu_share.live_jobs() == 2 and cpu_share.fair_threads() == 4
    assert not (folder / "999999999").exists()  # forgotten
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's (or n_jobs') choice wins
    assert cpu_share.fair_threads() == 3


def test_a_read_only_sqlite_store_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    import os

    db = tmp_path / "ro" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    real = os.access
    # a read-only mount (root ignores file modes, so the mount is what a test can imitate)
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(db.parent)) else real(p, mode))
    try:
        line = cli_error(capsys, ["train", "--data", "sample"])
    finally:
        mlflow.set_tracking_uri(None)
    assert f"the SQLite store '{db}' cannot be written" in line and "read-only" in line
    assert not db.exists()  # nothing was created


@pytest.mark.slow
def test_two_jobs_starting_together_on_a_new_sqlite_store_both_succeed(tmp_path):
    import os
    import subprocess
    import sys

    data = write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=120), tmp_path / "csvs")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'new.db'}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stocklab.cli", "train", "--data", str(data), "--epochs", "1", "--seq_len", "5",
           "--horizon", "1", "--cache_dir", "", "--tear_sheet", "false"]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for e in errs]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        assert len(mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FINISHED'")) >= 2
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "lgbm", "--num_leaves", "1"], "num_leaves: 1 must be >= 2"),
        (["predict", "--eval_batch_size", "0"], "eval_batch_size: 0 must be >= 1"),
        (["evaluate", "--run_id", "x", "--eval_batch_size", "-1"], "eval_batch_size: -1 must be >= 1"),
        (["benchmark", "--batch_size", "0", "--data", "sample"], "batch_size: 0 must be >= 1"),
        (["benchmark", "--seq_len", "0", "--data", "sample"], "seq_len: 0 must be >= 1"),
        (["benchmark", "--train_steps", "0", "--data", "sample"], "train_steps: 0 must be >= 1"),
        (["benchmark", "--output", ".", "--data", "sample"], "output: '.' is a folder"),
    ],
)
def test_batch_sizes_leaf_counts_and_benchmark_sizes_are_checked_before_any_work(tmp_path, tracking, capsys, argv,
                                                                                 message):  # fmt: skip
    line = cli_error(capsys, argv)
    assert line.startswith("stocklab: error: ") and message in line, line


def test_more_quantiles_than_tickers_is_one_line_not_a_nan_book(tmp_path, tracking, capsys):
    data = write_ticker_csvs(synthetic_bars(n_tickers=8, n_days=200), tmp_path / "csvs")
    line = cli_error(capsys, _train(data, "--quantiles", "1000", "--model", "linear"))
    assert "quantiles: 1000 buckets of the long-short book need at least 1000 tickers; the data has 8" in line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--label_scale", "1e30"], "label_scale: 1e+30 must be in (0, 1e+06]"),
        (["promote", "--model", "lstm' OR name LIKE '%"], "is not a model name (letters, digits"),
    ],
)
def test_absurd_scales_and_names_are_named_as_themselves(tracking, capsys, argv, message):
    assert message in cli_error(capsys, argv)


def test_a_search_space_with_fractional_int_bounds_is_refused(tmp_path):
    from stocklab.models import MODELS
    from stocklab.spaces import load_space

    space = tmp_path / "space.yaml"
    space.write_text("num_layers: {type: int, low: 0.5, high: 4.5}\n")
    with pytest.raises(StockLabError, match="num_layers: low 0.5 is not a whole number"):
        load_space("lstm", MODELS["lstm"][1], str(space))


def test_ticker_names_never_reach_a_path_or_mathtext_unescaped(tmp_path):
    from stocklab.factor_eval import prediction_plots

    names = ["../ZZESC", "a/ZZSLASH", "X" * 300, "X$^$", "AAPL"]
    days = pd.bdate_range("2020-01-01", periods=80)
    rng = np.random.default_rng(0)
    df = pd.concat([pd.DataFrame({"date": days, "ticker": n, "prediction": rng.random(80), "label": rng.random(80)})
                    for n in names])  # fmt: skip
    out = tmp_path / "plots"
    paths = prediction_plots(df, out, n_tickers=len(names))
    assert len({p.name for p in paths}) == len(names) and all(p.parent == out and p.exists() for p in paths)
    assert all(len(p.name) < 120 for p in paths) and out / "pred_vs_actual_AAPL.png" in paths
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]  # nothing escaped the folder


@pytest.mark.parametrize("damage", [b"garbage that is no record\n", b'{"op_code": 5, "worker_id'])
def test_a_damaged_journal_is_repaired_on_resume_and_its_trials_kept(tmp_path, tracking, capsys, damage):
    """A garbage line (a bad copy) or a torn last line (a writer killed mid-line): the resume
    recovers every readable trial, says which lines it skipped and keeps the damaged file."""
    import optuna

    from stocklab.study.storage import make_storage

    data = write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=200), tmp_path / "csvs")
    journal = tmp_path / "j.log"
    argv = ["tune", "--data", str(data), "--model", "linear", "--n_trials", "1", "--epochs", "1", "--horizon", "5",
            "--seq_len", "5", "--storage", str(journal), "--study_name", "s", "--register", "false",
            "--cache_dir", "", "--tear_sheet", "false", "--importance", "false"]  # fmt: skip
    assert main(argv) == 0
    lines = journal.read_bytes().count(b"\n")
    with open(journal, "ab") as f:
        f.write(damage)
    capsys.readouterr()
    argv[argv.index("--n_trials") + 1] = "2"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"had 1 unreadable line(s) (line {lines + 1}); they are skipped, the damaged file is kept as" in err
    (backup,) = tmp_path.glob("j.log.damaged-*")
    assert backup.read_bytes().endswith(damage)
    study = optuna.load_study(study_name="s", storage=make_storage(str(journal)))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


@pytest.fixture
def http_server():
    """A local HTTP server answering /health with the status in `server.status`, recording the
    Authorization headers it got."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.server.auth.append(self.headers.get("Authorization"))
            self.send_response(self.server.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.status, server.auth = 200, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_the_tracking_preflight_sends_credentials_and_fails_fast(http_server, monkeypatch, tmp_path):
    import socket

    import mlflow

    from stocklab.tracking import check_tracking_server, prepare_sqlite_store

    port = http_server.server_address[1]
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: f"http://user:p%40ss@127.0.0.1:{port}")
    check_tracking_server()  # a valid URI with credentials is accepted
    assert http_server.auth == ["Basic dXNlcjpwQHNz"]  # user:p@ss, as MLflow would send it
    http_server.status = 503
    with pytest.raises(StockLabError, match="answers 503 .*it is not serving"):
        check_tracking_server()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: f"postgresql://u:secret@127.0.0.1:{free}/db")
    with pytest.raises(StockLabError, match=f"no database server accepts connections at .*port {free}") as e:
        check_tracking_server()
    assert "secret" not in str(e.value)
    with pytest.raises(StockLabError, match="the SQLite store's folder '.*nowhere' does not exist"):
        prepare_sqlite_store(f"sqlite:///{tmp_path}/nowhere/mlflow.db")
