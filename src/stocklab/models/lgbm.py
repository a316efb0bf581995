"""`lgbm`: LightGBM gradient-boosted trees, the non-network yardstick every network must beat.

The trees see exactly what a network sees: the same scaled windows, splits, folds and labels,
one row per (ticker, end day) with the window's T x F values flattened into T*F columns. The
flat window rather than per-window summary statistics: trees split on single values, so they
pick the few lags that matter themselves, and a summary (means, slopes) would hand them less
than the networks get and blur the comparison. Trained by boosting.py, not the gradient
trainer; `objective=lambdarank` ranks each date's cross-section (one LightGBM query per date,
relevance = the date's quantile bucket of the target), the trees' counterpart of `loss=rank`.
The fitted booster is kept in LightGBM's own text format (`booster.txt`), never pickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stocklab.errors import StockLabError
from stocklab.fields import opt
from stocklab.models.base import StockModel

BOOSTER_FILE = "booster.txt"


@dataclass
class LGBMConfig:
    objective: str = opt("regression", "regression (L2 on the target) or lambdarank (a query per date)",
                         ("regression", "lambdarank"))  # fmt: skip
    num_leaves: int = opt(31, "leaves per tree", ge=2, why="(a one-leaf tree is a constant)")
    learning_rate: float = opt(0.05, "shrinkage per boosting round", gt=0.0, le=1.0)
    feature_fraction: float = opt(0.8, "share of the T*F columns each tree sees", gt=0.0, le=1.0)
    bagging_fraction: float = opt(0.8, "share of the rows each round sees (bagging every round)", gt=0.0, le=1.0)
    min_data_in_leaf: int = opt(200, "rows a leaf holds at least", ge=1)
    lambda_l2: float = opt(1.0, "L2 penalty on the leaf values", ge=0.0)
    n_estimators: int = opt(500, "boosting rounds at most (early stopping on the validation split)", ge=1)
    rounds_per_epoch: int = opt(25, "boosting rounds per reported epoch (logging, pruning, patience)", ge=1)
    relevance_levels: int = opt(
        10,
        "lambdarank: relevance grades (each date's quantile buckets)",
        ge=2,
        le=31,
        why="(LightGBM's default label_gain has 31 grades)",
    )


class LGBM(StockModel):
    """x (B, T, F) scaled windows -> (B,) the booster's score of the flattened window."""

    trained_by = "boosting"

    @classmethod
    def fixed_inputs(cls, cfg: LGBMConfig) -> dict:
        """Its epochs are `n_estimators` in steps of `rounds_per_epoch` (train's --epochs is not
        its budget: the rounds are)."""
        return {"epochs": math.ceil(cfg.n_estimators / cfg.rounds_per_epoch)}

    def __init__(self, n_features: int, seq_len: int, cfg: LGBMConfig):
        super().__init__()
        self.cfg = cfg
        self.n_inputs = seq_len * n_features
        self.booster = None  # lightgbm.Booster once fitted (boosting.fit_booster) or loaded
        self.best_iteration: int | None = None  # rounds kept by early stopping (None: all)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        if self.booster is None:
            raise StockLabError("lgbm: the booster is not fitted yet")
        flat = x.detach().float().cpu().numpy().reshape(len(x), -1)  # (B, T*F)
        pred = self.booster.predict(flat, num_iteration=self.best_iteration) if len(flat) else np.zeros(0)
        return torch.from_numpy(np.asarray(pred, dtype=np.float32)).to(x.device)  # (B,)

    def gain_importance(self, n_features: int) -> np.ndarray:
        """Split gain of the kept rounds per feature, summed over the window's days (the rows
        are flattened (T, F) windows: column t * F + f)."""
        gain = self.booster.feature_importance("gain", iteration=self.best_iteration)  # (T*F,)
        return np.asarray(gain, dtype=float).reshape(-1, n_features).sum(axis=0)  # (F,)

    def save_state(self, folder: Path) -> None:
        self.booster.save_model(str(Path(folder) / BOOSTER_FILE), num_iteration=self.best_iteration)

    def load_state(self, folder: Path) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=str(Path(folder) / BOOSTER_FILE))
        self.best_iteration = None  # the file holds the kept rounds only
        if self.booster.num_feature() != self.n_inputs:
            raise StockLabError(f"lgbm: the booster reads {self.booster.num_feature()} columns, not {self.n_inputs}")
