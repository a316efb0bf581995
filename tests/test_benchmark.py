"""The speed benchmark runs end to end on a tiny configuration and reports every figure.
(It measures; it asserts no timings.)"""

from __future__ import annotations

import json
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from conftest import as_current_store, long_bars, private_store, synthetic_bars, write_ticker_csvs

from stocklab.benchmarks import models as models_suite
from stocklab.benchmarks import speed
from stocklab.benchmarks.report import daily_rank_ic, head_to_head
from stocklab.benchmarks.speed import naive_windows, train_flops_per_sample
from stocklab.config import BenchmarkConfig, StockLabError
from stocklab.factor_eval import newey_west_se
from stocklab.features import build_panel
from stocklab.jobs.benchmark import run_benchmark
from stocklab.models import MODELS
from stocklab.windows import WindowSet


def test_naive_windows_match_the_project_windows():
    panel = build_panel(long_bars(synthetic_bars(n_tickers=2, n_days=60)), "ohlcv", horizon=5, label_scale=1.0)
    naive = naive_windows(panel.X, 10)  # (tickers x (days - 9), 10, 7): ticker by ticker, window by end day
    ws = WindowSet(panel, 10, 5, (0.6, 0.2, 0.2), "none")
    n, t = ws.index["train"]
    ours = ws.gather(n, t).numpy()
    assert naive.shape[1:] == ours.shape[1:] == (10, 7)
    # element for element: the project's window (ticker n, end day t) is the naive loop's
    # window number n * (days - 9) + t - 9 (no gaps in this panel: every window is complete)
    per_ticker = panel.X.shape[1] - 10 + 1
    np.testing.assert_array_equal(ours, naive[n.numpy() * per_ticker + t.numpy() - 9])


@pytest.mark.slow
def test_speed_suite_writes_speed_json(tmp_path, tracking):
    # the study (d) trains under the default recipe, whose cross-section needs 5 tickers a day
    data = write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=260), tmp_path / "csvs")
    cfg = BenchmarkConfig(data=str(data), n_tickers=3, seq_len=20, batch_size=64, train_steps=3, seed000_steps=2,
                          seed000_tickers=4, seed000_days=400, output=str(tmp_path / "speed.json"),
                          study_trials=2, study_tickers=6, study_jobs=1)  # fmt: skip
    res = run_benchmark(cfg)
    saved = json.loads((tmp_path / "speed.json").read_text())
    for key in ("window_speedup", "window_mem_naive_mb", "window_mem_project_mb", "train_speedup_cnn2d",
                "train_speedup_lstm", "seed000_epoch_s", "seed000_200_epochs_s", "device", "peak_gemm_gflops",
                "train_ceiling_speedup_cnn2d", "train_ceiling_speedup_lstm", "xs_epoch_ratio_lstm_daily_rank",
                "study_jobs1_trials_per_hour"):  # fmt: skip
        assert key in saved and key in res
    # what was measured is what the suite says: (a) counted every window each pipeline built,
    # counted independently here (the naive loop: every complete window; the project: those
    # with a label, the three splits' windows); (d) ran the trials it was asked for
    panel = speed._panel(cfg.section())  # the suite's own panel: n_tickers of `data`
    complete = sum(
        int(np.isfinite(panel.X[n, i : i + 20]).all()) for n in range(panel.X.shape[0])
        for i in range(panel.X.shape[1] - 20 + 1)
    )  # fmt: skip
    ws = WindowSet(panel, 20, 20, (0.6, 0.2, 0.2), "standard")
    assert saved["window_naive_windows"] == complete
    assert saved["window_project_windows"] == sum(len(ws.index[s][0]) for s in ("train", "valid", "test")) > 0
    assert saved["study_jobs1_trials"] == 2
    timed = [v for k, v in saved.items() if k.endswith(("_s", "_per_s", "_gflops"))]
    assert timed and all(np.isfinite(v) and v > 0 for v in timed)
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert run["metrics.window_speedup"] == pytest.approx(saved["window_speedup"])
    with pytest.raises(StockLabError, match="suite: 'fast' must be one of speed, models"):
        run_benchmark(BenchmarkConfig(suite="fast"))


