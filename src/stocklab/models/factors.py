"""Classic cross-sectional factors as models that need no training.

`-P model=factor -P factor=<name>` runs a factor through the same harness as every network:
same calendar split or walk-forward folds, same label, same factor metrics and tear sheet, so
its numbers are computed by the same code as the models'. A factor reads raw OHLCV bars: its
inputs are fixed by `Factor.fixed_inputs` (unscaled `ohlcv` features, a window just long enough).

    momentum_12_1     close 21 days ago / close 252 days ago - 1 (12-month return, skip a month)
    reversal_1m       -(close / close 21 days ago - 1): last month's losers are bought
    low_volatility    -(standard deviation of the last 60 daily returns): calm stocks rank high
    volume_change     mean volume of the last 20 days / mean of the 60 days before - 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stocklab.fields import opt
from stocklab.models.base import StockModel

CLOSE, VOLUME = 3, 4  # columns of the `ohlcv` feature set (features.build_panel)
LOOKBACK = {"momentum_12_1": 253, "reversal_1m": 22, "low_volatility": 61, "volume_change": 80}
FACTORS = tuple(LOOKBACK)


@dataclass
class FactorConfig:
    factor: str = opt("momentum_12_1", "which classic factor", FACTORS)

    def validate(self):
        pass  # `factor` is checked against its choices


class Factor(StockModel):
    """x (B, T, F) raw ohlcv bars, T >= the factor's look-back -> (B,) factor value."""

    @classmethod
    def fixed_inputs(cls, cfg: FactorConfig) -> dict:
        """Its formula fixes the inputs: raw OHLCV bars and a window of its look-back."""
        return {"features": "ohlcv", "scaler": "none", "seq_len": LOOKBACK[cfg.factor], "window_stride": 1, "epochs": 1}

    def __init__(self, n_features: int, seq_len: int, cfg: FactorConfig):
        super().__init__()
        self.factor = cfg.factor
        need = LOOKBACK[cfg.factor]
        if seq_len < need or n_features <= VOLUME:
            raise ValueError(f"factor {cfg.factor} needs ohlcv windows of >= {need} days (got {seq_len})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        x = x.double()  # ratios of float32 prices in double: ranks match a float64 reference
        close, volume = x[..., CLOSE], x[..., VOLUME]  # (B, T)
        if self.factor == "momentum_12_1":
            out = close[:, -22] / close[:, -253] - 1.0
        elif self.factor == "reversal_1m":
            out = -(close[:, -1] / close[:, -22] - 1.0)
        elif self.factor == "low_volatility":
            ret = close[:, -60:] / close[:, -61:-1] - 1.0  # (B, 60) daily returns
            out = -ret.std(dim=1, unbiased=True)
        else:  # volume_change
            out = volume[:, -20:].mean(dim=1) / volume[:, -80:-20].mean(dim=1) - 1.0
        return out.float()
