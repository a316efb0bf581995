"""Factor baselines: the harness's numbers equal an independent pandas computation."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA
from scipy import stats

from stocklab.config import TrainConfig
from stocklab.data import load_panel
from stocklab.jobs.train import run_train
from stocklab.models import build_model, model_config
from stocklab.models.factors import FACTORS, LOOKBACK
from stocklab.windows import split_bounds

N_TICKERS, HORIZON = 40, 20


def pandas_factor(name: str, close: pd.DataFrame, volume: pd.DataFrame) -> pd.DataFrame:
    """The factor from (dates x tickers) close and volume with plain pandas."""
    if name == "momentum_12_1":
        return close.shift(21) / close.shift(252) - 1
    if name == "reversal_1m":
        return -(close / close.shift(21) - 1)
    if name == "low_volatility":
        return -close.pct_change(fill_method=None).rolling(60).std()
    return volume.rolling(20).mean() / volume.shift(20).rolling(60).mean() - 1


def test_factor_models_compute_their_formula():
    close = torch.linspace(10, 20, 253, dtype=torch.float64)
    x = torch.zeros(1, 253, 7)
    x[0, :, 3] = close.float()
    x[0, :, 4] = torch.arange(1, 254).float()
    out = {f: build_model("factor", 7, 253, model_config("factor", {"factor": f}))(x).item() for f in FACTORS}
    c = x[0, :, 3].double()
    assert out["momentum_12_1"] == pytest.approx((c[-22] / c[-253] - 1).item(), rel=1e-6)
    assert out["reversal_1m"] == pytest.approx(-(c[-1] / c[-22] - 1).item(), rel=1e-6)
    assert out["volume_change"] == pytest.approx(np.mean(np.arange(234, 254)) / np.mean(np.arange(174, 234)) - 1)
    with pytest.raises(ValueError, match="needs ohlcv windows of >= 253 days"):
        build_model("factor", 7, 20, model_config("factor"))


@pytest.fixture(scope="module")
def reference(shared_cache):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    raw, _ = load_panel(str(SHARED_DATA), cache_dir=shared_cache)
    raw = raw[raw["ticker"].isin(sorted(raw["ticker"].unique())[:N_TICKERS])]
    wide = {
        c: raw.pivot(index="date", columns="ticker", values=c).sort_index()
        for c in ("open", "high", "low", "close", "volume")
    }
    return wide


@pytest.mark.shared
@pytest.mark.parametrize("factor", FACTORS)
def test_factor_rank_ic_matches_an_independent_pandas_computation(tracking, reference, shared_cache, factor):
    data = str(SHARED_DATA)
    cfg = TrainConfig(data=data, model="factor", max_tickers=N_TICKERS, horizon=HORIZON, cache_dir=shared_cache,
                      tear_sheet=False)  # fmt: skip
    res = run_train(cfg, {"factor": factor})
    logged = mlflow.get_run(res["run_id"]).data.metrics["test_rank_ic"]

    close, volume = reference["close"], reference["volume"]
    value = pandas_factor(factor, close, volume)
    label = close.shift(-HORIZON) / close - 1
    # the harness's sample rule, restated: the look-back's bars all known, the label known,
    # window end days in the default split's test period (after the horizon embargo)
    known = pd.concat(reference.values(), axis=1).notna().T.groupby(level=0).all().T
    complete = known.astype(float).rolling(LOOKBACK[factor]).sum() == LOOKBACK[factor]
    b2 = split_bounds(len(close), (0.6, 0.2, 0.2))[1]
    in_test = pd.Series(np.arange(len(close)) >= b2, index=close.index)
    frame = pd.DataFrame({"value": value.stack(), "label": label.stack(), "ok": complete.stack()}).dropna()
    frame = frame[frame["ok"] & in_test.reindex(frame.index.get_level_values(0)).to_numpy()]

    preds = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=res["run_id"], artifact_path="predictions.parquet")
    )
    assert len(preds) == len(frame)  # the same (date, ticker) samples

    def day_ic(g: pd.DataFrame) -> float:
        if len(g) < 3 or g["value"].nunique() < 2 or g["label"].nunique() < 2:
            return np.nan
        return stats.spearmanr(g["value"], g["label"]).statistic

    expected = frame.groupby(level=0)[["value", "label"]].apply(day_ic).dropna().mean()
    assert logged == pytest.approx(expected, abs=1e-6)