def test_newey_west_standard_error_matches_statsmodels_hac():
    sm = pytest.importorskip("statsmodels.api", reason="statsmodels (an alphalens dependency) is not installed")
    rng = np.random.default_rng(0)
    x = np.convolve(rng.normal(size=400), np.ones(5) / 5, mode="valid")  # overlapping: autocorrelated
    hac = sm.OLS(x, np.ones_like(x)).fit(cov_type="HAC", cov_kwds={"maxlags": 4, "use_correction": False})
    assert newey_west_se(x, 4) == pytest.approx(float(hac.bse[0]), rel=1e-10)
    assert newey_west_se(x, 4) > newey_west_se(x, 0) == pytest.approx(x.std() / np.sqrt(len(x)), rel=1e-12)


def test_flop_count_sees_the_recurrent_matmuls():
    """A 2-layer LSTM (H=32) on 7 features x 96 days: forward = T * sum over layers of
    4H (in + H) multiply-adds; training ~ 3x forward (less the unneeded input gradient)."""
    panel = build_panel(long_bars(synthetic_bars(n_tickers=2, n_days=200)), "ohlcv", 5, 1.0)
    ws = WindowSet(panel, 96, 5, (0.6, 0.2, 0.2), "none")
    forward = 96 * (4 * 32 * (7 + 32) * 2 + 4 * 32 * (32 + 32) * 2)
    assert 2.7 * forward < train_flops_per_sample("lstm", ws, 96) < 3.1 * forward


@pytest.fixture(scope="module")
def suite(tmp_path_factory, migrated_store):
    """One models suite (a preset, a baseline, a factor; 2 seeds, 2 folds) whose first session
    is interrupted (Ctrl-C) in its fourth fit, linear:raw seed 1, then run again: the same
    command reopens the parent and fits what is missing. Read by the named cases below."""
    tmp = tmp_path_factory.mktemp("suite")
    uri = private_store(tmp, migrated_store)
    data = write_ticker_csvs(synthetic_bars(n_tickers=6, n_days=320), tmp / "csvs")
    report = tmp / "rep" / "models.md"
    entries = "preset:seed002-lstm,linear:raw,factor:reversal_1m"
    cfg = BenchmarkConfig(suite="models", data=str(data), models=entries, seeds=2, folds=2, epochs=1,
                          split="0.5,0.2,0.3", train_every=2, report=str(report), horizons="20")  # fmt: skip
    real, calls = models_suite.train_in_run, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(tmp)
        mlflow.set_tracking_uri(uri)
        try:
            mp.setattr(models_suite, "train_in_run", interrupted)
            with pytest.raises(KeyboardInterrupt):
                run_benchmark(cfg)
            mp.setattr(models_suite, "train_in_run", real)
            res = run_benchmark(cfg)
            runs = mlflow.search_runs(experiment_names=["stocklab-benchmark-models"])
        finally:
            mlflow.set_tracking_uri(None)
    parent = runs[runs["tags.mlflow.runName"] == "benchmark models"]
    children = runs[runs["tags.mlflow.parentRunId"].isin(parent["run_id"])]
    return SimpleNamespace(uri=uri, res=res, parent=parent, children=children, text=report.read_text(),
                           report=report, table=res["table"].set_index("entry"))  # fmt: skip


@pytest.fixture
def suite_store(suite, monkeypatch):
    yield from as_current_store(suite, monkeypatch)


