"""Feature sets and labels on a dense (tickers, days, features) array.

Each feature at day t uses bars up to and including t only, so a window ending at t never sees
the future. Days a ticker did not trade (or whose row was dropped as dirty) are NaN, and any
window or label touching a NaN is simply never indexed (see windows.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stocklab.alpha158 import alpha158
from stocklab.errors import StockLabError

OHLCV_NEEDS = ("open", "high", "low", "close", "volume")
BAR_COLS = ("open", "high", "low", "close", "volume", "vwap")  # data.VALUE_COLS: any other column is extra


# what data.py reads as dates and tickers (DATE_NAMES, TICKER_NAMES): never a user's extra column
READ_NAMES = ("date", "datetime", "timestamp", "time", "name", "ticker", "symbol", "adj close")


def check_extra(extra: str) -> None:
    """`extra`: '', 'all' or distinct comma-separated names of the user's columns (not bar, date
    or ticker columns, which are read already)."""
    names = [c.strip() for c in extra.split(",") if c.strip()] if extra not in ("", "all") else []
    reserved = [c for c in names if c.lower() in (*BAR_COLS, *READ_NAMES)]
    if reserved:
        raise StockLabError(
            f"extra: {reserved[0]!r} is a bar, date or ticker column, read already; extra names the user's "
            "own columns (e.g. extra=pe_ratio,short_interest or extra=all)"
        )
    if extra not in ("", "all") and (not names or len(set(names)) < len(names) or "all" in names):
        raise StockLabError(f"extra: {extra!r} must be 'all' or distinct comma-separated column names")


def extra_columns(columns) -> list[str]:
    """The user's own columns of a clean long frame (data.py keeps them with `extra`)."""
    return [c for c in columns if c not in ("date", "ticker", *BAR_COLS)]


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
    # columns whose NaN means "not reported that day" (the user's extra columns): read as 0 after
    # scaling (the training mean) instead of making the window incomplete
    optional_cols: list[int] = field(default_factory=list)


def check_feature_sets(features: str) -> list[str]:
    """The sets of a `features` value (`relative+alpha158`: both, their columns side by side);
    an unknown set, or `auto` inside a composition, is a one-line error."""
    parts = [p.strip() for p in features.split("+")]
    unknown = [p for p in parts if p not in FEATURE_SETS]
    if unknown or (len(parts) > 1 and "auto" in parts) or len(set(parts)) < len(parts):
        raise StockLabError(
            f"features: {features!r} must be one of {', '.join(FEATURE_SETS)}, or several of "
            f"{', '.join(_BUILDERS)} joined by '+' (e.g. relative+alpha158), each once"
        )
    return parts


def resolve_feature_set(features: str, columns: list[str], auto: str | None = None, recipe: str = "cs") -> str:
    """`auto` -> the model's own feature set when it declares one (`auto`; cnn_ta: its indicator
    image), else the recipe's: `relative` under cs; under raw `ohlcv` when the data has full
    OHLCV bars and `returns` on close-only data. A composition `a+b` resolves each part."""
    parts = check_feature_sets(features)
    extra = extra_columns(columns)
    if "extra" in parts and not extra:
        raise StockLabError("features: 'extra' is the user's own columns: name them with extra=col1,col2 (or all)")
    if extra and "extra" not in parts:  # the user's columns join whichever set is chosen
        parts = [*parts, "extra"]
    return "+".join(p if p == "extra" else _resolve_one(p, columns, auto, recipe) for p in parts)


def _resolve_one(features: str, columns: list[str], auto: str | None, recipe: str) -> str:
    if features == "auto" and auto is not None:
        features = auto
    if features == "auto" and recipe == "cs":
        features = "relative"  # close-only data gets the close (and volume) relative to the last close
    if features == "auto":
        return "ohlcv" if all(c in columns for c in OHLCV_NEEDS) else "returns"
    if features in ("ohlcv", "technical", "alpha158"):
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
    if features == "auto" or "auto" in features.split("+"):
        raise StockLabError("features: 'auto' must be resolved before the panel is built")
    tickers = sorted(panel["ticker"].unique())
    dates = pd.DatetimeIndex(sorted(panel["date"].unique()))

    def wide(col: str) -> np.ndarray:  # (N, D) of one column
        return _wide(panel, col, tickers, dates)

    close = wide("close")
    with np.errstate(divide="ignore", invalid="ignore"):
        opt = _Options(tickers, universe, return_period, set(panel.columns), extra_columns(panel.columns))
        built = _join([_BUILDERS[part](wide, close, opt) for part in features.split("+")])
        y = np.full(close.shape, np.nan)
        y[:, :-horizon] = close[:, horizon:] / close[:, :-horizon] - 1.0
    X = built.X
    X[~np.isfinite(X)] = np.nan
    return Panel(
        tickers=list(tickers),
        dates=dates,
        X=X,
        y=(y * label_scale).astype(np.float32),
        close=close,
        feature_names=built.names,
        relative_cols=built.relative_cols,
        relative_ref=built.relative_ref,
        optional_cols=built.optional_cols,
    )


