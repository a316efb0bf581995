"""The prediction as a traded portfolio: a daily long-short book of overlapping tranches, net of costs.

Every day d, at the close, a new tranche is formed from that day's predictions: long the top
1/q of the day's tickers, short the bottom 1/q, equal weights (one unit long, one unit short;
`quantiles` = q, ties ranked by their mean rank). A tranche is held `hold` trading days, so the
portfolio on day d is the average of the last `hold` tranches, each carrying 1/hold of the
capital (during the first hold - 1 days part of it is idle). Formed at d's close, it earns day
d+1's close-to-close return. The traded weight on day d is sum_i |W[d, i] - D[d, i]|, where
D is yesterday's book after the day's returns moved it (weights drift between closes: D[d, i] =
W[d-1, i] (1 + r[i]) / (1 + sum_j W[d-1, j] r[j])), and trading costs `cost_bps` per unit
traded, charged to the next day's return. This net book is the one every report and plot uses.

Against the equal-weighted universe of the day's scored tickers (`universe`, held the same way):
the long-short book's beta and annualised alpha (empyrical), and the long-only top tranches
minus the universe (`top_excess`).

The long-only `topk` book, as a fund runs it (Qlib's TopkDropout): hold the `topk` best-ranked
names in equal weights (at most a fifth of a day's tickers), and each day sell at most `n_drop`
of them, those ranked lowest among the held names and the best not held, for as many of the
best not held; a held name without a prediction that day is sold. Its excess over the universe
net of the same costs gives `topk_excess_ann_net`, `topk_ir` (annualised mean over volatility of
the daily excess), `topk_max_drawdown` (of the cumulative excess) and `topk_turnover`.
The statistics are empyrical's, on 252 trading days a year.
"""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd

DEFAULT_QUANTILES = 5
DEFAULT_COST_BPS = 10.0
DEFAULT_TOPK, DEFAULT_N_DROP = 50, 5  # Qlib's TopkDropout benchmark settings
COLUMNS = ["gross", "cost", "net", "turnover", "long", "short", "top_excess", "universe", "topk_net",
           "topk_turnover", "topk_excess_net"]  # fmt: skip


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


def traded(weights: pd.DataFrame, r: pd.DataFrame) -> pd.Series:
    """sum_i |W[d, i] - D[d, i]| with D yesterday's weights drifted by the returns earned since
    (module docstring); the first day buys its whole book."""
    prev = weights.shift(1).fillna(0.0)
    moved = prev * (1.0 + r.shift(1).fillna(0.0))  # r is indexed by the day it is earned from
    drifted = moved.div((1.0 + (prev * r.shift(1).fillna(0.0)).sum(axis=1)), axis=0)
    return (weights - drifted).abs().sum(axis=1)


def topk_dropout(pred: pd.DataFrame, topk: int, n_drop: int) -> pd.DataFrame:
    """Qlib's TopkDropout holdings as equal weights (dates x tickers), module docstring."""
    df = pred[["date", "ticker", "prediction"]].dropna()
    dates, day = np.unique(df["date"].to_numpy(), return_inverse=True)
    tickers, name = np.unique(df["ticker"].to_numpy(), return_inverse=True)
    # rows by day, best prediction first, ties in their given order (lexsort is stable); plain
    # lists and dicts per day, since this runs for every scored split of every run
    order = np.lexsort((-df["prediction"].to_numpy(), day))
    start = np.searchsorted(day[order], np.arange(len(dates) + 1))
    weights = np.zeros((len(dates), len(tickers)))
    held: list[int] = []
    for d in range(len(dates)):
        ranked = name[order[start[d] : start[d + 1]]].tolist()  # ticker indices, best first
        k = min(topk, max(1, len(ranked) // 5))
        rank = {t: i for i, t in enumerate(ranked)}
        held = [t for t in held if t in rank]  # a name without a prediction is sold
        if not held:
            held = ranked[:k]
        else:
            holding = set(held)
            new = [t for t in ranked if t not in holding][: n_drop + max(0, k - len(held))]
            combined = sorted(held + new, key=rank.__getitem__)
            sell = holding & set(combined[-n_drop:]) if n_drop else set()
            keep = [t for t in held if t not in sell]
            held = keep + new[: max(0, k - len(keep))]
        weights[d, held] = 1.0 / len(held)
    return pd.DataFrame(weights, index=pd.Index(dates), columns=tickers)


def daily_portfolio(
    pred: pd.DataFrame,
    close: pd.DataFrame,
    quantiles: int = DEFAULT_QUANTILES,
    hold: int = 1,
    cost_bps: float = DEFAULT_COST_BPS,
    topk: int = DEFAULT_TOPK,
    n_drop: int = DEFAULT_N_DROP,
) -> pd.DataFrame:
    """The daily series of the books, indexed by the day the portfolio is formed (its return is
    earned over the next day): the long-short book's gross, cost, net, turnover, long, short
    (the legs' returns); top_excess; the universe's return; the topk book's net return, turnover
    and net excess over the universe."""
    books = tranches(pred, quantiles)
    dates = books["long_short"].index
    if not len(dates):
        return pd.DataFrame(columns=COLUMNS)
    w = {k: held(v, hold) for k, v in books.items()}
    r = next_day_returns(close, dates, w["long_short"].columns)

    def earned(weights: pd.DataFrame) -> pd.Series:
        return (weights * r).sum(axis=1)

    ls = w["long_short"]
    turnover = traded(ls, r)
    gross = earned(ls)
    cost = turnover * cost_bps / 1e4
    universe = earned(w["universe"])
    top = topk_dropout(pred, topk, n_drop).reindex(index=dates, columns=ls.columns).fillna(0.0)
    top_turnover = traded(top, r)
    top_net = earned(top) - top_turnover * cost_bps / 1e4
    return pd.DataFrame(
        {
            "gross": gross,
            "cost": cost,
            "net": gross - cost,
            "turnover": turnover,
            "long": earned(ls.clip(lower=0.0)),
            "short": earned(ls.clip(upper=0.0)),
            "top_excess": earned(w["top"]) - universe,
            "universe": universe,
            "topk_net": top_net,
            "topk_turnover": top_turnover,
            "topk_excess_net": top_net - universe,
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
        # the net long-short book against the equal-weighted universe: how much is the market's
        "ls_beta": empyrical.beta(daily["net"], daily["universe"]),
        "ls_alpha_ann": empyrical.alpha(daily["net"], daily["universe"]),
        # the long-only topk book's excess over the universe, net of costs
        "topk_excess_ann_net": empyrical.annual_return(daily["topk_excess_net"]),
        "topk_ir": _information_ratio(daily["topk_excess_net"]),
        "topk_max_drawdown": empyrical.max_drawdown(daily["topk_excess_net"]),
        "topk_turnover": daily["topk_turnover"].mean(),
    }


def _information_ratio(excess: pd.Series) -> float:
    """Annualised mean over volatility of a daily excess return (NaN without variation)."""
    sd = excess.std(ddof=1)
    return float(excess.mean() / sd * np.sqrt(252)) if sd > 0 else float("nan")