@pytest.mark.slow
def test_an_interrupted_suite_resumes_and_fits_only_what_is_missing(suite_store):
    parent, children = suite_store.parent, suite_store.children
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    assert parent["metrics.fits_reused"].iloc[0] == 3 and "3 of 5 fits read back" in suite_store.text
    sessions = mlflow.MlflowClient().get_metric_history(parent["run_id"].iloc[0], "session_wall_time_s")
    assert sorted(m.step for m in sessions) == [1, 2] and "in 2 sessions" in suite_store.text
    assert children["status"].value_counts().to_dict() == {"FINISHED": 7, "KILLED": 1}
    done = children[children["status"] == "FINISHED"]
    # two seeds per trained entry and their ensemble, one run for the deterministic factor
    assert sorted(done["tags.stocklab.benchmark_entry"].value_counts().to_dict().items()) == [
        ("factor:reversal_1m", 1), ("linear:raw", 2), ("linear:raw (ensemble)", 1), ("preset:seed002-lstm", 2),
        ("preset:seed002-lstm (ensemble)", 1),
    ]  # fmt: skip


@pytest.mark.slow
def test_the_report_names_its_command_machine_every_entry_and_its_plots(suite_store):
    text = suite_store.text
    assert text.startswith("# Model comparison") and "-P suite=models" in text and "Machine:" in text
    for entry in ("| linear:raw |", "| factor:reversal_1m |", "| preset:seed002-lstm |", "| linear:raw (ensemble) |"):
        assert entry in text
    for png in ("models_rank_ic.png", "models_long_short.png"):
        assert (suite_store.report.parent / png).stat().st_size > 10_000 and f"]({png})" in text
    assert "| horizon | entries | MDE against zero | MDE of a paired difference |" in text
    assert "by more than two Newey-West standard errors" in text


@pytest.mark.slow
def test_the_tables_rank_ic_is_the_mean_of_the_runs_logged_fold_values(suite_store):
    client = mlflow.MlflowClient()
    done = suite_store.children[suite_store.children["status"] == "FINISHED"]
    linear = done[done["tags.stocklab.benchmark_entry"] == "linear:raw"]["run_id"]
    folds = [m.value for r in linear for m in client.get_metric_history(r, "fold/test_rank_ic")]
    row = suite_store.table.loc["linear:raw"]
    assert len(folds) == 4 and row["rank_ic"] == pytest.approx(np.mean(folds))
    assert row["rank_ic_std"] == pytest.approx(np.std(folds, ddof=1))


@pytest.mark.slow
def test_an_ensemble_scores_its_seeds_mean_prediction(suite_store):
    records = {(r.entry, r.seed): r for r in suite_store.res["records"]}
    members = [records[("linear:raw", s)].predictions.set_index(["date", "ticker"])["prediction"] for s in (0, 1)]
    ens = records[("linear:raw (ensemble)", -1)].predictions.set_index(["date", "ticker"])["prediction"]
    assert np.allclose(ens.sort_index(), ((members[0] + members[1]) / 2).sort_index())
    table = suite_store.table
    assert np.isfinite(table.loc["linear:raw (ensemble)", "ls_sharpe_net"])
    assert np.isnan(table.loc["linear:raw (ensemble)", "params"]) and table.loc["linear:raw", "params"] > 0


@pytest.mark.slow
def test_against_the_factor_is_the_paired_daily_difference_with_its_newey_west_se(suite_store):
    records = suite_store.res["records"]
    row = suite_store.table.loc["linear:raw"]
    mine = daily_rank_ic([r for r in records if r.entry == "linear:raw"])
    factor = daily_rank_ic([r for r in records if r.entry == "factor:reversal_1m"])
    diff = (mine - factor).dropna()
    assert row["vs_factor"] == pytest.approx(diff.mean())
    assert row["vs_factor_se"] == pytest.approx(newey_west_se(diff, 19))
    assert row["rank_ic_se"] == pytest.approx(newey_west_se(mine, 19))  # horizon 20: 19 lags


