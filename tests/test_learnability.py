"""Learning a planted signal is a tested property of every family under its defaults.

A small synthetic market (benchmarks/recovery.py: a market factor with ticker betas, and a
planted score, a non-linear function of each ticker's last 20 returns, lifting the next day's
return) is trained on with `train_in_run` exactly as `stocklab train --model M` would, changing
nothing but the market and the epoch budget. Agreement = the mean daily rank correlation of the
test predictions with the planted score itself (1 = learned it exactly; unlike the rank IC it
has no market noise). Under the default recipe (cs) every trainable family must reach
MIN_AGREEMENT, the ridge on the flattened window (`linear`) too: it cannot form the score's
product of trend and volatility but finds its linear part. The raw recipe is not fitted here:
nothing would be asserted of it (its agreement is the recovery suite's to report).
"""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from stocklab.benchmarks.recovery import agreement, planted_market
from stocklab.config import TrainConfig
from stocklab.models import BASELINES, MODELS
from stocklab.pipeline.fitting import train_in_run

# the market: small enough to fit every family in seconds on 2 cores (cnn_ta, the slowest, ~45 s
# alone), its signal strong enough to be found from ~11k training windows (at the recovery
# suite's strength, 0.0018, it is not: reports/recovery.md). Measured agreement under cs:
# 0.59-0.70 (lowest: linear 0.587, cnn1d 0.596, cross 0.607; a 40 x 400 market left cross at
# 0.53, too close to the bar to tell a broken default from noise).
TICKERS, DAYS, STRENGTH = 40, 500, 0.05
EPOCHS, PATIENCE = 12, 2  # patience as the models benchmark: the kept epochs are the same as with 3
MIN_AGREEMENT = 0.5
FAMILIES = sorted(set(MODELS) - set(BASELINES)) + ["linear", "lgbm"]


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    planted = planted_market(TICKERS, DAYS, seed=0, strength=STRENGTH)
    path = tmp_path_factory.mktemp("planted") / "bars.parquet"
    planted.bars.to_parquet(path)
    return path, planted.oracle


def _agreement(market, model: str) -> tuple[float, dict]:
    path, oracle = market
    cfg = TrainConfig(data=str(path), model=model, epochs=EPOCHS, patience=PATIENCE, tear_sheet=False, cache_dir="",
                      importance=False)  # fmt: skip
    with mlflow.start_run() as run:
        res = train_in_run(cfg)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions.parquet")
    test = pd.read_parquet(local)
    return agreement(oracle, test), res


@pytest.mark.slow  # 4-45 s a family: full suite only (the inner tier keeps the fits of a few seconds)
@pytest.mark.parametrize("model", FAMILIES)
def test_every_family_learns_the_planted_signal_under_its_defaults(tracking, market, model):
    agree, res = _agreement(market, model)
    print(f"{model}: agreement {agree:.3f} (test rank IC {res['test_rank_ic']:+.3f}, {res['train_epochs_run']} epochs)")
    assert agree >= MIN_AGREEMENT, f"{model} agrees {agree:.3f} with the planted score under its defaults"
