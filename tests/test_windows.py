"""Features, chronological splits with embargo, train-only scaling, lazy windows, leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import long_bars, scramble_prices_after, synthetic_bars

from stocklab.config import StockLabError
from stocklab.data import load_panel
from stocklab.features import build_panel, resolve_feature_set
from stocklab.windows import Scaler, WindowSet, drop_short_tickers, end_day_ranges

FR = (0.6, 0.2, 0.2)


def test_feature_sets_shapes_and_names(bars):
    for features, n_feat in [("ohlcv", 7), ("returns", 2), ("relative", 5)]:
        p = build_panel(long_bars(bars), features, horizon=5, label_scale=1.0)
        assert p.X.shape == (6, 300, n_feat) and len(p.feature_names) == n_feat
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    assert p.feature_names[5] == "typical_price"  # no vwap column -> (H + L + C) / 3
    close = p.close
    np.testing.assert_allclose(p.y[:, :-5], (close[:, 5:] / close[:, :-5] - 1), rtol=1e-5)
    assert np.isnan(p.y[:, -5:]).all()
    scaled = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=10.0)
    np.testing.assert_allclose(scaled.y, 10 * p.y, rtol=1e-5)


def test_close_only_data_rejects_ohlcv_and_auto_adapts():
    sample, report = load_panel("sample", cache_dir=None)
    with pytest.raises(StockLabError, match="features: 'ohlcv' needs columns open, high, low, volume"):
        resolve_feature_set("ohlcv", report.columns)
    assert resolve_feature_set("auto", report.columns) == "relative"  # the default recipe, cs
    assert resolve_feature_set("auto", report.columns, recipe="raw") == "returns"
    assert resolve_feature_set("auto", ["open", "high", "low", "close", "volume"], recipe="raw") == "ohlcv"
    assert resolve_feature_set("auto", ["open", "high", "low", "close", "volume"], "technical") == "technical"
    with pytest.raises(StockLabError, match="features: 'technical' needs columns"):
        resolve_feature_set("auto", report.columns, "technical")


def test_embargo_keeps_every_label_window_inside_its_split(bars):
    p = build_panel(long_bars(bars), "ohlcv", horizon=7, label_scale=1.0)
    ws = WindowSet(p, seq_len=10, horizon=7, fractions=FR, scaler_kind="standard")
    r = end_day_ranges(300, FR, 7)
    t = {s: ws.index[s][1].numpy() for s in ("train", "valid", "test")}
    assert t["train"].max() + 7 < r["valid"][0] <= t["valid"].min()  # train labels end before valid
    assert t["valid"].max() + 7 < r["test"][0] <= t["test"].min()
    assert t["test"].max() + 7 <= 299
    assert t["train"].min() >= 9  # a full window of history


def test_scaler_statistics_come_only_from_train_rows(bars):
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 10, 5, FR, "standard")
    b1 = ws.ranges["valid"][0]
    expected = np.nanmean(p.X[:, :b1].reshape(-1, 7), axis=0)
    np.testing.assert_allclose(ws.scaler.shift[0], expected, rtol=1e-5)
    # wildly different valid/test data must not move the scaler
    p2 = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    p2.X[:, b1:] *= 1000
    ws2 = WindowSet(p2, 10, 5, FR, "standard")
    np.testing.assert_array_equal(ws.scaler.shift, ws2.scaler.shift)
    np.testing.assert_array_equal(ws.scaler.scale, ws2.scaler.scale)


@pytest.mark.parametrize("kind", ["standard_ticker", "minmax", "minmax_ticker"])
def test_other_scalers_fit_on_train(bars, kind):
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 10, 5, FR, kind)
    b1 = ws.ranges["valid"][0]
    train = ws.X[:, :b1].numpy()
    if kind.startswith("minmax"):
        assert train.min() >= -1e-5 and train.max() <= 1 + 1e-5
    assert ws.scaler.shift.shape[0] == (6 if kind.endswith("ticker") else 1)


def test_lazy_windows_equal_naive_slices(bars):
    p = build_panel(long_bars(bars), "returns", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 12, 5, FR, "standard")
    n, t = ws.index["valid"]
    x = ws.gather(n[:50], t[:50])  # (50, 12, 2)
    Xs = ws.scaler.transform(p.X)
    for i in range(50):
        ni, ti = int(n[i]), int(t[i])
        np.testing.assert_allclose(x[i].numpy(), Xs[ni, ti - 11 : ti + 1], rtol=1e-6)
    assert ws.y[n[0], t[0]] == pytest.approx(float(p.y[n[0], t[0]]))


def test_relative_features_are_relative_to_the_windows_last_day(bars):
    p = build_panel(long_bars(bars), "relative", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 8, 5, FR, "standard")
    n, t = ws.index["train"]
    x = ws.gather(n[:5], t[:5])
    assert torch.allclose(x[:, -1, 3], torch.zeros(5))  # log(close_T / close_T) = 0
    raw_close = p.close[int(n[0]), int(t[0]) - 7 : int(t[0]) + 1]
    unit = ws.scaler.scale[0, 3]  # relative prices come in units of the close's daily-change std
    assert unit == pytest.approx(np.nanstd(np.diff(np.log(p.close[:, : ws.fold.valid_start]), axis=1)), rel=1e-3)
    np.testing.assert_allclose(x[0, :, 3].numpy(), np.log(raw_close / raw_close[-1]) / unit, rtol=1e-4, atol=1e-4)


def test_gaps_in_a_ticker_never_enter_a_window(bars):
    df = long_bars(bars)
    df = df[~((df["ticker"] == "T01") & (df["date"] == df["date"].unique()[100]))]
    p = build_panel(df, "ohlcv", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 10, 5, FR, "standard")
    assert p.tickers[1] == "T01"
    for split in ("train", "valid", "test"):
        n, t = (a.numpy() for a in ws.index[split])
        hit = (n == 1) & (t >= 100) & (t - 9 <= 100)
        assert not hit.any()
    # the ticker is still there: windows right before and right after the gap exist
    n, t = (a.numpy() for a in ws.index["train"])
    assert ((n == 1) & (t == 99)).any() and ((n == 1) & (t == 110)).any()
    assert ((n == 0) & (t == 105)).any()  # another ticker's windows over those days are kept


def test_strided_windows_step_back_by_the_stride_and_ignore_later_bars(bars):
    """window_stride=k: a window ending on day t holds days t - (T-1)k, ..., t - k, t; altering
    the bars after day t changes no such window (the leak property, with gaps between steps)."""
    df = long_bars(bars)
    p = build_panel(df, "returns", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 4, 5, FR, "standard", stride=3)
    n, t = (a[:50] for a in ws.index["valid"])
    x = ws.gather(n, t)  # (50, 4, F)
    for k, (i, d) in enumerate(zip(n.tolist(), t.tolist())):
        torch.testing.assert_close(x[k], ws.X[i, [d - 9, d - 6, d - 3, d]], rtol=0, atol=0)
    cut = p.dates[int(t.max())]
    later = df.copy()
    scramble_prices_after(later, cut)
    ws2 = WindowSet(build_panel(later, "returns", horizon=5, label_scale=1.0), 4, 5, FR, "standard", stride=3,
                    scaler=ws.scaler)  # fmt: skip
    torch.testing.assert_close(ws2.gather(n, t), x, rtol=0, atol=0)


def test_short_tickers_are_dropped_then_an_error_when_none_left(bars):
    df = long_bars(bars)
    df = df[~((df["ticker"] == "T02") & (df["date"] > df["date"].unique()[20]))]  # 21 rows left
    p = build_panel(df, "ohlcv", horizon=5, label_scale=1.0)
    before = {tk: (p.X[i].copy(), p.y[i].copy()) for i, tk in enumerate(p.tickers)}
    kept, n_short = drop_short_tickers(p, seq_len=20, horizon=5)
    assert n_short == 1 and "T02" not in kept.tickers and kept.X.shape[0] == 5
    for i, tk in enumerate(kept.tickers):  # the in-place compaction keeps every row with its ticker
        np.testing.assert_array_equal(kept.X[i], before[tk][0])
        np.testing.assert_array_equal(kept.y[i], before[tk][1])
    with pytest.raises(StockLabError, match="no ticker has at least seq_len \\+ horizon = 400"):
        drop_short_tickers(p, seq_len=395, horizon=5)


def test_prediction_for_day_t_ignores_all_later_data(bars):
    """Change every bar after day t (prices, volumes): the window, the scaler and hence the
    model's prediction for day t are bit-for-bit unchanged."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10 * 7, 1))
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 10, 5, FR, "standard")
    n, t = ws.index["test"]
    day = int(t[len(t) // 2])
    pick = t == day
    before = model(ws.gather(n[pick], t[pick])).detach()

    df = long_bars(bars)
    later = scramble_prices_after(df, p.dates[day])
    df.loc[later, "volume"] = 1
    p2 = build_panel(df, "ohlcv", horizon=5, label_scale=1.0)
    ws2 = WindowSet(p2, 10, 5, FR, "standard")
    after = model(ws2.gather(n[pick], t[pick])).detach()
    assert torch.equal(before, after)
    assert not np.allclose(p.X[:, day + 1 :], p2.X[:, day + 1 :])  # the future really changed


def test_scaler_round_trips_through_json(bars):
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    s = Scaler.fit(p.X, 150, "standard_ticker")
    s2 = Scaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(s.transform(p.X), s2.transform(p.X))


def test_too_few_days_for_a_split_is_a_clear_error():
    p = build_panel(long_bars(synthetic_bars(n_tickers=2, n_days=40)), "ohlcv", horizon=10, label_scale=1.0)
    with pytest.raises(StockLabError, match="only 40 trading days"):
        WindowSet(p, 20, 10, FR, "standard")


def test_scaling_in_place_matches_the_copy_and_keeps_one_panel(bars):
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    raw = p.X.copy()
    copied = WindowSet(p, 10, 5, FR, "standard")
    np.testing.assert_array_equal(p.X, raw)  # the caller's panel is untouched by default
    owned = WindowSet(p, 10, 5, FR, "standard", scale_in_place=True)
    torch.testing.assert_close(owned.X, copied.X, rtol=0, atol=0)
    assert np.shares_memory(owned.X.numpy(), p.X)  # no second copy of the panel
    for split in ("train", "valid", "test"):
        assert all(torch.equal(a, b) for a, b in zip(owned.index[split], copied.index[split]))


def test_train_every_thins_training_end_days_and_keeps_every_scored_day(bars):
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    every = WindowSet(p, 10, 5, FR, "standard")
    third = WindowSet(p, 10, 5, FR, "standard", train_every=3)
    t_all, t_third = every.index["train"][1], third.index["train"][1]
    assert set(t_third.tolist()) == {d for d in set(t_all.tolist()) if d % 3 == 0}  # the span starts at day 0
    assert 0.3 < len(t_third) / len(t_all) < 0.37
    for split in ("valid", "test"):
        assert all(torch.equal(a, b) for a, b in zip(every.index[split], third.index[split]))


@pytest.mark.parametrize("kind", ["standard", "standard_ticker"])
def test_one_absurd_value_does_not_set_the_scaler(kind):
    """A volume of 1e30 in one cell (the issue's case): the fitted statistics are those of the
    data without it, not a shift of 1e25 that flattens every other value."""
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 2.0, size=(6, 300, 3)).astype(np.float32)  # (N, D, F)
    clean = Scaler.fit(X, 200, kind)
    X[2, 50, 1] = 1e30
    dirty = Scaler.fit(X, 200, kind)
    X[2, 50, 1] = np.nan
    assert np.array_equal(dirty.shift, Scaler.fit(X, 200, kind).shift)
    assert np.array_equal(dirty.scale, Scaler.fit(X, 200, kind).scale)
    assert np.allclose(dirty.shift, clean.shift, atol=0.2) and np.allclose(dirty.scale, clean.scale, atol=0.2)


def test_classifier_cuts_are_the_training_targets_terciles_whatever_the_later_labels(bars):
    """cnn_ta's sell/hold/buy cuts come from the training windows' targets only: multiplying every
    later return (validation and test) by 10 leaves them unchanged."""
    df = long_bars(bars)
    p = build_panel(df, "returns", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 10, 5, FR, "standard")
    expected = np.quantile(ws.target[ws.index["train"]].numpy(), [1 / 3, 2 / 3])
    np.testing.assert_allclose(ws.class_cuts.numpy(), expected, rtol=1e-6)
    first_valid = int(ws.index["valid"][1].min())
    p.y[:, first_valid - 5 :] *= 10.0  # labels that reach into validation and beyond
    again = WindowSet(p, 10, 5, FR, "standard")
    torch.testing.assert_close(again.class_cuts, ws.class_cuts)


@pytest.mark.parametrize("stride", [1, 3])
def test_seq2seq_step_targets_of_a_training_window_stay_in_training(bars, stride):
    """Per-step targets (losses.step_mse: the label of every day in the window) of a training
    window are labels that end by the training span's last label: multiplying every label that
    reaches into validation and beyond by 10 leaves every training window's step targets as
    they were, while the validation windows' do change."""
    p = build_panel(long_bars(bars), "returns", horizon=5, label_scale=1.0)
    ws = WindowSet(p, 10, 5, FR, "standard", stride=stride)
    n, t = ws.index["train"]
    before, ok = ws.label_steps(n, t)
    assert ok.sum() > 0.9 * ok.numel()  # most steps have a target: the check is not vacuous
    first_valid = int(ws.index["valid"][1].min())
    p.y[:, first_valid - 5 :] *= 10.0
    again = WindowSet(p, 10, 5, FR, "standard", stride=stride)
    after, _ = again.label_steps(n, t)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    nv, tv = ws.index["valid"]
    assert not torch.equal(again.label_steps(nv, tv)[0], ws.label_steps(nv, tv)[0])
