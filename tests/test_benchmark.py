"""The speed benchmark runs end to end on a tiny configuration and reports every figure.
(It measures; it asserts no timings.)"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from conftest import synthetic_bars, write_ticker_csvs

from stocklab.benchmark import naive_windows, run_benchmark, train_flops_per_sample
from stocklab.config import BenchmarkConfig, StockLabError
from stocklab.features import build_panel
from stocklab.windows import WindowSet


def test_naive_windows_match_the_project_windows():
    bars = synthetic_bars(n_tickers=2, n_days=60).rename(columns={"Name": "ticker"})
    bars["date"] = bars["date"].astype("datetime64[ns]")
    panel = build_panel(bars, "ohlcv", horizon=5, label_scale=1.0)
    naive = naive_windows(panel.X, 10)
    ws = WindowSet(panel, 10, 5, (0.6, 0.2, 0.2), "none")
    n, t = ws.index["train"]
    ours = ws.gather(n, t).numpy()
    assert naive.shape[1:] == ours.shape[1:] == (10, 7)
    # every project window is one of the naive windows (same values, no copies kept around)
    first = naive[: len(naive) // 2]
    assert any(np.allclose(first[i], ours[0]) for i in range(len(first)))


def test_speed_suite_writes_speed_json(tmp_path, tracking):
    data = write_ticker_csvs(synthetic_bars(n_tickers=3, n_days=260), tmp_path / "csvs")
    cfg = BenchmarkConfig(data=str(data), n_tickers=3, seq_len=20, batch_size=64, train_steps=3, seed000_steps=2,
                          seed000_tickers=4, seed000_days=400, output=str(tmp_path / "speed.json"))  # fmt: skip
    res = run_benchmark(cfg)
    saved = json.loads((tmp_path / "speed.json").read_text())
    for key in ("window_speedup", "window_mem_naive_mb", "window_mem_project_mb", "train_speedup_cnn2d",
                "train_speedup_lstm", "seed000_epoch_s", "seed000_200_epochs_s", "device", "peak_gemm_gflops",
                "train_ceiling_speedup_cnn2d", "train_ceiling_speedup_lstm"):  # fmt: skip
        assert key in saved and key in res
    assert saved["seed000_200_epochs_s"] == pytest.approx(200 * saved["seed000_epoch_s"])
    assert saved["window_project_windows"] > 0 and saved["train_speedup_lstm"] > 0
    # the ceiling is the matmul peak over the counted work, relative to the source pipeline
    samples_per_s_at_peak = saved["peak_gemm_gflops"] * 1e3 / saved["train_mflop_per_sample_lstm"]
    ceiling = samples_per_s_at_peak / saved["train_dataloader_lstm_per_s"]
    assert saved["train_ceiling_speedup_lstm"] == pytest.approx(ceiling)
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert run["metrics.window_speedup"] == pytest.approx(saved["window_speedup"])
    with pytest.raises(StockLabError, match="suite: 'fast' is not a benchmark suite"):
        run_benchmark(BenchmarkConfig(suite="fast"))


def test_flop_count_sees_the_recurrent_matmuls():
    """A 2-layer LSTM (H=32) on 7 features x 96 days: forward = T * sum over layers of
    4H (in + H) multiply-adds; training ~ 3x forward (less the unneeded input gradient)."""
    panel = build_panel(synthetic_bars(n_tickers=2, n_days=200).rename(columns={"Name": "ticker"}), "ohlcv", 5, 1.0)
    ws = WindowSet(panel, 96, 5, (0.6, 0.2, 0.2), "none")
    forward = 96 * (4 * 32 * (7 + 32) * 2 + 4 * 32 * (32 + 32) * 2)
    assert 2.7 * forward < train_flops_per_sample("lstm", ws, 96) < 3.1 * forward
