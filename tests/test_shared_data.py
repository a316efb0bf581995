"""Integration on the real S&P 500 5-year bars in ../shared (skipped when absent)."""

from __future__ import annotations

import math

import mlflow
import pytest
from conftest import SHARED_DATA

from stocklab.config import TrainConfig
from stocklab.data import load_panel
from stocklab.jobs.train import run_train

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA}"),
]


def test_real_data_is_cleaned_and_counted(shared_cache):
    panel, report = load_panel(str(SHARED_DATA), cache_dir=shared_cache)
    assert report.files == 405 and report.tickers == 405
    # the dirt in the real files: missing opens/highs/lows, a high < low, a negative volume,
    # opens/closes outside the day's range
    assert report.dropped["missing_price"] >= 5 and report.dropped["high_below_low"] >= 1
    assert report.repaired["open_close_outside_high_low"] >= 1
    assert report.rows_read - report.rows_kept == sum(report.dropped.values())
    assert report.date_min == "2013-02-08" and report.date_max == "2018-02-07"


@pytest.mark.parametrize("model", ["lstm", "cnn2d"])
def test_train_on_real_subset(tracking, shared_cache, model):
    cfg = TrainConfig(data=str(SHARED_DATA), model=model, epochs=1, max_tickers=60, seq_len=30, cache_dir=shared_cache,
                      tear_sheet=False)  # fmt: skip
    res = run_train(cfg)
    m = mlflow.get_run(res["run_id"]).data.metrics
    assert all(math.isfinite(m[k]) for k in ("test_mse", "test_naive_mse", "test_mse_skill", "valid_mse_min"))
    # APTV (44 rows < seq_len 30 + horizon 20) is dropped and counted, not fatal
    report = mlflow.artifacts.load_dict(f"runs:/{res['run_id']}/data_report.json")
    assert report["dropped"]["short_tickers"] == 1
