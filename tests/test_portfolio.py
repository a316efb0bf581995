"""The long-short book of overlapping tranches, net of costs, against a direct computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stocklab.portfolio import daily_portfolio, portfolio_metrics


def _panel(n_tickers=12, n_days=60, seed=0):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_days)
    tickers = [f"T{i:02d}" for i in range(n_tickers)]
    close = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n_days, n_tickers)), axis=0)), dates, tickers)
    pred = pd.DataFrame(
        [(d, t, rng.normal()) for d in dates[5:50] for t in tickers if rng.random() > 0.1],
        columns=["date", "ticker", "prediction"],
    )
    return pred, close


def _direct(pred, close, q, hold, cost_bps):
    """The same book written out day by day: each day's tranche from its own ranking, the
    portfolio the sum of the last `hold` tranches over hold, next-day returns, costs on the
    weight traded against yesterday's book drifted by its returns."""
    days = sorted(pred["date"].unique())
    tickers = list(close.columns)
    tranche = {}
    for d in days:
        day = pred[pred["date"] == d].set_index("ticker")["prediction"]
        order = day.rank(method="average", pct=True)
        top, bottom = order[order > 1 - 1 / q].index, order[order <= 1 / q].index
        w = pd.Series(0.0, index=tickers)
        w[top] += 1 / len(top)
        w[bottom] -= 1 / len(bottom)
        tranche[d] = w
    rows, prev = [], pd.Series(0.0, index=tickers)
    for i, d in enumerate(days):
        book = sum(tranche[days[j]] for j in range(max(0, i - hold + 1), i + 1)) / hold
        k = close.index.get_loc(d)
        ret = (close.iloc[k + 1] / close.iloc[k] - 1.0) if k + 1 < len(close) else pd.Series(0.0, index=tickers)
        gross = float((book * ret.fillna(0.0)).sum())
        traded = float((book - prev).abs().sum())  # against yesterday's book as the day's returns moved it
        rows.append((d, gross, gross - traded * cost_bps / 1e4, traded))
        prev = book * (1 + ret.fillna(0.0)) / (1 + gross)
    return pd.DataFrame(rows, columns=["date", "gross", "net", "turnover"]).set_index("date")


@pytest.mark.parametrize("hold", [1, 5])
def test_the_book_equals_a_direct_computation_costs_included(hold):
    pred, close = _panel()
    daily = daily_portfolio(pred, close, quantiles=5, hold=hold, cost_bps=10.0)
    expected = _direct(pred, close, 5, hold, 10.0)
    for col in ("gross", "net", "turnover"):
        np.testing.assert_allclose(daily[col].to_numpy(), expected[col].to_numpy(), rtol=0, atol=1e-9)
    # the statistics, written out: 252 trading days a year
    m = portfolio_metrics(daily)
    net, gross = expected["net"], expected["gross"]
    assert m["ls_sharpe_net"] == pytest.approx(net.mean() / net.std(ddof=1) * np.sqrt(252), abs=1e-9)
    assert m["ls_sharpe"] == pytest.approx(gross.mean() / gross.std(ddof=1) * np.sqrt(252), abs=1e-9)
    assert m["ls_return_ann"] == pytest.approx((1 + gross).prod() ** (252 / len(gross)) - 1, abs=1e-9)
    wealth = (1 + net).cumprod()
    assert m["ls_max_drawdown"] == pytest.approx((wealth / np.maximum.accumulate(np.r_[1.0, wealth])[1:] - 1).min(),
                                                 abs=1e-9)  # fmt: skip
    assert m["ls_turnover"] == pytest.approx(expected["turnover"].mean(), abs=1e-12)
    # holding longer trades less
    if hold > 1:
        assert m["ls_turnover"] < portfolio_metrics(daily_portfolio(pred, close, 5, 1, 10.0))["ls_turnover"]


