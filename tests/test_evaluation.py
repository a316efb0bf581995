"""Factor metrics against scipy, the alphalens tear sheet, the one-ticker case, `evaluate`."""

from __future__ import annotations

import json
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import assert_metrics_say_their_split, synthetic_bars, write_ticker_csvs
from scipy import stats

from stocklab.config import StockLabError, TrainConfig
from stocklab.factor_eval import (
    daily_ic,
    daily_quintile_spread,
    factor_metrics,
    fast_alphalens,
    quintile_spread,
    tear_sheet,
    trading_calendar,
)
from stocklab.jobs.evaluate import EvaluateConfig, run_evaluate
from stocklab.jobs.train import run_train


def _factor_frame(n_days=60, n_names=20, kind="perfect", seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    rows = []
    for d in dates:
        label = rng.normal(0, 0.02, n_names)
        pred = {"perfect": label, "inverted": -label, "random": rng.normal(size=n_names)}[kind]
        rows += [(d, f"S{i}", pred[i], label[i]) for i in range(n_names)]
    return pd.DataFrame(rows, columns=["date", "ticker", "prediction", "label"])


@pytest.mark.parametrize("kind, expected", [("perfect", 1.0), ("inverted", -1.0)])
def test_perfect_and_inverted_factor(kind, expected):
    m, skipped = factor_metrics(_factor_frame(kind=kind), 1.0)
    assert skipped is None
    assert m["ic"] == pytest.approx(expected) and m["rank_ic"] == pytest.approx(expected)
    assert m["hit_rate"] == (1.0 if kind == "perfect" else 0.0)
    assert (m["spread_q5_q1"] > 0) == (kind == "perfect")


def test_random_factor_is_near_zero_and_matches_scipy():
    df = _factor_frame(n_days=300, kind="random")
    m, _ = factor_metrics(df, 1.0)
    assert abs(m["ic"]) < 0.03 and abs(m["rank_ic"]) < 0.03 and abs(m["ic_tstat"]) < 3
    ic = daily_ic(df)
    for d in ic.index[:5]:
        g = df[df["date"] == d]
        assert ic.loc[d, "ic"] == pytest.approx(stats.pearsonr(g["prediction"], g["label"])[0])
        assert ic.loc[d, "rank_ic"] == pytest.approx(stats.spearmanr(g["prediction"], g["label"])[0])
    daily = ic["ic"]
    assert m["icir"] == pytest.approx(daily.mean() / daily.std())
    assert m["ic_tstat"] == pytest.approx(stats.ttest_1samp(daily, 0).statistic)


def test_daily_ic_matches_alphalens_and_handles_degenerate_days():
    import alphalens as al

    df = _factor_frame(n_days=40, n_names=30, kind="random", seed=3)
    df.loc[df.index[:30], "prediction"] = 1.0  # day 1: constant prediction -> undefined, left out
    df = df.drop(df.index[35:58])  # day 2: only 7 names; still defined
    df.loc[df.index[30:35], "label"] = df["label"].iloc[30]  # day 2: ties in the label
    ic = daily_ic(df)
    assert df["date"].iloc[0] not in ic.index and len(ic) == df["date"].nunique() - 1
    fd = df.rename(columns={"ticker": "asset", "prediction": "factor", "label": "5D"}).set_index(["date", "asset"])
    fd["factor_quantile"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = al.performance.factor_information_coefficient(fd)["5D"].dropna()
    np.testing.assert_allclose(ic["rank_ic"].to_numpy(), expected.loc[ic.index].to_numpy(), rtol=1e-10, atol=1e-12)


def test_quintile_spread_on_a_hand_made_case():
    # 10 names: prediction = label = 0..9; top fifth {8, 9}, bottom {0, 1}: spread 8 (per label unit)
    df = pd.DataFrame(
        {
            "date": pd.Timestamp("2020-01-02"),
            "ticker": list("abcdefghij"),
            "prediction": np.arange(10.0),
            "label": np.arange(10.0),
        }
    )
    assert quintile_spread(df, label_scale=1.0) == pytest.approx(8.0)
    assert quintile_spread(df, label_scale=10.0) == pytest.approx(0.8)


def _per_date_qcut_spread(df: pd.DataFrame) -> pd.Series:
    """The reference: one pandas qcut per date (what daily_quintile_spread vectorises)."""

    def one_day(g: pd.DataFrame) -> float:
        if len(g) < 5 or g["prediction"].nunique() < 2:
            return np.nan
        q = pd.qcut(g["prediction"].rank(method="first"), 5, labels=False)
        return g["label"][q == 4].mean() - g["label"][q == 0].mean()

    return df.groupby("date")[["prediction", "label"]].apply(one_day).dropna().sort_index()


def test_daily_quintile_spread_equals_a_per_date_qcut():
    rng = np.random.default_rng(3)
    frames = []
    # cross-sections of every size from 1 to 23 names (bin edges fall differently for each),
    # ties in the prediction, one constant-prediction date, rows in shuffled order
    for i, n in enumerate(list(range(1, 24)) * 3):
        pred = rng.normal(size=n).round(1) if i % 4 == 0 else rng.normal(size=n)
        if i == 30:
            pred = np.ones(n)
        frames.append(
            pd.DataFrame(
                {
                    "date": pd.Timestamp("2020-01-01") + pd.Timedelta(days=i),
                    "ticker": [f"T{k}" for k in range(n)],
                    "prediction": pred,
                    "label": rng.normal(size=n),
                }
            )
        )
    df = pd.concat(frames).sample(frac=1.0, random_state=0).reset_index(drop=True)
    expected = _per_date_qcut_spread(df)
    got = daily_quintile_spread(df)
    assert len(expected) > 50 and list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-12)


def test_small_cross_section_skips_factor_metrics_with_a_reason():
    df = _factor_frame(n_names=1)
    m, skipped = factor_metrics(df, 1.0)
    assert set(m) == {"hit_rate"} and "cross-section too small" in skipped


def test_trading_calendar_counts_trading_days():
    dates = pd.bdate_range("2020-01-01", periods=30).delete([5, 17])  # two holidays
    cal = trading_calendar(dates)
    assert len(cal) == 28 and cal[5] == dates[5]
    assert cal[4] + cal.freq == cal[5]  # stepping one trading day skips the holiday


def test_fast_alphalens_functions_equal_alphalens_own():
    import alphalens as al

    bars = synthetic_bars(n_tickers=11, n_days=120)
    close = bars.pivot(index="date", columns="Name", values="close")
    close.index = pd.to_datetime(close.index)
    cal = trading_calendar(close.index)
    close.index = cal
    rng = np.random.default_rng(1)
    factor = close.iloc[10:100].stack().rename("factor")
    factor[:] = rng.normal(size=len(factor)).round(1)  # ties, as real predictions can have
    factor.index = factor.index.set_names(["date", "asset"])
    factor = factor.drop(factor.index[[0, 1, 2, 3, 4, 5, 6, 7, 8]])  # a date with two names
    perf, utils = al.performance, al.utils
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fd = utils.get_clean_factor_and_forward_returns(factor, close, quantiles=5, periods=(1, 5), max_loss=1.0)
        originals = {
            "factor_information_coefficient": perf.factor_information_coefficient,
            "quantile_turnover": perf.quantile_turnover,
            "demean_forward_returns": utils.demean_forward_returns,
        }

        def both(name, module, *args):
            with fast_alphalens():
                assert getattr(module, name) is not originals[name]
                got = getattr(module, name)(*args)
            return got, originals[name](*args)

        pairs = [both("factor_information_coefficient", perf, fd), both("demean_forward_returns", utils, fd)]
        for q in (1, 3, 5):
            for period in (1, 5):
                pairs.append(both("quantile_turnover", perf, fd["factor_quantile"], q, period))
    for name, original in originals.items():  # restored after the block
        assert getattr(perf if name != "demean_forward_returns" else utils, name) is original
    for got, expected in pairs:
        assert got.index.equals(expected.index) and got.shape == expected.shape
        if isinstance(got, pd.DataFrame):
            assert list(got.columns) == list(expected.columns)
            got, expected = got.select_dtypes("number"), expected.select_dtypes("number")
        else:
            assert got.name == expected.name
        np.testing.assert_allclose(
            got.to_numpy(float), expected.to_numpy(float), rtol=1e-10, atol=1e-12, equal_nan=True
        )


@pytest.mark.slow
def test_tear_sheet_on_synthetic_data(tmp_path):
    bars = synthetic_bars(n_tickers=12, n_days=160)
    close = bars.pivot(index="date", columns="Name", values="close")
    close.index = pd.to_datetime(close.index)
    close = close.drop(close.index[[40, 41]])  # market holidays in the calendar
    rng = np.random.default_rng(0)
    fwd = close.pct_change(5).shift(-5)
    rows = [(d, t, fwd.loc[d, t] + rng.normal(0, 0.01), fwd.loc[d, t]) for d in close.index[20:130] for t in close]
    df = pd.DataFrame(rows, columns=["date", "ticker", "prediction", "label"])
    # a date whose predictions all tie cannot be cut in 5 quantiles: alphalens drops it
    df.loc[df["date"] == close.index[50], "prediction"] = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = tear_sheet(df, close, (1, 5, 20), tmp_path / "ts")
    assert not [w for w in caught if "Skipping return periods" in str(w.message)]
    names = {f.name for f in files}
    # exactly the three alphalens sheets, each a real figure (not a blank white page)
    assert {n for n in names if n.endswith(".png")} == {"returns.png", "information.png", "turnover.png"}
    from PIL import Image

    for n in ("returns.png", "information.png", "turnover.png"):
        img = np.asarray(Image.open(tmp_path / "ts" / n).convert("L"))
        assert len(np.unique(img)) > 50 and img.shape[0] > 1000, (n, img.shape)
    assert {"information_table.csv", "returns_table.csv", "turnover_table.csv"} <= names
    stats = pd.read_csv(tmp_path / "ts" / "quantile_statistics.csv", index_col=0)
    assert list(stats.index) == [1, 2, 3, 4, 5] and stats.index.dtype.kind == "i"  # labels 1..5, not 1.0
    info = pd.read_csv(tmp_path / "ts" / "information_table.csv", index_col=0)
    assert list(info.index) == ["1D", "5D", "20D"] and info.loc["5D", "IC Mean"] > 0.5


@pytest.mark.slow
def test_train_run_logs_factor_metrics_and_tear_sheet_then_evaluate(tracking, csv_dir):
    cfg = TrainConfig(data=str(csv_dir), epochs=1, seq_len=10, horizon=5, cache_dir="")
    res = run_train(cfg)
    client = mlflow.tracking.MlflowClient()
    m = client.get_run(res["run_id"]).data.metrics
    for k in ("ic", "rank_ic", "icir", "ic_tstat", "hit_rate", "spread_q5_q1"):
        assert np.isfinite(m[f"test_{k}"]), k
    tear = [a.path for a in client.list_artifacts(res["run_id"], "tearsheet")]
    assert any(p.endswith(".png") for p in tear) and "tearsheet/information_table.csv" in tear
    preds = pd.read_parquet(mlflow.artifacts.download_artifacts(f"runs:/{res['run_id']}/predictions.parquet"))
    assert list(preds.columns) == ["date", "ticker", "prediction", "label"] and len(preds) > 0
    plots = [a.path for a in client.list_artifacts(res["run_id"], "plots")]
    assert sum(p.startswith("plots/pred_vs_actual_") for p in plots) == 3
    # the experiment's saved runs-table view names columns every train run has
    run = client.get_run(res["run_id"])
    view = client.get_experiment(run.info.experiment_id).tags["mlflow.sharedViewState.stocklab-train"]
    cols = json.loads(json.loads(view)["state"])["selectedColumns"]
    assert "metrics.`test_rank_ic`" in cols and "metrics.`test_mse`" in cols
    for col in cols:
        kind, key = col.split(".", 1)
        assert key.strip("`") in getattr(run.data, kind), col

    # (evaluate draws the same tear sheet as train, shown above: not drawn again here)
    ev = run_evaluate(EvaluateConfig(run_id=res["run_id"], tear_sheet=False, cache_dir=""))
    run = client.get_run(ev["run_id"])
    assert run.data.tags["stocklab.source_run_id"] == res["run_id"]
    assert run.data.metrics["test_mse"] == pytest.approx(m["test_mse"], rel=1e-5)
    assert run.data.metrics["test_ic"] == pytest.approx(m["test_ic"], rel=1e-4, abs=1e-6)
    # any model URI scores the same (evaluate -P model_uri=), traced back to the training run
    by_uri = run_evaluate(EvaluateConfig(model_uri=f"runs:/{res['run_id']}/model", tear_sheet=False, cache_dir=""))
    uri_run = client.get_run(by_uri["run_id"])
    assert uri_run.data.tags["stocklab.source_run_id"] == res["run_id"]
    assert uri_run.data.metrics["test_mse"] == run.data.metrics["test_mse"]
    ev_valid = run_evaluate(EvaluateConfig(run_id=res["run_id"], split="valid", tear_sheet=False, cache_dir=""))
    valid_run = client.get_run(ev_valid["run_id"])
    assert {"valid_mse", "valid_rank_ic", "valid_ls_sharpe_net"} <= set(valid_run.data.metrics)
    assert not any(k.startswith("test_") for k in valid_run.data.metrics)  # it scored the validation split
    for scored in (client.get_run(res["run_id"]), run, valid_run):
        assert_metrics_say_their_split(scored)
    with pytest.raises(StockLabError, match="run_id: no run 'nope'"):
        run_evaluate(EvaluateConfig(run_id="nope"))


def test_one_ticker_logs_mse_and_skips_factor_metrics(tracking, tmp_path):
    folder = write_ticker_csvs(synthetic_bars(n_tickers=1, n_days=300), tmp_path / "one")
    cfg = TrainConfig(data=str(folder), epochs=1, seq_len=10, horizon=5, cache_dir="")
    with pytest.raises(StockLabError, match="label: 'cs_rank' is a transform within each day's cross-section and "
                       "needs at least 5 tickers a day; the data has 1 \\(use recipe=raw or label=raw\\)"):  # fmt: skip
        run_train(cfg)  # the default recipe ranks each day's tickers
    res = run_train(cfg.with_recipe("raw"))
    run = mlflow.get_run(res["run_id"])
    assert np.isfinite(run.data.metrics["test_mse"]) and np.isfinite(run.data.metrics["test_mse_skill"])
    assert "test_ic" not in run.data.metrics
    assert "cross-section too small" in run.data.tags["factor_metrics_skipped"]