def test_the_default_entries_are_every_family_under_both_recipes_and_the_yardsticks(tmp_path):
    names = [e.name for e in models_suite._selected(BenchmarkConfig(suite="models", data=str(tmp_path)).section())]
    trainable = [m for m in MODELS if m not in ("naive", "factor")]
    assert {f"{m}:{r}" for m in trainable for r in ("raw", "cs")} <= set(names)
    assert {"lgbm:alpha158", "linear:alpha158", "naive:zero", "naive:mean", "factor:momentum_12_1"} <= set(names)
    alpha = models_suite._selected(
        BenchmarkConfig(suite="models", data=str(tmp_path), models="lgbm:alpha158").section()
    )
    assert [(e.values["features"], e.values["seq_len"], e.values["label"]) for e in alpha] == [
        ("alpha158", 1, "cs_rank")
    ]
    with pytest.raises(StockLabError, match="models: unknown entry 'lstmx'"):
        run_benchmark(BenchmarkConfig(suite="models", models="lstmx", data=str(tmp_path)))


@pytest.mark.parametrize(
    "diff, verdict, beaten",
    [(-0.05, "clears, below factor:reversal_1m,", "none"), (0.05, "clears, above factor:reversal_1m,", "lstm:cs"),
     (0.01, "does not clear", "none")],
)  # fmt: skip
def test_the_head_to_head_sentence_says_which_side_a_clear_difference_favours(diff, verdict, beaten):
    """Chosen on validation (lstm:cs, not the better out-of-sample gru:raw), judged against the
    best factor by its paired difference and 2 s.e. (0.02 here), with the winning side named."""
    import pandas as pd

    table = pd.DataFrame({
        "entry": ["lstm:cs", "gru:raw", "factor:reversal_1m", "factor:momentum_12_1"],
        "kind": ["model", "model", "factor", "factor"],
        "valid_rank_ic": [0.05, 0.01, np.nan, np.nan],
        "rank_ic": [0.02 + diff, 0.03, 0.02, 0.0],
        "vs_factor": [diff, 0.01, 0.0, -0.02],
        "vs_factor_se": [0.01, 0.01, np.nan, 0.01],
    })  # fmt: skip
    table.attrs["best_factor"] = "factor:reversal_1m"
    sentence = head_to_head(table)[-1]
    assert sentence.startswith(f"The chosen entry's difference to factor:reversal_1m, {diff:+.4f} ± 0.0100, {verdict}")
    assert sentence.endswith(f"standard errors: {beaten}.")


@pytest.mark.parametrize("suite", ["speed", "models"])
def test_a_benchmark_of_bars_names_its_data_or_says_where_it_looked(suite, tmp_path, monkeypatch):
    """No default path: a fresh clone has no ../shared beside it, and the sample would overwrite
    the committed report with a toy market's."""
    with pytest.raises(StockLabError, match=rf"data: the {suite} benchmark needs daily bars .*-P data=sample"):
        BenchmarkConfig(suite=suite).validate()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StockLabError, match=rf"looked for '{tmp_path.parent}/shared/data/sp500_5yr'.*-P data=<folder>"):
        BenchmarkConfig(suite=suite, data="../shared/data/sp500_5yr").validate()
    BenchmarkConfig(suite=suite, data="sample").validate()
    BenchmarkConfig(suite="recovery").validate()  # a planted market needs no data


@pytest.mark.parametrize("text", ["", "20,x", "20,20", "0"])
def test_horizons_are_days_each_once_and_each_has_its_report(text, tmp_path):
    with pytest.raises(StockLabError, match="horizons: .* must be label horizons in days, each once"):
        BenchmarkConfig(suite="models", data=str(tmp_path), horizons=text).validate()
    suite = BenchmarkConfig(suite="models", data=str(tmp_path), horizons="20,5", report="out/m.md").section()
    assert suite.horizon_list() == [20, 5]
    assert (suite.report_for(20), suite.report_for(5)) == ("out/m.md", "out/m_h5.md")