@dataclass
class _Options:
    tickers: list[str]
    universe: list[str] | None
    return_period: int
    columns: set[str]
    extra: list[str] = field(default_factory=list)


@dataclass
class _Built:
    X: np.ndarray  # (N, D, F) float32
    names: list[str]
    relative_cols: list[int] = field(default_factory=list)
    relative_ref: list[int] = field(default_factory=list)
    optional_cols: list[int] = field(default_factory=list)


def _join(parts: list[_Built]) -> _Built:
    """Feature sets side by side: their columns in order, relative columns re-indexed."""
    if len(parts) == 1:
        return parts[0]
    X = np.concatenate([p.X for p in parts], axis=-1)
    names, rel, ref, optional, offset = [], [], [], [], 0
    for p in parts:
        names += p.names
        rel += [c + offset for c in p.relative_cols]
        ref += [c + offset for c in p.relative_ref]
        optional += [c + offset for c in p.optional_cols]
        offset += p.X.shape[-1]
    return _Built(X, names, rel, ref, optional)


def _stack(cols: list[np.ndarray]) -> np.ndarray:
    return np.stack(cols, axis=-1).astype(np.float32)


def _ohlcv(wide, close: np.ndarray, opt: _Options) -> _Built:
    o, h, lo, vol = (wide(c) for c in ("open", "high", "low", "volume"))
    if "vwap" in opt.columns:
        vwap, vname = wide("vwap"), "vwap"
    else:
        vwap, vname = (h + lo + close) / 3.0, "typical_price"
    universe = list(opt.tickers) if opt.universe is None else list(opt.universe)
    pos = {t: i for i, t in enumerate(universe)}
    ids = np.array([pos.get(t, np.nan) for t in opt.tickers], dtype=np.float64)
    tid = np.broadcast_to((ids / max(len(universe) - 1, 1))[:, None], close.shape)
    tid = np.where(np.isfinite(close), tid, np.nan)
    names = ["open", "high", "low", "close", "volume", vname, "ticker_id"]
    return _Built(_stack([o, h, lo, close, vol, vwap, tid]), names)


def _returns(wide, close: np.ndarray, opt: _Options) -> _Built:
    p = opt.return_period
    lc = np.log(close)
    ret = np.full_like(lc, np.nan)
    ret[:, p:] = lc[:, p:] - lc[:, :-p]
    cols, names = [ret], [f"log_return_{p}d"]
    if "volume" in opt.columns:
        lv = np.log1p(wide("volume"))
        dv = np.full_like(lv, np.nan)
        dv[:, p:] = lv[:, p:] - lv[:, :-p]
        cols.append(dv)
        names.append(f"log_volume_change_{p}d")
    return _Built(_stack(cols), names)


def _technical(wide, close: np.ndarray, opt: _Options) -> _Built:
    from stocklab import indicators

    o, h, lo, v = (wide(c) for c in ("open", "high", "low", "volume"))
    N, D = close.shape
    X = np.empty((N, D, len(indicators.feature_names())), np.float32)  # ~1 GB for 405 x 1259 x 225
    for i in range(N):
        X[i] = indicators.technical_image(o[i], h[i], lo[i], close[i], v[i])
    return _Built(X, indicators.feature_names())


def _relative(wide, close: np.ndarray, opt: _Options) -> _Built:
    # log levels here; windows.py subtracts the window's last-day log close (prices) and
    # log volume (volume), giving log(x / x_ref on the window's last day). Open, high and low
    # come with full bars; close-only data (the built-in sample) gets the close, and the volume
    # where it has one
    prices = [c for c in ("open", "high", "low") if all(k in opt.columns for k in ("open", "high", "low"))]
    cols = [np.log(wide(c)) for c in prices] + [np.log(close)]
    names = [f"rel_{c}" for c in (*prices, "close")]
    ref = [len(cols) - 1] * len(cols)  # prices over the last close
    if "volume" in opt.columns:
        cols.append(np.log1p(wide("volume")))
        names.append("rel_volume")
        ref.append(len(cols) - 1)
    return _Built(_stack(cols), names, list(range(len(cols))), ref)


def _alpha158(wide, close: np.ndarray, opt: _Options) -> _Built:
    # Qlib's hand-made set (alpha158.py): 157 columns, 158 with a vwap column
    vwap = wide("vwap") if "vwap" in opt.columns else None
    names, X = alpha158(wide("open"), wide("high"), wide("low"), close, wide("volume"), vwap)
    return _Built(X, names)


def _extra(wide, close: np.ndarray, opt: _Options) -> _Built:
    # the user's columns as read (as of each row's date), scaled like every set; NaN where a
    # ticker has no value that day, read as the training mean (0 after scaling)
    return _Built(_stack([wide(c) for c in opt.extra]), list(opt.extra), optional_cols=list(range(len(opt.extra))))


_BUILDERS = {"ohlcv": _ohlcv, "returns": _returns, "relative": _relative, "technical": _technical,
             "alpha158": _alpha158, "extra": _extra}  # fmt: skip
# the `features` parameter's values: `auto` picks one by the model and the data (resolve_feature_set)
FEATURE_SETS = ("auto", *_BUILDERS)
