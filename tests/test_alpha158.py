"""Alpha158 (stocklab.alpha158) against an independent per-ticker plain-pandas implementation.

The reference below is written straight from the formulas of the spec, one ticker at a time as
pandas Series over the ticker's own trading days, and follows the NaN rule documented in
stocklab/alpha158.py: windows (min_periods=1) skip NaN; Std / Corr / Slope / Rsquare / Resi need
2 finite values; Rsquare and Corr are NaN on constant windows; a non-finite element-wise
intermediate is NaN; `dC > 0` is NaN where dC is; any non-finite output is NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stocklab.alpha158 import alpha158, feature_names

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sp500_5yr"
E = 1e-12
WINDOWS = (5, 10, 20, 30, 60)
FIELDS = ("open", "high", "low", "close", "volume")
# FTV: starts late, first bar has no open/high/low and zero volume (V / Ref(V, 1) = inf next day);
# REGN: a mid-series bar without open/high/low; ES: a missing open, and we cut gap days into it.
TICKERS = ("ES", "FTV", "REGN")
FAMILIES = (
    "ROC MA STD BETA RSQR RESI MAX MIN QTLU QTLD RANK RSV IMAX IMIN IMXD CORR CORD CNTP CNTN "
    "CNTD SUMP SUMN SUMD VMA VSTD WVMA VSUMP VSUMN VSUMD"
).split()  # Qlib's order


# ---------------------------------------------------------------------------- reference


def _win(x: pd.Series, d: int):
    return x.rolling(d, min_periods=1)


def _fin(x: pd.Series) -> pd.Series:
    return x.replace([np.inf, -np.inf], np.nan)


def _windows(x: np.ndarray, d: int):
    for j in range(len(x)):
        yield j, x[max(0, j - d + 1) : j + 1]


def _idx(w: np.ndarray, largest: bool) -> float:
    if not np.isfinite(w).any():
        return np.nan
    return float((np.nanargmax(w) if largest else np.nanargmin(w)) + 1)


def _rank_pct(w: np.ndarray) -> float:
    today, vals = w[-1], w[~np.isnan(w)]
    if np.isnan(today):
        return np.nan
    return ((vals < today).sum() + ((vals == today).sum() + 1) / 2) / len(vals)


def _ols(y: np.ndarray, d: int):
    slope, rsq, resi = (np.full(len(y), np.nan) for _ in range(3))
    for j, w in _windows(y, d):
        t = np.arange(1, len(w) + 1, dtype=float)
        m = np.isfinite(w)
        if m.sum() < 2:
            continue
        b, a = np.polyfit(t[m], w[m], 1)
        slope[j] = b
        if np.ptp(w[m]) > 0:
            rsq[j] = np.corrcoef(t[m], w[m])[0, 1] ** 2
        if m[-1]:
            resi[j] = w[-1] - (a + b * t[-1])
    return slope, rsq, resi


def _corr(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    out = np.full(len(a), np.nan)
    for j in range(len(a)):
        wa, wb = a[max(0, j - d + 1) : j + 1], b[max(0, j - d + 1) : j + 1]
        m = np.isfinite(wa) & np.isfinite(wb)
        if m.sum() >= 2 and np.ptp(wa[m]) > 0 and np.ptp(wb[m]) > 0:
            out[j] = np.corrcoef(wa[m], wb[m])[0, 1]
    return out


def reference(bars: pd.DataFrame, vwap: bool = False) -> pd.DataFrame:
    """All Alpha158 columns of one ticker, `bars` = its own trading days in date order."""
    O, H, L, C, V = (bars[c].astype(float) for c in FIELDS)  # noqa: E741
    f: dict[str, pd.Series] = {}
    f["KMID"] = (C - O) / O
    f["KLEN"] = (H - L) / O
    f["KMID2"] = (C - O) / (H - L + E)
    f["KUP"] = (H - np.maximum(O, C)) / O
    f["KUP2"] = (H - np.maximum(O, C)) / (H - L + E)
    f["KLOW"] = (np.minimum(O, C) - L) / O
    f["KLOW2"] = (np.minimum(O, C) - L) / (H - L + E)
    f["KSFT"] = (2 * C - H - L) / O
    f["KSFT2"] = (2 * C - H - L) / (H - L + E)
    f["OPEN0"], f["HIGH0"], f["LOW0"] = O / C, H / C, L / C
    if vwap:
        f["VWAP0"] = bars["vwap"] / C
    dC, dV = C - C.shift(1), V - V.shift(1)
    ret = _fin(C / C.shift(1))
    logv = _fin(np.log(V + 1))
    logdv = _fin(np.log(V / V.shift(1) + 1))
    wv = _fin((ret - 1).abs() * V)
    up = (dC > 0).astype(float).where(dC.notna())
    dn = (dC < 0).astype(float).where(dC.notna())
    rows = {}
    for d in WINDOWS:
        r = {}
        r["ROC"] = C.shift(d) / C
        r["MA"] = _win(C, d).mean() / C
        r["STD"] = _win(C, d).std() / C
        slope, rsq, resi = _ols(C.to_numpy(), d)
        r["BETA"], r["RSQR"], r["RESI"] = slope / C, pd.Series(rsq, C.index), resi / C
        hmax, lmin = _win(H, d).max(), _win(L, d).min()
        r["MAX"], r["MIN"] = hmax / C, lmin / C
        r["QTLU"] = _win(C, d).quantile(0.8) / C
        r["QTLD"] = _win(C, d).quantile(0.2) / C
        r["RANK"] = _win(C, d).apply(_rank_pct, raw=True)
        r["RSV"] = (C - lmin) / (hmax - lmin + E)
        imax = _win(H, d).apply(_idx, raw=True, args=(True,))
        imin = _win(L, d).apply(_idx, raw=True, args=(False,))
        r["IMAX"], r["IMIN"], r["IMXD"] = imax / d, imin / d, (imax - imin) / d
        r["CORR"] = pd.Series(_corr(C.to_numpy(), logv.to_numpy(), d), C.index)
        r["CORD"] = pd.Series(_corr(ret.to_numpy(), logdv.to_numpy(), d), C.index)
        r["CNTP"], r["CNTN"] = _win(up, d).mean(), _win(dn, d).mean()
        r["CNTD"] = r["CNTP"] - r["CNTN"]
        for pre, x in (("", dC), ("V", dV)):
            sp = _win(x.clip(lower=0), d).sum()
            sn = _win((-x).clip(lower=0), d).sum()
            sa = _win(x.abs(), d).sum() + E
            r[pre + "SUMP"], r[pre + "SUMN"], r[pre + "SUMD"] = sp / sa, sn / sa, (sp - sn) / sa
        r["VMA"] = _win(V, d).mean() / (V + E)
        r["VSTD"] = _win(V, d).std() / (V + E)
        r["WVMA"] = _win(wv, d).std() / (_win(wv, d).mean() + E)
        rows[d] = r
    assert sorted(FAMILIES) == sorted(rows[WINDOWS[0]])
    for op in FAMILIES:
        for d in WINDOWS:
            f[f"{op}{d}"] = rows[d][op]
    out = pd.DataFrame(f, index=bars.index)
    return out.replace([np.inf, -np.inf], np.nan)


def dense(frame: pd.DataFrame, cols=FIELDS):
    """(tickers, dates, {col: (N, D) float64}) on the union calendar of `frame`."""
    wide = {c: frame.pivot(index="Name", columns="date", values=c).astype(float) for c in cols}
    ref = wide["close"]
    return list(ref.index), list(ref.columns), {c: w.to_numpy(np.float64) for c, w in wide.items()}


def check_against_reference(frame: pd.DataFrame, vwap: bool = False):
    cols = FIELDS + (("vwap",) if vwap else ())
    tickers, dates, a = dense(frame, cols)
    names, X = alpha158(*(a[c] for c in FIELDS), vwap=a["vwap"] if vwap else None)
    assert names == feature_names(vwap) and X.shape == (len(tickers), len(dates), len(names))
    assert X.dtype == np.float32
    expect = np.full(X.shape, np.nan)
    for i, tk in enumerate(tickers):
        bars = frame[frame["Name"] == tk].sort_values("date").set_index("date")
        ref = reference(bars, vwap).reindex(dates)
        assert list(ref.columns) == names
        expect[i] = ref.to_numpy()
    bad = []
    for k, name in enumerate(names):
        try:
            np.testing.assert_allclose(X[:, :, k], expect[:, :, k], rtol=1e-6, atol=1e-6, equal_nan=True)
        except AssertionError as err:
            bad.append(f"{name}: {err}")
    assert not bad, "\n".join(bad[:5]) + f"\n({len(bad)} columns differ)"
    return names, X, a


# ---------------------------------------------------------------------------- tests


def test_names_and_order():
    names = feature_names()
    assert len(names) == 157 and len(feature_names(vwap=True)) == 158 and len(set(names)) == 157
    assert names[:12] == ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2",
                          "OPEN0", "HIGH0", "LOW0"]  # fmt: skip
    assert names[12:17] == ["ROC5", "ROC10", "ROC20", "ROC30", "ROC60"]
    assert names[12:] == [f"{op}{d}" for op in FAMILIES for d in WINDOWS]
    assert names[-1] == "VSUMD60" and "VWAP0" not in names
    assert feature_names(vwap=True)[12] == "VWAP0"


def test_matches_independent_pandas_on_sp500():
    if not DATA.is_dir():
        pytest.skip(f"shared sp500_5yr data not found at {DATA} (a fresh clone has no ../shared)")
    frame = pd.concat([pd.read_csv(DATA / f"{tk}_data.csv") for tk in TICKERS], ignore_index=True)
    frame["date"] = pd.to_datetime(frame["date"])
    # cut mid-series gap days into ES (single days and a 3-day hole) so Ref / windows must skip them
    es = frame.index[frame["Name"] == "ES"]
    frame = frame.drop(es[[100, 101, 102, 400, 777, 1000]]).reset_index(drop=True)
    names, X, a = check_against_reference(frame)
    assert len(names) == 157
    # the union calendar has days without an ES bar (the cut ones) and before FTV's first bar
    no_bar = ~np.isfinite(a["close"])
    assert no_bar.sum() > 6 and np.isnan(X[no_bar]).all()
    assert np.isfinite(X[~no_bar]).mean() > 0.95


def _synthetic(n=4, days=160, seed=0):
    rng = np.random.default_rng(seed)
    c = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, days)), axis=1))
    o = c * np.exp(rng.normal(0, 0.01, (n, days)))
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.02, (n, days)))
    low = np.minimum(o, c) * (1 - rng.uniform(0, 0.02, (n, days)))
    v = rng.integers(1_000, 100_000, (n, days)).astype(float)
    vw = (h + low + c) / 3
    c[:, :3] = c[:, 3:4]  # constant closes early: Rsquare / Corr must be NaN there, not noise
    h[2, 50:58] = h[2, 49]  # ties in the high
    arrays = [o, h, low, c, v, vw]
    for x in arrays:
        x[1, :30] = np.nan  # late start
        x[2, [60, 61, 90]] = np.nan  # gaps
        x[3, 140:] = np.nan  # delisted
    o[0, 70] = np.nan  # a bar without an open
    return arrays


def _to_frame(arrays) -> pd.DataFrame:
    n, days = arrays[0].shape
    dates = pd.bdate_range("2020-01-01", periods=days)
    parts = []
    for i in range(n):
        f = pd.DataFrame({c: x[i] for c, x in zip(FIELDS + ("vwap",), arrays)})
        f["date"], f["Name"] = dates, f"T{i}"
        parts.append(f[np.isfinite(f["close"])])
    return pd.concat(parts, ignore_index=True)


def test_vwap_synthetic():
    arrays = _synthetic()
    names, X, _ = check_against_reference(_to_frame(arrays), vwap=True)
    assert len(names) == 158 and names.index("VWAP0") == 12
    o, h, low, c, v, vw = arrays
    bar = np.isfinite(c)
    np.testing.assert_allclose(X[:, :, 12][bar], (vw / c)[bar], rtol=1e-6)
    assert np.isnan(X[:, :, 12][~bar]).all()
    names2, X2 = alpha158(o, h, low, c, v)  # without vwap: VWAP0 left out, the rest identical
    assert "VWAP0" not in names2 and len(names2) == 157
    np.testing.assert_array_equal(X2, np.delete(X, 12, axis=2))
    # constant early closes: no spurious Rsquare / Corr
    assert np.isnan(X[0, :3, names.index("RSQR5")]).all() and np.isnan(X[0, :3, names.index("CORR5")]).all()


def test_gap_semantics_and_ties_by_hand():
    nan = np.nan
    c = np.array([[10.0, nan, 11.0, 11.0, 12.0, 9.0]])
    h = np.array([[12.0, nan, 12.0, 12.0, 13.0, 10.0]])
    low = c - 1
    names, X = alpha158(c, h, low, c, np.full_like(c, 100.0))
    col = {n: i for i, n in enumerate(names)}
    assert np.isnan(X[0, 1]).all()
    # the day after the gap refers back to the last traded day (dC = +1)
    assert X[0, 2, col["CNTP5"]] == 1.0 and X[0, 2, col["SUMP5"]] == pytest.approx(1.0)
    assert np.isnan(X[0, 0, col["CNTP5"]])  # first bar: dC is missing, not a down day
    # packed bars: 10 11 11 12 9 -> CNTP5 on the last = 2 ups of 4 changes
    assert X[0, 5, col["CNTP5"]] == pytest.approx(0.5) and X[0, 5, col["CNTN5"]] == pytest.approx(0.25)
    # high ties 12 12 12 at bars 1..3: IdxMax = the oldest -> 1; later 13 at bar 4
    assert X[0, 3, col["IMAX5"]] == pytest.approx(1 / 5)
    assert X[0, 5, col["IMAX5"]] == pytest.approx(4 / 5)
    # ROC5 needs 5 earlier bars and the ticker has only 5 bars: NaN throughout
    assert np.isnan(X[0, :, col["ROC5"]]).all()
    assert X[0, 5, col["RANK5"]] == pytest.approx(1 / 5)  # 9 is the lowest of 5


@pytest.mark.parametrize("t", [40, 100])
def test_no_lookahead(t):
    arrays = _synthetic(seed=1)
    names, X = alpha158(*arrays[:5], vwap=arrays[5])
    rng = np.random.default_rng(t)
    later = [x.copy() for x in arrays]
    for x in later:
        x[:, t + 1 :] *= rng.uniform(0.5, 1.5, x[:, t + 1 :].shape)
    later[3][0, t + 5] = np.nan  # a future bar disappears: the packing of the past must not move
    _, X2 = alpha158(*later[:5], vwap=later[5])
    np.testing.assert_array_equal(X2[:, : t + 1], X[:, : t + 1])
    assert not np.array_equal(X2[:, t + 1 :], X[:, t + 1 :], equal_nan=True)
