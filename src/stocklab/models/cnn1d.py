"""Autoregressive 1D CNN: one convolution over the lagged inputs (e.g. 12 monthly returns), then a
dense head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.errors import StockLabError
from stocklab.fields import opt
from stocklab.models.base import StockModel


@dataclass
class CNN1DConfig:
    channels: int = opt(16, "convolution channels", ge=1)
    kernel: int = opt(3, "convolution kernel size", ge=1)
    dropout: float = opt(0.1, "dropout rate", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm1d after the convolution")
    hidden: int = opt(32, "units of a ReLU dense layer before the output (0: the conv's features straight to it)", ge=0)


class CNN1D(StockModel):
    def __init__(self, n_features: int, seq_len: int, cfg: CNN1DConfig):
        super().__init__()
        if cfg.kernel > seq_len:  # clamping it would log one kernel and train another
            raise StockLabError(f"kernel: {cfg.kernel} is longer than the window (seq_len={seq_len})")
        k = cfg.kernel
        self.conv = nn.Conv1d(n_features, cfg.channels, k)  # over time, features as channels
        self.norm = nn.BatchNorm1d(cfg.channels) if cfg.batch_norm else nn.Identity()
        width = cfg.channels * (seq_len - k + 1)
        # a second non-linearity: one conv + ReLU + linear is a sum of 3-day patch terms, which
        # cannot form a window-wide product (trend x volatility)
        dense = [nn.Linear(width, cfg.hidden), nn.ReLU()] if cfg.hidden else []
        self.head = nn.Sequential(
            nn.ReLU(), nn.Flatten(), nn.Dropout(cfg.dropout), *dense, nn.Linear(cfg.hidden or width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        z = self.norm(self.conv(x.transpose(1, 2)))  # (B, C, T - k + 1)
        return self.head(z).squeeze(-1)  # (B,)
