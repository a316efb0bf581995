"""The prediction as a traded portfolio: a daily long-short book of overlapping tranches, net of costs.

Every day d, at the close, a new tranche is formed from that day's predictions: long the top
1/q of the day's tickers, short the bottom 1/q, equal weights (one unit long, one unit short;
`quantiles` = q, ties ranked by their mean rank). A tranche is held `hold` trading days, so the
portfolio on day d is the average of the last `hold` tranches, each carrying 1/hold of the
capital (during the first hold - 1 days part of it is idle). Formed at d's close, it earns day
d+1's close-to-close return. The traded weight on day d is sum_i |W[d, i] - W[d-1, i]| (the
drift of weights between closes is ignored), and trading costs `cost_bps` per unit traded,
charged to the next day's return.

Beside it, the long-only book of the top tranches minus the equal-weighted universe of the
day's scored tickers, held the same way (`top_excess`). The statistics are empyrical's
(annualised return and volatility, Sharpe ratio, maximum drawdown), on 252 trading days a year.
"""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd

DEFAULT_QUANTILES = 5
DEFAULT_COST_BPS = 10.0


def tranches(pred: pd.DataFrame, quantiles: int) -> dict[str, pd.DataFrame]:
    """Each day's new tranche as wide weights (dates x tickers): `long_short` (+1/n_top on the
    top 1/q, -1/n_bottom on the bottom 1/q), `top` (+1/n_top) and `universe` (+1/n). A day with
    fewer than `quantiles` names forms no tranche."""
    df = pred[["date", "ticker", "prediction"]].dropna()
    n = df.groupby("date")["prediction"].transform("size")
    pct = df.groupby("date")["prediction"].rank(method="average", pct=True)
    top = (pct > 1 - 1 / quantiles) & (n >= quantiles)
    bottom = (pct <= 1 / quantiles) & (n >= quantiles)

    def equal(mask: pd.Series) -> pd.DataFrame:
        w = mask.astype(float) / mask.groupby(df["date"]).transform("sum").replace(0, np.nan)
        return df.assign(w=w.fillna(0.0)).pivot(index="date", columns="ticker", values="w").fillna(0.0)

    top_w, bottom_w = equal(top), equal(bottom)
    universe = equal(n >= quantiles)
    return {"long_short": top_w - bottom_w, "top": top_w, "universe": universe}


def held(book: pd.DataFrame, hold: int) -> pd.DataFrame:
    """The portfolio of overlapping tranches: the mean of the last `hold` days' tranches."""
    return book.rolling(hold, min_periods=1).sum() / hold


def next_day_returns(close: pd.DataFrame, dates: pd.Index, tickers: pd.Index) -> pd.DataFrame:
    """close (dates x tickers, the whole calendar) -> each day's next close-to-close return,
    on the given days and tickers (0 where a ticker has no next price: it earns nothing)."""
    fwd = close.shift(-1) / close - 1.0
    return fwd.reindex(index=dates, columns=tickers).fillna(0.0)


def daily_portfolio(
    pred: pd.DataFrame,
    close: pd.DataFrame,
    quantiles: int = DEFAULT_QUANTILES,
    hold: int = 1,
    cost_bps: float = DEFAULT_COST_BPS,
) -> pd.DataFrame:
    """The daily series of the long-short book and the top-minus-universe book, indexed by the
    day the portfolio is formed (its return is earned over the next day): gross, cost, net,
    turnover, long, short (the legs' returns), top_excess."""
    books = tranches(pred, quantiles)
    dates = books["long_short"].index
    if not len(dates):
        return pd.DataFrame(columns=["gross", "cost", "net", "turnover", "long", "short", "top_excess"])
    w = {k: held(v, hold) for k, v in books.items()}
    r = next_day_returns(close, dates, w["long_short"].columns)

    def earned(weights: pd.DataFrame) -> pd.Series:
        return (weights * r).sum(axis=1)

    ls = w["long_short"]
    turnover = ls.diff().abs().sum(axis=1)
    turnover.iloc[0] = ls.iloc[0].abs().sum()  # the first day buys the whole book
    gross = earned(ls)
    cost = turnover * cost_bps / 1e4
    return pd.DataFrame(
        {
            "gross": gross,
            "cost": cost,
            "net": gross - cost,
            "turnover": turnover,
            "long": earned(ls.clip(lower=0.0)),
            "short": earned(ls.clip(upper=0.0)),
            "top_excess": earned(w["top"]) - earned(w["universe"]),
        }
    )


def portfolio_metrics(daily: pd.DataFrame, prefix: str = "") -> dict:
    """Annualised statistics of daily_portfolio's series (names sort together: ls_*)."""
    if daily.empty:
        return {}
    with np.errstate(invalid="ignore"):  # a book that lost everything has no annual return: NaN
        stats = _stats(daily)
    return {f"{prefix}{k}": float(v) for k, v in stats.items()}


def _stats(daily: pd.DataFrame) -> dict:
    return {
        "ls_return_ann": empyrical.annual_return(daily["gross"]),
        "ls_return_ann_net": empyrical.annual_return(daily["net"]),
        "ls_vol_ann": empyrical.annual_volatility(daily["gross"]),
        "ls_sharpe": empyrical.sharpe_ratio(daily["gross"]),
        "ls_sharpe_net": empyrical.sharpe_ratio(daily["net"]),
        "ls_max_drawdown": empyrical.max_drawdown(daily["net"]),
        "ls_turnover": daily["turnover"].mean(),
        "top_excess_ann": empyrical.annual_return(daily["top_excess"]),
    }
