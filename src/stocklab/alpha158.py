"""Qlib's Alpha158 daily feature set on a dense (tickers, days) panel.

`alpha158(open, high, low, close, volume, vwap=None)` takes float64 arrays of shape (N, D) on a
union trading calendar (NaN where a ticker has no bar) and returns ``(names, X)`` with ``X`` an
(N, D, F) float32 array: F = 158 with a ``vwap`` array, 157 without (VWAP0 is then left out,
never zero-filled). Every value at day t uses bars up to and including t only.

Bars and calendar
    A ticker "has a bar" on a day where its close is finite; on all other days its features are
    NaN. Operators run per ticker over its own trading days: each row's bar days are packed to
    the front (a stable argsort of the validity mask), every operator runs column-wise over all
    tickers at once on the packed layout, and the results are scattered back. So a mid-series
    gap day is skipped: Ref(C, 1) on the day after a gap is the last day the ticker traded, and
    a d-day window spans the ticker's last d bars.

Operators (window d, ``min_periods=1``: early days use the bars that exist)
    Ref(x, k)      x k bars earlier; NaN where fewer than k earlier bars exist (no min_periods).
    Mean/Sum/Std/Max/Min/Quantile   pandas rolling (Std: sample, ddof 1; Quantile: linear).
    Rank(x, d)     pandas ``rolling(d, min_periods=1).rank(pct=True)``: average ties, in (0, 1].
    IdxMax/IdxMin  1-based slot of the max / min in the window, 1 = the oldest bar in it
                   (the oldest available bar early on), d = today; ties -> the first (oldest)
                   occurrence, as numpy argmax and Qlib's ``x.argmax() + 1``.
    Slope/Rsquare/Resi   OLS of x on the slot positions 1..d of the window (slots of NaN
                   values are skipped but keep their positions, as in Qlib's rolling.pyx);
                   Resi = today's value minus the fit at today's slot.
    Corr(a, b, d)  Pearson correlation over the days where both a and b are finite.

NaN rule (pandas' default for ``min_periods=1`` windows)
    NaN values inside a window are skipped; a window's result is NaN when it holds no finite
    value, and Std, Corr, Slope, Rsquare and Resi need at least 2 (Resi also needs today's
    value). Rsquare is NaN on a constant window and Corr where either side is constant over the
    window's common days (exact constancy; Qlib instead blanks |std| < 2e-5). An element-wise
    intermediate that is not finite (e.g. V / Ref(V, 1) with a zero volume the day before) is
    treated as NaN. Comparisons are NaN where their input is NaN: ``dC > 0`` on a ticker's
    first bar (dC = NaN) is missing, not 0, so CNTP/CNTN skip that day (Qlib counts it as 0).
    Missing open/high/low on a bar make only the features that use them NaN that day and are
    skipped by windows later on. Finally any non-finite output (a division by a zero price, a
    float32 overflow) is stored as NaN.

Column order (Qlib names)
    candle: KMID KLEN KMID2 KUP KUP2 KLOW KLOW2 KSFT KSFT2
    price:  OPEN0 HIGH0 LOW0 [VWAP0]
    rolling, each family at d = 5, 10, 20, 30, 60 (e.g. ROC5 ROC10 ROC20 ROC30 ROC60):
            ROC MA STD BETA RSQR RESI MAX MIN QTLU QTLD RANK RSV IMAX IMIN IMXD CORR CORD
            CNTP CNTN CNTD SUMP SUMN SUMD VMA VSTD WVMA VSUMP VSUMN VSUMD
    with e = 1e-12, dC = C - Ref(C, 1), dV = V - Ref(V, 1):
    ROC Ref(C,d)/C; MA Mean(C,d)/C; STD Std(C,d)/C; BETA Slope(C,d)/C; RSQR Rsquare(C,d);
    RESI Resi(C,d)/C; MAX Max(H,d)/C; MIN Min(L,d)/C; QTLU/QTLD Quantile(C,d,.8/.2)/C;
    RANK Rank(C,d); RSV (C-Min(L,d))/(Max(H,d)-Min(L,d)+e); IMAX IdxMax(H,d)/d;
    IMIN IdxMin(L,d)/d; IMXD (IdxMax(H,d)-IdxMin(L,d))/d; CORR Corr(C, log(V+1), d);
    CORD Corr(C/Ref(C,1), log(V/Ref(V,1)+1), d); CNTP Mean(dC>0,d); CNTN Mean(dC<0,d);
    CNTD CNTP-CNTN; SUMP Sum(max(dC,0),d)/(Sum(|dC|,d)+e); SUMN Sum(max(-dC,0),d)/(...);
    SUMD (Sum(max(dC,0),d)-Sum(max(-dC,0),d))/(...); VMA Mean(V,d)/(V+e);
    VSTD Std(V,d)/(V+e); WVMA Std(|C/Ref(C,1)-1|*V,d)/(Mean(|C/Ref(C,1)-1|*V,d)+e);
    VSUMP/VSUMN/VSUMD as SUMP/SUMN/SUMD with dV.

Memory and speed: each operator is computed in float64 on one (N, D) array at a time and
written into the float32 output straight away (the working set is a few dozen (N, D) float64
arrays on top of the output, N * D * F * 4 bytes); the d-slot loops of IdxMax/IdxMin, Slope
and Corr run over cache-sized blocks of tickers. 405 x 1259 takes ~6 s, 2000 x 2500 ~1 min.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-12
WINDOWS = (5, 10, 20, 30, 60)
CANDLE = ("KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2")
ROLLING = (
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV",
    "IMAX", "IMIN", "IMXD", "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD",
    "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
)  # fmt: skip


def feature_names(vwap: bool = False) -> list[str]:
    """The output columns in order: 158 with vwap, 157 without."""
    price = ["OPEN0", "HIGH0", "LOW0"] + (["VWAP0"] if vwap else [])
    return list(CANDLE) + price + [f"{op}{d}" for op in ROLLING for d in WINDOWS]


# --------------------------------------------------------------------------------------------
# operators on the packed (N, D) float64 layout: row = ticker, axis 1 = its own bars in order


def _finite(x: np.ndarray) -> np.ndarray:
    """x with +-inf set to NaN (the NaN rule for element-wise intermediates)."""
    return np.where(np.isfinite(x), x, np.nan)


def _ref(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if k < x.shape[1]:
        out[:, k:] = x[:, : x.shape[1] - k]
    return out


def _rolling(x: np.ndarray, d: int):
    # a (D, N) frame over the rows' memory: pandas keeps a 2-D block transposed, so each ticker
    # is a contiguous column and rolling runs over every ticker in one call.
    return pd.DataFrame(x.T, copy=False).rolling(d, min_periods=1)


def _np(frame: pd.DataFrame) -> np.ndarray:
    return frame.to_numpy(dtype=np.float64).T


def _mean(x, d):
    return _np(_rolling(x, d).mean())


def _sum(x, d):
    return _np(_rolling(x, d).sum())


def _std(x, d):
    return _np(_rolling(x, d).std(ddof=1))


def _max(x, d):
    return _np(_rolling(x, d).max())


def _min(x, d):
    return _np(_rolling(x, d).min())


def _quantile(x, d, q):
    return _np(_rolling(x, d).quantile(q, interpolation="linear"))


def _rank(x, d):
    return _np(_rolling(x, d).rank(method="average", ascending=True, pct=True))


def _ffill(x: np.ndarray) -> np.ndarray:
    """Last finite value at or before each day along axis 1 (0 where there is none)."""
    ok = np.isfinite(x)
    idx = np.where(ok, np.arange(x.shape[1]), 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    rows = np.arange(x.shape[0])[:, None]
    out = x[rows, idx]
    return np.where(ok[rows, idx], out, 0.0)


def _slots(x: np.ndarray, d: int, fill: float):
    """Yield (k, view) for the d slots of each day's window: view[:, j] = x[:, j - d + 1 + k]
    (slot k = 0 is the oldest), `fill` before the first bar."""
    n, days = x.shape
    pad = np.full((n, d - 1 + days), fill)
    pad[:, d - 1 :] = x
    for k in range(d):
        yield k, pad[:, k : k + days]


def _idx_extreme_block(x: np.ndarray, d: int, largest: bool) -> np.ndarray:
    """IdxMax / IdxMin: 1-based slot of the first max / min, NaN values skipped."""
    fill = -np.inf if largest else np.inf
    v = np.where(np.isnan(x), fill, x)
    best = np.full(x.shape, fill)
    arg = np.full(x.shape, -1, dtype=np.int64)
    for k, s in _slots(v, d, fill):
        better = s > best if largest else s < best  # strict: ties keep the oldest
        np.copyto(best, s, where=better)
        np.copyto(arg, k, where=better)
    # slot k of day j holds bar j - d + 1 + k; early on the oldest available bar is bar 0
    j = np.arange(x.shape[1])
    shift = np.maximum(d - 1 - j, 0)  # leading slots before the ticker's first bar
    pos = (arg - shift + 1).astype(np.float64)
    pos[arg < 0] = np.nan
    return pos


def _ols_block(y: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Slope, Rsquare, Resi) of y on slot positions 1..d, from window sums of y centred on
    the day's latest finite value (so no cancellation with large price levels)."""
    ok = np.isfinite(y)
    ref = _ffill(y)  # per output day: every slot of that day's window is centred on it
    y0 = np.where(ok, y, 0.0)
    okf = ok.astype(np.float64)
    n, st, stt, sy, sty, syy = (np.zeros(y.shape) for _ in range(6))
    for (k, m), (_, s) in zip(_slots(okf, d, 0.0), _slots(y0, d, 0.0)):
        t = k + 1.0
        v = (s - ref) * m
        n += m
        st += t * m
        stt += (t * t) * m
        sy += v
        sty += t * v
        syy += v * v
    sxx = n * stt - st * st
    sxy = n * sty - st * sy
    vyy = n * syy - sy * sy
    with np.errstate(divide="ignore", invalid="ignore"):
        good = n >= 2
        slope = np.where(good, sxy / sxx, np.nan)
        rsq = np.where(good & (vyy > 0), sxy * sxy / (sxx * vyy), np.nan)
        icpt = (sy - slope * st) / n
        resi = np.where(ok, y - ref, np.nan) - (icpt + slope * d)  # today sits at slot d
    return slope, rsq, resi


