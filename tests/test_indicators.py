"""The CNN-TA indicators against independent pandas/numpy reference computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_bars

from stocklab.indicators import INDICATORS, LOOKBACKS, cluster_order, cmf, hma, indicator, technical_image


@pytest.fixture(scope="module")
def ohlcv():
    df = synthetic_bars(n_tickers=1, n_days=300, seed=3)
    return tuple(df[c].to_numpy(np.float64) for c in ("open", "high", "low", "close", "volume"))


def _wma(x: pd.Series, n: int) -> pd.Series:
    w = np.arange(1, n + 1, dtype=float)
    return x.rolling(n).apply(lambda a: np.dot(a, w) / w.sum(), raw=True)


def _rsi_wilder(c: pd.Series, n: int) -> pd.Series:
    d = c.diff()
    up, down = d.clip(lower=0), -d.clip(upper=0)
    avg_up, avg_down = np.full(len(c), np.nan), np.full(len(c), np.nan)
    avg_up[n], avg_down[n] = up[1 : n + 1].mean(), down[1 : n + 1].mean()  # seed: simple mean
    for i in range(n + 1, len(c)):
        avg_up[i] = (avg_up[i - 1] * (n - 1) + up.iloc[i]) / n
        avg_down[i] = (avg_down[i - 1] * (n - 1) + down.iloc[i]) / n
    return pd.Series(100 - 100 / (1 + avg_up / avg_down))


@pytest.mark.parametrize("n", [6, 13, 20])
def test_indicators_match_reference_formulas(ohlcv, n):
    o, h, lo, c, v = ohlcv
    C, H, L, V = (pd.Series(a) for a in (c, h, lo, v))
    tail = slice(100, None)  # past every warm-up
    ref = {
        "sma": C.rolling(n).mean() / C - 1,
        "wma": _wma(C, n) / C - 1,
        "hma": _wma(2 * _wma(C, n // 2) - _wma(C, n), int(np.sqrt(n))) / C - 1,
        "roc": (C / C.shift(n) - 1) * 100,
        "willr": (H.rolling(n).max() - C) / (H.rolling(n).max() - L.rolling(n).min()) * -100,
        "cmf": (((C - L) - (H - C)) / (H - L) * V).rolling(n).sum() / V.rolling(n).sum(),
        "rsi": _rsi_wilder(C, n),
        "cci": (lambda tp: (tp - tp.rolling(n).mean()) / (0.015 * tp.rolling(n).apply(
            lambda a: np.mean(np.abs(a - a.mean())), raw=True)))((H + L + C) / 3),
    }  # fmt: skip
    for name, expected in ref.items():
        got = indicator(name, o, h, lo, c, v, n)
        np.testing.assert_allclose(got[tail], expected.to_numpy()[tail], rtol=1e-6, atol=1e-8, err_msg=name)


def test_image_is_causal_and_shaped(ohlcv):
    img = technical_image(*ohlcv)
    assert img.shape == (300, len(INDICATORS) * len(LOOKBACKS))
    assert np.isfinite(img[100:]).all()
    cut = [a.copy() for a in ohlcv]
    for a in cut:
        a[200:] *= 1.5  # change the future
    np.testing.assert_array_equal(technical_image(*cut)[:200], img[:200])


def test_hma_and_cmf_handle_edges():
    c = np.linspace(10, 20, 40)
    assert np.isnan(hma(c, 20)[:20]).all() and np.isfinite(hma(c, 20)[-1])
    flat = np.ones(30)
    assert (cmf(flat, flat, flat, flat, 6)[5:] == 0).all()  # no range: no money flow


def test_cluster_order_is_a_permutation_from_training_days(ohlcv):
    X = technical_image(*ohlcv)[None]  # (1, D, 225)
    order = cluster_order(X, train_end=180)
    assert sorted(order) == list(range(15))
    X2 = X.copy()
    X2[:, 180:] = np.random.default_rng(0).normal(size=X2[:, 180:].shape)
    assert cluster_order(X2, train_end=180) == order  # later days do not move it
