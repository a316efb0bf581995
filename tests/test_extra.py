"""The user's own columns (`extra`) and which features a model used (importance.py)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA, write_ticker_csvs

from stocklab.config import StockLabError, TrainConfig
from stocklab.data import ReadOptions, clean_bars, load_panel
from stocklab.features import build_panel, resolve_feature_set
from stocklab.pipeline.inputs import prepare


def _with_columns(bars: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return bars.assign(pe_ratio=rng.normal(15, 3, len(bars)), Sentiment=rng.normal(0, 1, len(bars)), sector="tech")


def test_named_extra_columns_are_read_beside_the_bars_and_a_missing_one_is_nan_and_counted(tmp_path, bars):
    df = _with_columns(bars)
    folder = write_ticker_csvs(df, tmp_path / "csvs")
    lacking = folder / "T01_data.csv"
    pd.read_csv(lacking).drop(columns="pe_ratio").to_csv(lacking, index=False)
    raw, report = load_panel(str(folder), "", ReadOptions(extra="pe_ratio,sentiment"))
    # matched case-insensitively, kept under the name asked for
    assert {"pe_ratio", "sentiment"} <= set(raw.columns) and "sector" not in raw.columns
    assert raw.loc[raw["ticker"] == "T01", "pe_ratio"].isna().all()
    assert raw.loc[raw["ticker"] == "T00", "pe_ratio"].notna().all()
    assert report.extra == ["pe_ratio", "sentiment"] and report.extra_missing == {"pe_ratio": 1}
    assert len(raw) == len(df)  # a NaN extra value drops no bar
    plain, _ = load_panel(str(folder), "", ReadOptions())
    assert "pe_ratio" not in plain.columns  # without `extra` nothing changes


def test_extra_all_keeps_every_numeric_non_bar_column(tmp_path, bars):
    folder = write_ticker_csvs(_with_columns(bars), tmp_path / "csvs")
    raw, report = load_panel(str(folder), "", ReadOptions(extra="all"))
    assert report.extra == ["pe_ratio", "Sentiment"]  # a text column (sector) is not a feature


@pytest.mark.parametrize(
    "extra, message",
    [
        ("close", "extra: 'close' is a bar, date or ticker column"),
        ("pe_ratio,pe_ratio", "must be 'all' or distinct"),
    ],
)
def test_bad_extra_values_are_one_line_errors_before_reading(extra, message):
    with pytest.raises(StockLabError, match=message):
        TrainConfig(extra=extra).validate()


def test_an_extra_column_no_file_has_is_an_error_naming_it(tmp_path, bars):
    folder = write_ticker_csvs(bars, tmp_path / "csvs")
    with pytest.raises(StockLabError, match="extra: column 'short_interest' is in none of the files"):
        load_panel(str(folder), "", ReadOptions(extra="short_interest"))
    with pytest.raises(StockLabError, match="extra: the built-in sample holds closes only"):
        load_panel("sample", "", ReadOptions(extra="pe_ratio"))


def test_an_infinite_extra_value_is_unknown_that_day_not_a_dropped_bar(bars):
    df = _with_columns(bars)
    df.loc[5, "pe_ratio"] = np.inf
    clean, report = clean_bars(df, "bars", ReadOptions(extra="pe_ratio"))
    assert len(clean) == len(df) and clean["pe_ratio"].isna().sum() == 1
    assert report.repaired["extra_infinite_to_nan"] == 1


def test_a_model_with_extra_columns_needs_them_in_its_input(bars):
    with pytest.raises(StockLabError, match="missing column 'pe_ratio', one of the model's extra columns"):
        clean_bars(bars, "model input", ReadOptions(extra="pe_ratio"))


def test_extra_columns_join_any_feature_set_and_their_gaps_keep_the_window(bars):
    df = _with_columns(bars)
    clean, _ = clean_bars(df, "bars", ReadOptions(extra="pe_ratio"))
    assert resolve_feature_set("relative", list(clean.columns)) == "relative+extra"
    assert resolve_feature_set("extra", list(clean.columns)) == "extra"
    with pytest.raises(StockLabError, match="features: 'extra' is the user's own columns"):
        resolve_feature_set("extra", ["close"])
    clean.loc[clean["ticker"] == "T02", "pe_ratio"] = np.nan  # a ticker without the column
    panel = build_panel(clean, "relative+extra", horizon=5, label_scale=1.0)
    assert panel.feature_names[-1] == "pe_ratio" and panel.optional_cols == [len(panel.feature_names) - 1]
    from stocklab.windows import valid_window_mask

    ok = valid_window_mask(panel.X, 10, panel.optional_cols)
    assert ok[panel.tickers.index("T02")].sum() == ok[panel.tickers.index("T00")].sum() > 0


def test_extra_values_after_day_t_never_change_a_feature_up_to_t(bars):
    df = _with_columns(bars)
    clean, _ = clean_bars(df, "bars", ReadOptions(extra="pe_ratio"))
    cut = sorted(clean["date"].unique())[150]
    later = clean.assign(pe_ratio=np.where(clean["date"] > cut, 1e3, clean["pe_ratio"]))
    a = build_panel(clean, "extra", horizon=5, label_scale=1.0)
    b = build_panel(later, "extra", horizon=5, label_scale=1.0)
    upto = a.dates <= cut
    np.testing.assert_array_equal(a.X[:, upto], b.X[:, upto])
    assert not np.array_equal(a.X[:, ~upto], b.X[:, ~upto])


def test_permutation_importance_ranks_the_planted_column_first_and_restores_the_panel(tmp_path):
    """A linear model on a planted column: shuffling it within days destroys the rank IC, a
    pure-noise column costs nothing, and the windows are unchanged afterwards."""
    from conftest import synthetic_bars

    from stocklab.importance import permutation_importance
    from stocklab.models import build_model, model_config
    from stocklab.training import fit, valid_rank_ic

    bars = synthetic_bars(n_tickers=12, n_days=400, seed=3)
    bars = bars.sort_values(["Name", "date"]).reset_index(drop=True)
    rng = np.random.default_rng(1)
    fwd = bars.groupby("Name")["close"].shift(-5) / bars["close"] - 1  # the label's own horizon
    bars["planted"] = fwd.fillna(0) + rng.normal(0, 0.02, len(bars))
    bars["noise"] = rng.normal(0, 1, len(bars))
    folder = write_ticker_csvs(bars, tmp_path / "csvs")
    cfg = TrainConfig(data=str(folder), model="linear", extra="planted,noise", features="extra", seq_len=1,
                      horizon=5, cache_dir="", label="raw", batching="random", epochs=30, lr=1e-2)  # fmt: skip
    prep = prepare(cfg)
    torch.manual_seed(0)
    model = build_model("linear", prep.ws.n_features, 1, model_config("linear"))
    fit(model, prep.ws, cfg)
    print(f"rank IC {valid_rank_ic(model, prep.ws):.3f}")
    before = prep.ws.X.clone()
    table = permutation_importance(model, prep.ws, prep.panel.feature_names, 4096, budget_s=30.0)
    assert torch_equal(before, prep.ws.X)
    assert list(table["feature"]) == ["planted", "noise"]
    assert table["permutation_drop"].iloc[0] > 0.3 and abs(table["permutation_drop"].iloc[1]) < 0.05
    assert table.attrs["base_rank_ic"] > 0.3


def torch_equal(a, b) -> bool:
    return bool(torch.equal(a, b))


def test_lgbm_gain_importance_is_summed_over_the_window_per_feature(tmp_path, bars):
    import torch

    from stocklab.models import build_model, model_config
    from stocklab.training import fit

    cfg = TrainConfig(data=str(write_ticker_csvs(bars, tmp_path / "c")), model="lgbm", seq_len=4, horizon=5,
                      cache_dir="", recipe="raw", label="raw", batching="random", select="loss")  # fmt: skip
    prep = prepare(cfg)
    mcfg = model_config("lgbm", {"n_estimators": 20, "rounds_per_epoch": 10, "min_data_in_leaf": 20})
    model = build_model("lgbm", prep.ws.n_features, 4, mcfg)
    fit(model, prep.ws, TrainConfig(epochs=2))
    gain = model.gain_importance(prep.ws.n_features)
    per_column = model.booster.feature_importance("gain", iteration=model.best_iteration)
    assert gain.shape == (prep.ws.n_features,) and np.isclose(gain.sum(), per_column.sum())
    assert np.isclose(gain[0], per_column[0 :: prep.ws.n_features].sum())
    assert torch.is_tensor(prep.ws.X)


@pytest.mark.slow
def test_a_planted_extra_column_in_real_files_is_found_and_ranked_first(tmp_path, tracking, shared_cache):
    """40 real tickers with one planted factor column (the 5-day forward return's daily rank
    plus noise) and one noise column: lgbm on the latest day's row (seq_len=1) with
    extra=<both> reaches a test rank IC within 30% of the column's own, and the run's
    feature_importance.csv ranks the planted column first."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    rng = np.random.default_rng(0)
    files = sorted(SHARED_DATA.glob("*.csv"))[:40]
    df = pd.concat([pd.read_csv(f) for f in files]).sort_values(["Name", "date"]).reset_index(drop=True)
    fwd = df.groupby("Name")["close"].shift(-5) / df["close"] - 1
    rank = fwd.groupby(df["date"]).rank(pct=True) - 0.5
    df["planted"] = rank.fillna(0) + rng.normal(0, 0.5, len(df))
    df["noise"] = rng.normal(0, 1, len(df))
    folder = write_ticker_csvs(df, tmp_path / "planted")
    from stocklab.jobs.train import run_train

    cfg = TrainConfig(data=str(folder), model="lgbm", extra="planted,noise", seq_len=1, horizon=5,
                      cache_dir=shared_cache, tear_sheet=False)  # fmt: skip
    result = run_train(cfg)
    run = mlflow.get_run(result["run_id"])
    pred = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions.parquet")
    )
    own = df.assign(date=pd.to_datetime(df["date"]), ticker=df["Name"])[["date", "ticker", "planted"]]
    test = pred.merge(own, on=["date", "ticker"])
    column_ic = test.groupby("date").apply(lambda d: d["planted"].corr(d["label"], method="spearman")).mean()
    print(f"planted column: its own test rank IC {column_ic:.4f}, the model's {result['test_rank_ic']:.4f}")
    assert abs(result["test_rank_ic"] - column_ic) <= 0.3 * column_ic, (result["test_rank_ic"], column_ic)
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="feature_importance.csv")
    )
    print(table.head(4).to_string())
    assert table["feature"].iloc[0] == "planted" and table["gain"].idxmax() == table.index[0]
    # served on raw bars with the user's columns: the training run's predictions; without them, an error
    served = mlflow.pyfunc.load_model(run.data.tags["stocklab.model_uri"])
    five = df[df["Name"].isin(sorted(df["Name"].unique())[:5])].groupby("Name").tail(300)
    five = five.rename(columns={"Name": "ticker"})
    out = served.predict(five, params={"all_dates": True})
    both = out.merge(pred, on=["date", "ticker"], suffixes=("_served", ""))
    assert len(both) > 100 and np.allclose(both["prediction_served"], both["prediction"], atol=1e-6)
    with pytest.raises(Exception, match="planted"):
        served.predict(five.drop(columns="planted"))
    assert "plots/feature_importance.png" in {
        a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")
    }


def test_the_names_features_reserves_are_the_ones_data_reads():
    from stocklab import data, features

    assert tuple(features.BAR_COLS) == tuple(data.VALUE_COLS)
    assert set(features.READ_NAMES) == {*data.DATE_NAMES, *data.TICKER_NAMES, "adj close"}