def _corr_block(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    """Rolling Pearson correlation over the days where both are finite; NaN with < 2 such
    days or where either side is constant over them."""
    ok = np.isfinite(a) & np.isfinite(b)
    a0, b0 = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    ra, rb = _ffill(np.where(ok, a, np.nan)), _ffill(np.where(ok, b, np.nan))  # centring refs
    okf = ok.astype(np.float64)
    n, sa, sb, saa, sbb, sab = (np.zeros(a.shape) for _ in range(6))
    for (_, m), (_, s), (_, r) in zip(_slots(okf, d, 0.0), _slots(a0, d, 0.0), _slots(b0, d, 0.0)):
        u = (s - ra) * m
        v = (r - rb) * m
        n += m
        sa += u
        sb += v
        saa += u * u
        sbb += v * v
        sab += u * v
    vaa = n * saa - sa * sa
    vbb = n * sbb - sb * sb
    cov = n * sab - sa * sb
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n >= 2) & (vaa > 0) & (vbb > 0), cov / np.sqrt(vaa * vbb), np.nan)


_BLOCK = 1 << 17  # elements per row block of the slot loops (a few cache-sized arrays)


def _by_rows(fn, arrays, *args):
    """fn over blocks of rows (tickers are independent), so the d-slot loops run on
    cache-sized arrays and their temporaries stay small; returns fn's result(s) for all rows."""
    n, days = arrays[0].shape
    step = max(1, _BLOCK // max(days, 1))
    outs = None
    for r in range(0, n, step):
        res = fn(*(a[r : r + step] for a in arrays), *args)
        res = res if isinstance(res, tuple) else (res,)
        if outs is None:
            outs = tuple(np.empty((n, days)) for _ in res)
        for o, x in zip(outs, res):
            o[r : r + step] = x
    return outs if len(outs) > 1 else outs[0]


def _idx_extreme(x, d, largest):
    return _by_rows(_idx_extreme_block, [x], d, largest)


def _ols(y, d):
    return _by_rows(_ols_block, [y], d)


def _corr(a, b, d):
    return _by_rows(_corr_block, [a, b], d)


def _nan_gt0(x: np.ndarray) -> np.ndarray:
    """1.0 where x > 0, 0.0 where x <= 0, NaN where x is NaN."""
    return np.where(np.isnan(x), np.nan, (x > 0).astype(np.float64))


# --------------------------------------------------------------------------------------------


class _Packed:
    """Each ticker's bar days packed to the front of its row (a stable argsort of the validity
    mask), and the way back into the union calendar of the output."""

    def __init__(self, close: np.ndarray, X: np.ndarray, col: dict[str, int]):
        valid = np.isfinite(close)
        self.order = np.argsort(~valid, axis=1, kind="stable")  # each row's bar days first, in order
        self.inv = np.argsort(self.order, axis=1, kind="stable")
        self.valid = np.arange(close.shape[1])[None, :] < valid.sum(axis=1)[:, None]
        self.X, self.col = X, col

    def pack(self, a: np.ndarray) -> np.ndarray:
        p = np.take_along_axis(a, self.order, axis=1)
        p[~self.valid] = np.nan
        return p

    def put(self, name: str, packed: np.ndarray) -> None:
        out = np.take_along_axis(np.where(self.valid, packed, np.nan), self.inv, axis=1).astype(np.float32)
        out[~np.isfinite(out)] = np.nan
        self.X[:, :, self.col[name]] = out


def alpha158(open, high, low, close, volume, vwap=None) -> tuple[list[str], np.ndarray]:
    """Alpha158 features of an (N, D) OHLCV(+VWAP) panel -> (names, (N, D, F) float32 array).

    See the module docstring for the NaN rule and the column order."""
    arrays = [open, high, low, close, volume] + ([vwap] if vwap is not None else [])
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    shape = arrays[3].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays):
        raise ValueError(f"alpha158 needs (N, D) arrays of one shape, got {[a.shape for a in arrays]}")
    names = feature_names(vwap is not None)
    X = np.full((*shape, len(names)), np.nan, dtype=np.float32)
    if 0 in shape:
        return names, X
    packed = _Packed(arrays[3], X, {name: i for i, name in enumerate(names)})
    O, H, L, C, V = (packed.pack(a) for a in arrays[:5])  # noqa: E741
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _candle_and_price(packed.put, O, H, L, C, None if vwap is None else packed.pack(arrays[5]))
        _rolling_families(packed.put, H, L, C, V)
    return names, X


