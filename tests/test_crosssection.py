"""Cross-sectional training: per-day labels and feature z-scores, losses over dates, daily
batches, selection on validation rank IC, and the planted-signal recovery suite."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import long_bars, scramble_prices_after, synthetic_bars
from scipy import stats

from stocklab.config import LABELS, BenchmarkConfig, StockLabError, TrainConfig
from stocklab.crosssection import group_ranks, label_target, rank_ic, zscore_days
from stocklab.factor_eval import daily_ic
from stocklab.features import build_panel
from stocklab.losses import RETURN, listnet, objective
from stocklab.losses import daily_ic as ic_loss
from stocklab.models import MODELS, build_model, effective_config, model_config
from stocklab.spaces import check_comparable, load_space
from stocklab.training import fit, predict, set_seed
from stocklab.windows import Scaler, WindowSet

FR = (0.6, 0.2, 0.2)


def _bars(n_tickers: int, n_days: int, signal: float = 0.0) -> pd.DataFrame:
    """Independent tickers (synthetic_bars' tickers share one noise stream and scale by index)."""
    one = [synthetic_bars(n_tickers=1, n_days=n_days, seed=s, signal=signal) for s in range(n_tickers)]
    return pd.concat([b.assign(Name=f"S{s:02d}") for s, b in enumerate(one)], ignore_index=True)


def test_label_transforms_on_hand_made_days():
    nan = np.nan
    # 4 tickers x 4 days: day 0 has ties, day 1 a NaN, day 2 one ticker, day 3 a constant day
    y = np.array(
        [[0.01, 0.03, 0.05, 0.02], [0.02, nan, nan, 0.02], [0.02, -0.01, nan, 0.02], [0.05, 0.02, nan, 0.02]],
        np.float32,
    )
    labelled = np.isfinite(y)
    raw, thin = label_target(y, labelled, "raw")
    np.testing.assert_array_equal(raw, y)
    assert thin == 0  # raw keeps every label
    for mode in ("excess", "cs_zscore", "cs_rank"):
        out, thin = label_target(y, labelled, mode, min_tickers=2)
        assert thin == 1 and np.isnan(out[:, 2]).all(), mode  # the one-ticker day is dropped and counted
        assert np.isnan(out[1, 1]) and np.isfinite(out[[0, 2, 3], 1]).all(), mode  # NaN stays out
    day0 = y[:, 0].astype(np.float64)
    excess, _ = label_target(y, labelled, "excess", min_tickers=2)
    np.testing.assert_allclose(excess[:, 0], day0 - day0.mean(), atol=1e-7)
    z, _ = label_target(y, labelled, "cs_zscore", min_tickers=2)
    np.testing.assert_allclose(z[:, 0], (day0 - day0.mean()) / day0.std(), atol=1e-6)
    np.testing.assert_array_equal(z[:, 3], 0.0)  # a constant day has no spread: all 0
    r, _ = label_target(y, labelled, "cs_rank", min_tickers=2)
    ranks = stats.rankdata(day0)  # ties (two 0.02) share their mean rank
    np.testing.assert_allclose(r[:, 0], (ranks - ranks.mean()) / ranks.std(), atol=1e-6)
    assert r[1, 0] == r[2, 0] and r[:, 0].std() == pytest.approx(1.0, abs=1e-6)
    # day 1's two tickers: min_tickers 5 (the default) drops every day of this frame
    assert label_target(y, labelled, "cs_rank")[1] == 4


def test_cs_zscore_scaler_standardises_each_day_and_skips_relative_columns(bars):
    p = build_panel(long_bars(bars), "ohlcv", horizon=5, label_scale=1.0)
    p.X[0, 50, 3] = np.nan  # one unknown value stays unknown
    s = Scaler.fit(p.X, 150, "cs_zscore", skip_cols=(6,))
    out = s.transform(p.X)
    days = out[:, 40:60, :6].astype(np.float64)
    np.testing.assert_allclose(np.nanmean(days, axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(days, axis=0), 1.0, atol=1e-4)
    assert np.isnan(out[0, 50, 3])
    np.testing.assert_array_equal(out[..., 6], p.X[..., 6])  # a skipped column is unchanged
    again = Scaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(again.transform(p.X), out)
    # nothing is fitted: day t's values depend on day t alone
    np.testing.assert_array_equal(zscore_days(p.X[:, :41], (6,))[:, 40], out[:, 40])


@pytest.mark.parametrize("label", LABELS)
def test_targets_and_predictions_up_to_day_t_ignore_every_later_bar(bars, label):
    """Change every bar after day t: the training targets whose labels are known by t, and the
    predictions for windows ending by t (per-day feature z-scores), are unchanged."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10 * 7, 1))
    df = long_bars(_bars(8, 300))
    p = build_panel(df, "ohlcv", horizon=5, label_scale=1.0)
    day = 200
    ws = WindowSet(p, 10, 5, FR, "cs_zscore", label=label)
    scramble_prices_after(df, p.dates[day])
    p2 = build_panel(df, "ohlcv", horizon=5, label_scale=1.0)
    ws2 = WindowSet(p2, 10, 5, FR, "cs_zscore", label=label)
    known = slice(0, day - 5 + 1)  # labels of end days s with s + horizon <= t
    assert torch.equal(ws.target[:, known], ws2.target[:, known])
    assert torch.equal(ws.target_ok[:, known], ws2.target_ok[:, known])
    assert not torch.equal(ws.target[:, day + 1 :], ws2.target[:, day + 1 :])  # the future changed
    n = torch.arange(len(p.tickers))
    for t in (day - 3, day):
        ends = torch.full_like(n, t)
        assert torch.equal(model(ws.gather(n, ends)), model(ws2.gather(n, ends)))


def _dates_numpy(score, y, t, per_date):
    return np.mean([per_date(score[t == d], y[t == d]) for d in np.unique(t)])


def test_daily_losses_match_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    t = np.repeat([3, 7, 9], [5, 8, 6])
    score, y = rng.normal(size=len(t)), rng.normal(size=len(t))
    args = [torch.tensor(a) for a in (score, y, t)]
    expected_ic = -_dates_numpy(score, y, t, lambda s, v: np.corrcoef(s, v)[0, 1])
    assert float(ic_loss(*args)) == pytest.approx(expected_ic, rel=1e-6)

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    expected_listnet = _dates_numpy(score, y, t, lambda s, v: -(softmax(v) * np.log(softmax(s))).sum())
    assert float(listnet(*args)) == pytest.approx(expected_listnet, rel=1e-6)
    # gradients exist and are finite, also for a date whose scores are all equal
    s = torch.tensor(np.where(t == 3, 0.5, score), requires_grad=True)
    (ic_loss(s, args[1], args[2]) + listnet(s, args[1], args[2])).backward()
    assert torch.isfinite(s.grad).all()


def test_group_ranks_and_device_rank_ic_match_scipy_and_factor_eval():
    rng = np.random.default_rng(1)
    t = np.repeat(np.arange(6), 9)
    pred = np.round(rng.normal(size=len(t)), 1)  # rounded: many ties
    label = rng.normal(size=len(t))
    pred[t == 5] = 0.25  # a constant date: undefined, left out
    ranks = group_ranks(torch.tensor(pred), torch.tensor(t)).numpy()
    for d in range(6):
        np.testing.assert_allclose(ranks[t == d], stats.rankdata(pred[t == d]) - 1)
    df = pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=6)[t], "prediction": pred, "label": label})
    expected = daily_ic(df)["rank_ic"]
    assert len(expected) == 5
    assert rank_ic(torch.tensor(pred), torch.tensor(label), torch.tensor(t)) == pytest.approx(expected.mean())


def _panel(n_tickers=12, n_days=260, signal=0.5):
    return build_panel(long_bars(_bars(n_tickers, n_days, signal)), "returns", horizon=1, label_scale=1.0)


def test_daily_batches_hold_whole_days_and_every_window_once():
    p = _panel()
    ws = WindowSet(p, 5, 1, FR, "standard", label="cs_rank")
    n_all, t_all = ws.index["train"]
    per_day = torch.bincount(t_all)
    seen = []
    gen = torch.Generator().manual_seed(0)
    batches = list(ws.index_batches("train", 30, gen, daily=True))
    for n, t in batches:
        days = t.unique()
        assert torch.equal(torch.bincount(t, minlength=len(per_day))[days], per_day[days])  # whole days
        assert len(days) == round(30 * len(per_day.nonzero()) / len(t_all))  # ~30 windows each
        seen += list(zip(n.tolist(), t.tolist()))
    assert len(seen) == len(t_all) and set(seen) == set(zip(n_all.tolist(), t_all.tolist()))
    order = [int(t[0]) for _, t in batches]
    assert order != sorted(order)  # days in a shuffled order
    # the last partial batch is kept: 11 days in batches of 2 days
    assert sum(len(n) for n, _ in ws.index_batches("train", 2 * 12, daily=True)) == len(t_all)


def test_select_rank_ic_keeps_the_epoch_with_the_best_validation_rank_ic():
    p = _panel()
    ws = WindowSet(p, 5, 1, FR, "standard", label="cs_rank")
    cfg = TrainConfig(epochs=6, patience=6, lr=3e-3, batch_size=64, select="rank_ic", batching="daily", loss="ic")
    set_seed(0)
    model = build_model("lstm", ws.n_features, 5, model_config("lstm", {"hidden_size": 8}))
    hist = fit(model, ws, cfg)
    assert len(hist.valid_rank_ic) == 6
    best = int(np.argmax(hist.valid_rank_ic))
    assert hist.best_epoch == best + 1 and hist.best_rank_ic == hist.valid_rank_ic[best]
    assert hist.best_valid == hist.valid_loss[best]  # the kept epoch's loss, not the lowest
    pred, y, n, t = predict(model, ws, "valid")
    df = pd.DataFrame({"date": p.dates[t], "prediction": pred, "label": y})
    assert daily_ic(df)["rank_ic"].mean() == pytest.approx(hist.best_rank_ic, abs=1e-5)  # restored


def test_a_cross_sectional_recipe_learns_the_planted_signal():
    """With the raw label as target the planted effect is learnt from each day's ranking too."""
    p = _panel(n_days=400, signal=0.6)
    ws = WindowSet(p, 5, 1, FR, "standard", label="cs_rank")
    cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=64, batching="daily", loss="rank", select="rank_ic")
    set_seed(0)
    model = build_model("linear", ws.n_features, 5, model_config("linear"))
    fit(model, ws, cfg)
    pred, y, n, t = predict(model, ws, "test")
    df = pd.DataFrame({"date": p.dates[t], "prediction": pred, "label": y})
    assert daily_ic(df)["rank_ic"].mean() > 0.2


def test_bad_recipe_combinations_are_one_line_errors():
    with pytest.raises(StockLabError, match="loss: 'ic' is computed over each date's cross-section and needs batching"):
        TrainConfig(loss="ic", batching="random").validate()
    with pytest.raises(StockLabError, match="label: 'rank' must be one of raw, excess, cs_zscore, cs_rank"):
        TrainConfig(label="rank").validate()
    cfg = TrainConfig(model="cnn_ta", loss="rank", batching="daily").validate()
    with pytest.raises(StockLabError, match="loss: 'rank' ranks a return forecast .* output is classes"):
        effective_config(cfg, model_config("cnn_ta"))
    with pytest.raises(StockLabError, match="recipes: 'raw,xs' must name recipes among cs, raw"):
        BenchmarkConfig(suite="models", data="sample", recipes="raw,xs").validate()
    with pytest.raises(StockLabError, match="tickers/days: 5 x 100 is too small"):
        BenchmarkConfig(suite="recovery", tickers=5, days=100).validate()
    assert objective(RETURN, "mse")[0] is RETURN.loss
    with pytest.raises(StockLabError, match="loss: unknown loss 'mae' \\(choose from mse, ic, rank\\)"):
        objective(RETURN, "mae")  # never a silent fallback to the output's own loss


def test_the_training_target_is_searched_only_on_a_rank_ic_objective(tmp_path):
    space = load_space("lstm", MODELS["lstm"][1])
    assert {"label", "batching", "loss", "select"} <= set(space)
    check_comparable(space, "valid_rank_ic")
    check_comparable(space, "valid_loss")  # the built-in space searches them only on rank IC
    mine = tmp_path / "space.yaml"
    mine.write_text("label: {type: categorical, choices: [raw, cs_rank]}\n")
    with pytest.raises(StockLabError, match="space: 'label' is searched but metric=valid_loss compares"):
        check_comparable(load_space("lstm", MODELS["lstm"][1], str(mine)), "valid_loss")


def test_thin_days_are_counted_in_the_data_report(tracking, tmp_path):
    from stocklab.pipeline.fitting import train_in_run

    bars = long_bars(
        pd.concat([synthetic_bars(n_tickers=1, n_days=200, seed=s).assign(Name=f"S{s}") for s in range(6)])
    )
    # one ticker alone for the first 30 days: those days have one labelled ticker each
    late = bars["ticker"] != "S0"
    bars = bars[~late | (bars["date"] >= bars["date"].min() + pd.Timedelta(days=60))]
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path)
    cfg = TrainConfig(data=str(path), epochs=1, seq_len=5, horizon=1, features="returns", label="cs_zscore",
                      cache_dir="", tear_sheet=False, model="linear")  # fmt: skip
    with mlflow.start_run() as run:
        res = train_in_run(cfg)
    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data_report.json")
    assert report["label"] == "cs_zscore" and report["label_min_tickers"] == 5
    assert 30 <= report["label_thin_days_dropped"] <= 45
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["stocklab.label"] == "cs_zscore" and "vs the raw forward return" in tags["stocklab.loss_target"]
    # the factor metrics judge the raw forward return: the logged labels are raw returns
    preds = pd.read_parquet(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/predictions.parquet"))
    assert preds["label"].abs().max() < 0.2 and np.isfinite(res["test_rank_ic"])


def test_planted_market_is_reproducible_and_its_oracle_uses_only_the_past():
    from stocklab.benchmarks.recovery import LOOKBACK, planted_market

    a, b = planted_market(20, 120, seed=3), planted_market(20, 120, seed=3)
    pd.testing.assert_frame_equal(a.bars, b.bars)
    # the score at day t is the formula on the closes up to t (so a window ending at t has it)
    close = a.bars.pivot(index="ticker", columns="date", values="close").to_numpy()
    r = np.diff(np.log(close), axis=1)  # r[:, t-1] = return of day t
    t = 80
    past = r[:, t - LOOKBACK : t]  # the returns of days t-19..t
    vol = past.std(axis=1)
    z = past.sum(axis=1) / (vol * np.sqrt(LOOKBACK))
    expected = np.tanh(z) * np.tanh(2 * np.log(vol / np.median(vol)))
    score = a.oracle.pivot(index="ticker", columns="date", values="score").to_numpy()[:, t]
    np.testing.assert_allclose(score, expected, rtol=1e-6, atol=1e-9)

    # the planted strength: the oracle's rank IC with the 20-day forward return is ~0.1
    big = planted_market(200, 1000)
    close = big.bars.pivot(index="date", columns="ticker", values="close")
    fwd = (close.shift(-20) / close - 1).stack().rename("label")
    frame = big.oracle.set_index(["date", "ticker"])["score"].rename("prediction").to_frame().join(fwd, how="inner")
    ic = daily_ic(frame.reset_index().dropna())["rank_ic"]
    assert 0.06 < ic.iloc[LOOKBACK:].mean() < 0.16


@pytest.mark.slow
def test_recovery_suite_reports_each_recipe_against_the_oracle(tracking, tmp_path, monkeypatch):
    from stocklab.jobs.benchmark import run_benchmark

    monkeypatch.chdir(tmp_path)
    report = tmp_path / "rep" / "recovery.md"
    cfg = BenchmarkConfig(suite="recovery", models="linear", tickers=30, days=300, epochs=1, report=str(report),
                          tear_sheet=False)  # fmt: skip
    out = run_benchmark(cfg)
    runs = out["runs"].set_index("recipe")
    assert set(runs.index) == {"raw", "cs"}
    oracle = out["oracle_rank_ic"]
    assert np.isfinite(oracle) and oracle != 0  # its strength: the planted-market test above
    for recipe in ("raw", "cs"):
        assert runs.loc[recipe, "recovery"] == pytest.approx(runs.loc[recipe, "rank_ic"] / oracle)
    text = report.read_text()
    assert "| linear |" in text and f"| oracle (the planted score) | {oracle:+.4f} | 1.00" in text
    assert (report.parent / "recovery.png").stat().st_size > 10_000
    children = mlflow.search_runs(experiment_names=["stocklab-benchmark-recovery"],
                                  filter_string="tags.`stocklab.role` = 'benchmark'")  # fmt: skip
    assert sorted(children["tags.stocklab.recipe"]) == ["cs", "raw"]
    cs = children[children["tags.stocklab.recipe"] == "cs"].iloc[0]
    assert (cs["params.label"], cs["params.batching"], cs["params.select"]) == ("cs_rank", "daily", "rank_ic")
    assert dataclasses.asdict(cfg)["tickers"] == 30


# networks: lgbm ranks with its own objective (objective=lambdarank, test_lgbm.py)
TRAINED = [
    m for m, (cls, _) in MODELS.items()
    if cls.output.score is not None and cls.trained_by == "gradient" and m not in ("naive", "factor")
]  # fmt: skip


@pytest.mark.parametrize("name", TRAINED)
def test_every_rankable_model_trains_with_a_daily_loss(name):
    """Any trained model with a return forecast takes a loss over dates, and trains on it (the losses themselves:
    test_daily_losses_match...; cnn_ta's classes cannot: test_bad_recipe_combinations...;
    naive and factor train nothing)."""
    p = _panel(n_tickers=6, n_days=120)
    ws = WindowSet(p, 12, 1, FR, "standard", label="cs_zscore")
    mcfg = model_config(name)
    cfg = effective_config(TrainConfig(model=name, seq_len=12, horizon=1, epochs=1, batching="daily"), mcfg)
    set_seed(0)
    model = build_model(name, ws.n_features, cfg.seq_len, mcfg)
    before = [p.detach().clone() for p in model.parameters()]
    hist = fit(model, ws, dataclasses.replace(cfg, loss="rank").validate())
    assert np.isfinite(hist.train_loss[0]) and np.isfinite(hist.valid_loss[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained
    # on the rank loss: the same start and the same daily batches under MSE end elsewhere
    set_seed(0)
    by_mse = build_model(name, ws.n_features, cfg.seq_len, mcfg)
    assert all(torch.equal(a, b) for a, b in zip(before, by_mse.parameters()))
    fit(by_mse, ws, dataclasses.replace(cfg, loss="mse").validate())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), by_mse.parameters()))
