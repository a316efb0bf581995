"""Feature sets and labels on a dense (tickers, days, features) array.

Each feature at day t uses bars up to and including t only, so a window ending at t never sees
the future. Days a ticker did not trade (or whose row was dropped as dirty) are NaN, and any
window or label touching a NaN is simply never indexed (see windows.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stocklab.config import StockLabError

OHLCV_NEEDS = ("open", "high", "low", "close", "volume")


@dataclass
class Panel:
    """Dense arrays on the union trading calendar of all tickers."""

    tickers: list[str]
    dates: pd.DatetimeIndex
    X: np.ndarray  # (N, D, F) float32, NaN where unknown
    y: np.ndarray  # (N, D) float32 label for a window ending on day t, NaN where unknown
    close: np.ndarray  # (N, D) float64 close prices (for evaluation / tear sheets)
    feature_names: list[str]
    relative_cols: list[int]  # columns made relative to the window's last day (see windows.py)
    relative_ref: list[int]  # for each relative column, the column it is divided by


def resolve_feature_set(features: str, columns: list[str], model: str = "") -> str:
    """`auto` -> `technical` for cnn_ta (its indicator image), else `ohlcv` when the data has
    full OHLCV bars and `returns` on close-only data."""
    if features == "auto" and model == "cnn_ta":
        features = "technical"
    if features == "auto":
        return "ohlcv" if all(c in columns for c in OHLCV_NEEDS) else "returns"
    if features in ("ohlcv", "relative", "technical"):
        missing = [c for c in OHLCV_NEEDS if c not in columns]
        if missing:
            raise StockLabError(
                f"features: '{features}' needs columns {', '.join(missing)} which the data lacks "
                "(close-only data such as 'sample' supports features=returns)"
            )
    return features


def _wide(panel: pd.DataFrame, col: str, tickers, dates) -> np.ndarray:
    """(N, D) array of one column on the union calendar."""
    wide = panel.pivot(index="date", columns="ticker", values=col)
    return wide.reindex(index=dates, columns=tickers).to_numpy(dtype=np.float64).T


def build_panel(
    panel: pd.DataFrame,
    features: str,
    horizon: int,
    label_scale: float,
    return_period: int = 1,
    universe: list[str] | None = None,
) -> Panel:
    """Turn the clean long frame into feature and label arrays for one named feature set.

    `return_period` is the look-back of the `returns` features (21: monthly returns).
    `universe`: the tickers a model was trained on; the `ticker_id` feature is a ticker's
    position among them (NaN for a ticker the model never saw), so scoring another set of
    tickers gives each known ticker the id it was trained with."""
    features = resolve_feature_set(features, list(panel.columns))
    tickers = sorted(panel["ticker"].unique())
    dates = pd.DatetimeIndex(sorted(panel["date"].unique()))
    close = _wide(panel, "close", tickers, dates)
    N, D = close.shape
    rel_cols: list[int] = []
    rel_ref: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        if features == "ohlcv":
            o, h, lo = (_wide(panel, c, tickers, dates) for c in ("open", "high", "low"))
            vol = _wide(panel, "volume", tickers, dates)
            if "vwap" in panel.columns:
                vwap, vname = _wide(panel, "vwap", tickers, dates), "vwap"
            else:
                vwap, vname = (h + lo + close) / 3.0, "typical_price"
            universe = list(tickers) if universe is None else list(universe)
            pos = {t: i for i, t in enumerate(universe)}
            ids = np.array([pos.get(t, np.nan) for t in tickers], dtype=np.float64)
            tid = np.broadcast_to((ids / max(len(universe) - 1, 1))[:, None], (N, D))
            tid = np.where(np.isfinite(close), tid, np.nan)
            cols, names = (
                [o, h, lo, close, vol, vwap, tid],
                ["open", "high", "low", "close", "volume", vname, "ticker_id"],
            )
        elif features == "returns":
            p = return_period
            lc = np.log(close)
            ret = np.full_like(lc, np.nan)
            ret[:, p:] = lc[:, p:] - lc[:, :-p]
            cols, names = [ret], [f"log_return_{p}d"]
            if "volume" in panel.columns:
                lv = np.log1p(_wide(panel, "volume", tickers, dates))
                dv = np.full_like(lv, np.nan)
                dv[:, p:] = lv[:, p:] - lv[:, :-p]
                cols.append(dv)
                names.append(f"log_volume_change_{p}d")
        elif features == "technical":
            from stocklab import indicators

            o, h, lo, v = (_wide(panel, c, tickers, dates) for c in ("open", "high", "low", "volume"))
            X = np.empty((N, D, len(indicators.feature_names())), np.float32)  # ~1 GB for 405 x 1259 x 225
            for i in range(N):
                X[i] = indicators.technical_image(o[i], h[i], lo[i], close[i], v[i])
            cols, names = None, indicators.feature_names()
        elif features == "relative":
            # log levels here; windows.py subtracts the window's last-day log close (prices) and
            # log volume (volume), giving log(x / x_ref on the window's last day)
            cols = [np.log(_wide(panel, c, tickers, dates)) for c in ("open", "high", "low")]
            cols += [np.log(close), np.log1p(_wide(panel, "volume", tickers, dates))]
            names = ["rel_open", "rel_high", "rel_low", "rel_close", "rel_volume"]
            rel_cols, rel_ref = [0, 1, 2, 3, 4], [3, 3, 3, 3, 4]
        else:
            raise StockLabError(f"features: unknown feature set '{features}'")
        y = np.full((N, D), np.nan)
        y[:, :-horizon] = close[:, horizon:] / close[:, :-horizon] - 1.0
    if cols is not None:
        X = np.stack(cols, axis=-1).astype(np.float32)
    X[~np.isfinite(X)] = np.nan
    return Panel(
        tickers=list(tickers),
        dates=dates,
        X=X,
        y=(y * label_scale).astype(np.float32),
        close=close,
        feature_names=names,
        relative_cols=rel_cols,
        relative_ref=rel_ref,
    )
