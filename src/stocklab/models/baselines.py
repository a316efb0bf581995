"""Baselines every report compares with.

`linear`: ridge regression on the flattened window, fitted by the shared trainer with an L2
penalty `alpha` on the weights: linear in the window by design, it cannot express a signal that
is a product of two functions of the window (trend x volatility); on tests/test_learnability.py's
planted score it finds the linear part, enough for the networks' bar. `naive`: `zero` predicts
a zero return (no parameters) and `mean` predicts the historical average return of the training
labels (one bias fitted by MSE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.fields import opt
from stocklab.models.base import StockModel


@dataclass
class LinearConfig:
    alpha: float = opt(1e-3, "ridge penalty on the weights", ge=0.0)


class Linear(StockModel):
    def __init__(self, n_features: int, seq_len: int, cfg: LinearConfig):
        super().__init__()
        self.fc = nn.Linear(seq_len * n_features, 1)
        self.alpha = cfg.alpha

    def penalty(self) -> torch.Tensor:
        return self.alpha * (self.fc.weight**2).sum()  # ridge: L2 on weights, not the intercept

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        return self.fc(x.flatten(1)).squeeze(-1)  # (B,)


@dataclass
class NaiveConfig:
    mode: str = opt("zero", "naive forecast", ("zero", "mean"))

    def validate(self):
        pass  # `mode` is checked against its choices


class Naive(StockModel):
    constant_forecast = True  # zero, or the training mean: constant on purpose

    def __init__(self, n_features: int, seq_len: int, cfg: NaiveConfig):
        super().__init__()
        self.mode = cfg.mode
        if cfg.mode == "mean":
            self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        zero = x[:, -1, 0] * 0.0  # (B,) on x's device and dtype, traceable by torch.export
        return zero + self.bias if self.mode == "mean" else zero