def _candle_and_price(put, O, H, L, C, vwap) -> None:  # noqa: E741 - the formulas' names
    rng = H - L + EPS
    top, bot = np.maximum(O, C), np.minimum(O, C)
    put("KMID", (C - O) / O)  # one call at a time, so one temporary is alive at a time
    put("KLEN", (H - L) / O)
    put("KMID2", (C - O) / rng)
    put("KUP", (H - top) / O)
    put("KUP2", (H - top) / rng)
    put("KLOW", (bot - L) / O)
    put("KLOW2", (bot - L) / rng)
    put("KSFT", (2 * C - H - L) / O)
    put("KSFT2", (2 * C - H - L) / rng)
    put("OPEN0", O / C)
    put("HIGH0", H / C)
    put("LOW0", L / C)
    if vwap is not None:
        put("VWAP0", vwap / C)


def _rolling_families(put, H, L, C, V) -> None:
    """The 29 rolling families at every window (their formulas: the module docstring)."""
    C1, V1 = _ref(C, 1), _ref(V, 1)
    dC, dV = C - C1, V - V1
    ret = _finite(C / C1)
    logv = _finite(np.log(V + 1))
    logdv = _finite(np.log(V / V1 + 1))
    wv = _finite(np.abs(ret - 1) * V)
    del C1, V1
    for d in WINDOWS:
        _price_window(put, H, L, C, d)
        put(f"CORR{d}", _corr(C, logv, d))
        put(f"CORD{d}", _corr(ret, logdv, d))
        cntp, cntn = _mean(_nan_gt0(dC), d), _mean(_nan_gt0(-dC), d)
        put(f"CNTP{d}", cntp)
        put(f"CNTN{d}", cntn)
        put(f"CNTD{d}", cntp - cntn)
        del cntp, cntn
        for pre, dx in (("", dC), ("V", dV)):  # np.maximum keeps NaN
            sp, sn = _sum(np.maximum(dx, 0), d), _sum(np.maximum(-dx, 0), d)
            sa = _sum(np.abs(dx), d) + EPS
            put(f"{pre}SUMP{d}", sp / sa)
            put(f"{pre}SUMN{d}", sn / sa)
            put(f"{pre}SUMD{d}", (sp - sn) / sa)
        del sp, sn, sa
        put(f"VMA{d}", _mean(V, d) / (V + EPS))
        put(f"VSTD{d}", _std(V, d) / (V + EPS))
        put(f"WVMA{d}", _std(wv, d) / (_mean(wv, d) + EPS))


def _price_window(put, H, L, C, d: int) -> None:
    """The families of one window made from prices alone: ROC .. IMXD."""
    put(f"ROC{d}", _ref(C, d) / C)
    put(f"MA{d}", _mean(C, d) / C)
    put(f"STD{d}", _std(C, d) / C)
    slope, rsq, resi = _ols(C, d)
    put(f"BETA{d}", slope / C)
    put(f"RSQR{d}", rsq)
    put(f"RESI{d}", resi / C)
    del slope, rsq, resi
    hmax, lmin = _max(H, d), _min(L, d)
    put(f"MAX{d}", hmax / C)
    put(f"MIN{d}", lmin / C)
    put(f"RSV{d}", (C - lmin) / (hmax - lmin + EPS))
    del hmax, lmin
    put(f"QTLU{d}", _quantile(C, d, 0.8) / C)
    put(f"QTLD{d}", _quantile(C, d, 0.2) / C)
    put(f"RANK{d}", _rank(C, d))
    imax, imin = _idx_extreme(H, d, True), _idx_extreme(L, d, False)
    put(f"IMAX{d}", imax / d)
    put(f"IMIN{d}", imin / d)
    put(f"IMXD{d}", (imax - imin) / d)
