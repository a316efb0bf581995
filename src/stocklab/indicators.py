"""The CNN-TA image: 15 technical indicators x 15 look-backs (6..20 days) per (ticker, day).

TA-Lib computes every indicator it has; written here by hand only what it lacks: the Hull
moving average (HMA) and Chaikin money flow (CMF). All are causal (day t uses bars up to t).
Price-level indicators are expressed relative to the close (x / close - 1) and the oscillators
are used as they are, so images are comparable across tickers; the train-fitted scaler does
the rest. PSAR has no look-back: its acceleration step grows with the look-back (0.002 n).
"""

from __future__ import annotations

import numpy as np
import talib
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

INDICATORS = (
    "rsi",
    "willr",
    "wma",
    "ema",
    "sma",
    "hma",
    "tema",
    "cci",
    "cmo",
    "macd",
    "ppo",
    "roc",
    "cmf",
    "dmi",
    "psar",
)
LOOKBACKS = tuple(range(6, 21))


def hma(close: np.ndarray, n: int) -> np.ndarray:
    """Hull moving average: WMA(2 WMA(n/2) - WMA(n), sqrt(n))."""
    raw = 2 * talib.WMA(close, max(n // 2, 1)) - talib.WMA(close, n)
    out = np.full_like(close, np.nan)
    first = np.argmax(np.isfinite(raw)) if np.isfinite(raw).any() else len(raw)
    if len(raw) - first >= int(np.sqrt(n)):
        out[first:] = talib.WMA(raw[first:], int(np.sqrt(n)))  # TA-Lib stops at a leading NaN
    return out


def cmf(high, low, close, volume, n: int) -> np.ndarray:
    """Chaikin money flow: sum(money-flow volume, n) / sum(volume, n)."""
    rng = high - low
    mfm = np.where(rng > 0, ((close - low) - (high - close)) / np.where(rng > 0, rng, 1.0), 0.0)
    mfv = mfm * volume
    csum = lambda a: np.concatenate([[0.0], np.cumsum(a)])  # noqa: E731
    cv, cm = csum(volume), csum(mfv)
    out = np.full_like(close, np.nan)
    vol_n = cv[n:] - cv[:-n]
    out[n - 1 :] = np.where(vol_n > 0, (cm[n:] - cm[:-n]) / np.where(vol_n > 0, vol_n, 1.0), 0.0)
    return out


def indicator(name: str, o, h, lo, c, v, n: int) -> np.ndarray:
    if name == "rsi":
        return talib.RSI(c, n)
    if name == "willr":
        return talib.WILLR(h, lo, c, n)
    if name in ("wma", "ema", "sma", "tema"):
        return getattr(talib, name.upper())(c, n) / c - 1.0
    if name == "hma":
        return hma(c, n) / c - 1.0
    if name == "cci":
        return talib.CCI(h, lo, c, n)
    if name == "cmo":
        return talib.CMO(c, n)
    if name == "macd":
        return talib.MACD(c, fastperiod=n, slowperiod=2 * n, signalperiod=9)[0] / c
    if name == "ppo":
        return talib.PPO(c, fastperiod=n, slowperiod=2 * n, matype=1)
    if name == "roc":
        return talib.ROC(c, n)
    if name == "cmf":
        return cmf(h, lo, c, v, n)
    if name == "dmi":
        return talib.DX(h, lo, c, n)
    if name == "psar":
        return talib.SAR(h, lo, acceleration=0.002 * n, maximum=0.2) / c - 1.0
    raise ValueError(name)


def technical_image(o, h, lo, c, v) -> np.ndarray:
    """(D, 15 * 15) features of one ticker: row-major (indicator, look-back); NaN where a
    price is missing or the indicator is still warming up."""
    D = len(c)
    out = np.full((D, len(INDICATORS) * len(LOOKBACKS)), np.nan)
    known = np.isfinite(c) & np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(v)
    if known.sum() < max(LOOKBACKS) * 3:
        return out
    # TA-Lib needs gap-free input: compute on the known days, then put the values back
    idx = np.nonzero(known)[0]
    args = [np.ascontiguousarray(a[idx], dtype=np.float64) for a in (o, h, lo, c, v)]
    cols = []
    for name in INDICATORS:
        for n in LOOKBACKS:
            cols.append(indicator(name, *args, n))
    out[idx] = np.stack(cols, axis=1)
    return out


def cluster_order(X: np.ndarray, train_end: int) -> list[int]:
    """Order of the 15 indicator rows by hierarchical clustering of their correlations on the
    training days only, so that similar indicators are neighbours in the image."""
    k, m = len(INDICATORS), len(LOOKBACKS)
    # an evenly spaced subsample of (ticker, day) pairs is plenty for 15x15 correlations, and
    # indexing it directly avoids copying the whole training part of the panel
    N, days = X.shape[0], min(train_end, X.shape[1])
    if N * days < 3:
        return list(range(k))
    rows = np.arange(0, N * days, max(1, N * days // 50_000))
    train = X[rows // days, rows % days].reshape(-1, k, m)  # (samples, indicator, look-back)
    train = train[np.isfinite(train).all(axis=(1, 2))]
    if len(train) < 3:
        return list(range(k))
    series = train.transpose(1, 0, 2).reshape(k, -1)  # one long series per indicator
    corr = np.nan_to_num(np.corrcoef(series), nan=0.0)
    dist = np.clip(1.0 - np.abs(corr), 0.0, None)
    np.fill_diagonal(dist, 0.0)
    return [int(i) for i in leaves_list(linkage(squareform(dist, checks=False), method="average"))]


def feature_names(order: list[int] | None = None) -> list[str]:
    rows = order or list(range(len(INDICATORS)))
    return [f"{INDICATORS[i]}_{n}" for i in rows for n in LOOKBACKS]
