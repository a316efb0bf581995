"""Feature sets compose (`relative+alpha158`), the robust scaler is Qlib's, and a model trains on
alpha158 through the train job (its formulas against an independent pandas computation:
test_alpha158.py)."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from conftest import long_bars, synthetic_bars, write_ticker_csvs

from stocklab.config import StockLabError, TrainConfig
from stocklab.features import build_panel, check_feature_sets
from stocklab.jobs.train import run_train
from stocklab.windows import ROBUST_CLIP, WindowSet


@pytest.fixture(scope="module")
def bars():
    return long_bars(synthetic_bars(n_tickers=6, n_days=300))


def test_sets_compose_side_by_side_with_their_relative_columns_reindexed(bars):
    rel, alpha = build_panel(bars, "relative", 5, 1.0), build_panel(bars, "alpha158", 5, 1.0)
    both = build_panel(bars, "relative+alpha158", 5, 1.0)
    assert both.feature_names == rel.feature_names + alpha.feature_names and len(alpha.feature_names) == 157
    np.testing.assert_array_equal(both.X, np.concatenate([rel.X, alpha.X], axis=-1))
    assert both.relative_cols == rel.relative_cols and both.relative_ref == rel.relative_ref
    flipped = build_panel(bars, "alpha158+relative", 5, 1.0)
    assert flipped.relative_cols == [157 + c for c in rel.relative_cols]
    assert flipped.relative_ref == [157 + c for c in rel.relative_ref]
    for bad in ("auto+relative", "relative+relative", "relative+alpha999"):
        with pytest.raises(StockLabError, match=f"features: '{bad.replace('+', '[+]')}' must be one of"):
            check_feature_sets(bad)


def test_the_robust_scaler_is_median_and_mad_of_the_training_days_clipped_to_3(bars):
    panel = build_panel(bars, "relative+alpha158", 5, 1.0)
    raw = panel.X.copy()
    ws = WindowSet(panel, 10, 5, (0.6, 0.2, 0.2), "robust")
    f = ws.fold
    train = raw[:, f.train_start : f.valid_start].reshape(-1, raw.shape[-1]).astype(np.float64)
    j = panel.feature_names.index("ROC20")  # an independent computation for one alpha158 column
    med = np.nanmedian(train[:, j])
    mad = 1.4826 * np.nanmedian(np.abs(train[:, j] - med))
    expected = np.clip((raw[..., j] - med) / mad, -ROBUST_CLIP, ROBUST_CLIP)
    got = ws.X[..., j].numpy()
    ok = np.isfinite(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-5, atol=1e-5)
    assert (got[~ok] == 0).all()  # missing -> 0 after scaling
    assert np.abs(ws.X[..., 5:].numpy()).max() <= ROBUST_CLIP  # every alpha158 column clipped
    assert np.abs(ws.X[..., :5].numpy()).max() > ROBUST_CLIP  # log price levels: relative later, never clipped


def test_a_tree_model_trains_on_alpha158_with_the_robust_scaler(tracking, tmp_path):
    data = write_ticker_csvs(synthetic_bars(n_tickers=8, n_days=260), tmp_path / "csvs")
    cfg = TrainConfig(data=str(data), model="lgbm", features="alpha158", scaler="robust", seq_len=1, horizon=5,
                      cache_dir="", tear_sheet=False)  # fmt: skip
    res = run_train(cfg, {"n_estimators": 20, "rounds_per_epoch": 10})
    params = mlflow.get_run(res["run_id"]).data.params
    assert params["features_resolved"] == "alpha158" and int(params["n_features"]) == 157
    assert np.isfinite(res["valid_rank_ic"])