def test_a_perfect_forecast_earns_and_costs_only_lower_it():
    _, close = _panel(n_days=80)
    fwd = (close.shift(-1) / close - 1).stack().rename("prediction").reset_index()
    fwd.columns = ["date", "ticker", "prediction"]
    fwd = fwd.dropna()
    free = portfolio_metrics(daily_portfolio(fwd, close, 5, 1, 0.0))
    paid = portfolio_metrics(daily_portfolio(fwd, close, 5, 1, 25.0))
    assert free["ls_sharpe"] > 5 and free["ls_sharpe_net"] == pytest.approx(free["ls_sharpe"])
    assert paid["ls_sharpe"] == pytest.approx(free["ls_sharpe"]) and paid["ls_sharpe_net"] < free["ls_sharpe_net"]
    assert free["top_excess_ann"] > 0


def test_a_train_run_logs_the_book_of_its_test_predictions(tracking, tmp_path):
    """The run's ls_* metrics and portfolio.parquet are the book of its own predictions.parquet
    traded at the data's closes (horizon 3, so tranches overlap), within 1e-9."""
    import mlflow
    from conftest import long_bars, synthetic_bars

    from stocklab.config import TrainConfig
    from stocklab.pipeline.fitting import train_in_run

    bars = pd.concat([synthetic_bars(n_tickers=1, n_days=220, seed=s).assign(Name=f"S{s}") for s in range(8)])
    path = tmp_path / "bars.parquet"
    long_bars(bars).to_parquet(path)
    cfg = TrainConfig(data=str(path), model="linear", epochs=1, seq_len=5, horizon=3, cost_bps=15.0, cache_dir="",
                      tear_sheet=False)  # fmt: skip
    with mlflow.start_run() as run:
        train_in_run(cfg)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    pred = pd.read_parquet(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/predictions.parquet"))
    close = long_bars(bars).pivot(index="date", columns="ticker", values="close")
    expected = _direct(pred, close, 5, 3, 15.0)
    net = expected["net"]
    assert logged["test_ls_sharpe_net"] == pytest.approx(net.mean() / net.std(ddof=1) * np.sqrt(252), abs=1e-9)
    assert logged["test_ls_turnover"] == pytest.approx(expected["turnover"].mean(), abs=1e-9)
    book = pd.read_parquet(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/portfolio.parquet"))
    np.testing.assert_allclose(book["net"].to_numpy(), net.to_numpy(), rtol=0, atol=1e-9)
    for key in ("valid_ls_sharpe_net", "test_ls_max_drawdown", "test_ls_return_ann", "test_top_excess_ann"):
        assert np.isfinite(logged[key]), key
    assert "plots/portfolio.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}


def _topk_direct(pred, topk, n_drop):
    """TopkDropout as Qlib's TopkDropoutStrategy.generate_trade_decision writes it (method_sell
    bottom, method_buy top, hold_thresh 1): the held names by score, the best not held, the
    combined bottom n_drop sold, as many of the best not held bought."""
    holdings, out = [], {}
    for d, day in pred.groupby("date", sort=True):
        score = day.set_index("ticker")["prediction"].sort_values(ascending=False, kind="stable")
        k = min(topk, max(1, len(score) // 5))
        last = [t for t in score.index if t in holdings]  # by today's score
        if not last:
            holdings = list(score.index[:k])
        else:
            today = [t for t in score.index if t not in last][: n_drop + k - len(last)]
            comb = [t for t in score.index if t in last or t in today]
            sell = [t for t in last if t in comb[-n_drop:]]
            buy = today[: len(sell) + k - len(last)]
            holdings = [t for t in last if t not in sell] + buy
        out[d] = sorted(holdings)
    return out


def test_topk_dropout_holds_k_names_replacing_at_most_n_drop_a_day():
    from stocklab.portfolio import topk_dropout

    pred, _ = _panel(n_tickers=40, n_days=60)
    weights = topk_dropout(pred, topk=6, n_drop=2)
    expected = _topk_direct(pred, 6, 2)
    for d, names in expected.items():
        row = weights.loc[d]
        assert sorted(row[row > 0].index) == names and np.allclose(row[row > 0], 1 / len(names))
    # with a prediction for every name every day: exactly k held, at most n_drop replaced a day
    rng = np.random.default_rng(3)
    full = pd.DataFrame([(d, f"T{i:02d}", rng.normal()) for d in range(40) for i in range(40)],
                        columns=["date", "ticker", "prediction"])  # fmt: skip
    held = (topk_dropout(full, topk=6, n_drop=2) > 0).astype(int)
    changes = held.diff().clip(lower=0).sum(axis=1).iloc[1:]
    assert (held.sum(axis=1) == 6).all() and changes.max() <= 2 and changes.sum() > 0


def test_beta_alpha_and_the_topk_book_against_the_universe():
    """A book that is the universe's long leg twice over has beta ~2; the topk book of a perfect
    forecast beats the universe, and costs lower its excess."""
    _, close = _panel(n_tickers=40, n_days=120)
    fwd = (close.shift(-1) / close - 1).stack().rename("prediction").reset_index()
    fwd.columns = ["date", "ticker", "prediction"]
    free = portfolio_metrics(daily_portfolio(fwd.dropna(), close, 5, 1, 0.0, topk=8, n_drop=8))
    paid = portfolio_metrics(daily_portfolio(fwd.dropna(), close, 5, 1, 25.0, topk=8, n_drop=8))
    assert free["topk_excess_ann_net"] > 0.5 and free["topk_ir"] > 3
    assert paid["topk_excess_ann_net"] < free["topk_excess_ann_net"] and paid["topk_turnover"] == free["topk_turnover"]
    daily = daily_portfolio(fwd.dropna(), close, 5, 1, 0.0)
    np.testing.assert_allclose(portfolio_metrics(daily.assign(net=2 * daily["universe"]))["ls_beta"], 2.0, rtol=1e-9)


def test_the_topk_book_beta_and_alpha_equal_a_direct_computation():
    """The topk book (held names from _topk_direct, equal weights, next-day returns, costs on the
    weight traded against yesterday's drifted book), its excess over the equal-weighted universe,
    and the long-short book's beta and alpha (covariance over variance; the mean daily residual
    compounded over 252 days), written out with pandas, within 1e-9."""
    pred, close = _panel(n_tickers=40, n_days=90)
    cost = 10.0
    daily = daily_portfolio(pred, close, 5, 1, cost, topk=6, n_drop=2)
    holdings, tickers = _topk_direct(pred, 6, 2), list(close.columns)
    rows, prev = [], pd.Series(0.0, index=tickers)
    for d, names in holdings.items():
        k = close.index.get_loc(d)
        ret = (close.iloc[k + 1] / close.iloc[k] - 1.0).fillna(0.0)
        book = pd.Series(0.0, index=tickers)
        book[names] = 1.0 / len(names)
        traded = float((book - prev).abs().sum())
        gross = float((book * ret).sum())
        scored = pred.loc[pred["date"] == d, "ticker"]
        universe = float(ret[scored].mean())
        rows.append((d, gross - traded * cost / 1e4, traded, universe))
        prev = book * (1 + ret) / (1 + gross)
    expected = pd.DataFrame(rows, columns=["date", "net", "turnover", "universe"]).set_index("date")
    np.testing.assert_allclose(daily["topk_net"].to_numpy(), expected["net"].to_numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(daily["topk_turnover"].to_numpy(), expected["turnover"].to_numpy(), rtol=0, atol=1e-9)
    excess = expected["net"] - expected["universe"]
    np.testing.assert_allclose(daily["topk_excess_net"].to_numpy(), excess.to_numpy(), rtol=0, atol=1e-9)
    m = portfolio_metrics(daily)
    assert m["topk_ir"] == pytest.approx(excess.mean() / excess.std(ddof=1) * np.sqrt(252), abs=1e-9)
    assert m["topk_excess_ann_net"] == pytest.approx((1 + excess).prod() ** (252 / len(excess)) - 1, abs=1e-9)
    assert m["topk_turnover"] == pytest.approx(expected["turnover"].mean(), abs=1e-12)
    ls, u = daily["net"], expected["universe"]
    beta = ((ls - ls.mean()) * (u - u.mean())).mean() / ((u - u.mean()) ** 2).mean()
    assert m["ls_beta"] == pytest.approx(beta, abs=1e-9)
    assert m["ls_alpha_ann"] == pytest.approx((1 + (ls - beta * u).mean()) ** 252 - 1, abs=1e-9)
