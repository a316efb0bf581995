"""CNN-TA: a 2D CNN on the 15x15 technical-indicator image (indicators x look-backs) of the last
day, a buy/hold/sell classifier. Its prediction (the alpha score) is P(buy) - P(sell)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from stocklab.fields import opt
from stocklab.losses import CLASSES
from stocklab.models.base import StockModel


@dataclass
class CNNTAConfig:
    channels1: int = opt(32, "first conv layer's channels", ge=0)
    channels2: int = opt(64, "second conv layer's channels", ge=0)
    dense: int = opt(128, "units of the dense layer", ge=1)
    dropout: float = opt(0.25, "dropout rate", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm2d after each convolution")


class CNNTA(StockModel):
    output = CLASSES  # cross-entropy on sell/hold/buy terciles of the training labels
    auto_features = "technical"

    @classmethod
    def fixed_inputs(cls, cfg: CNNTAConfig) -> dict:
        # it reads only the last day's indicator image: a longer window would only cost memory
        return {"seq_len": 1, "window_stride": 1}

    def __init__(self, n_features: int, seq_len: int, cfg: CNNTAConfig):
        super().__init__()
        self.side = math.isqrt(n_features)
        if self.side * self.side != n_features:
            raise ValueError(f"cnn_ta needs a square indicator image (features=technical), got {n_features} inputs")
        s = self.side

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if cfg.batch_norm else nn.Identity()

        self.net = nn.Sequential(
            nn.Conv2d(1, cfg.channels1, 3, padding=1),
            norm(cfg.channels1),
            nn.ReLU(inplace=True),  # in place: one activation copy fewer (29-58 KB per window)
            nn.Conv2d(cfg.channels1, cfg.channels2, 3, padding=1),
            norm(cfg.channels2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(cfg.dropout),
            nn.Flatten(),
            nn.Linear(cfg.channels2 * (s // 2) * (s // 2), cfg.dense),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.dense, 3),
        )

    def train_outputs(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, 225): the last day's image
        img = x[:, -1].reshape(-1, 1, self.side, self.side)  # (B, 1, 15, 15)
        return self.net(img)  # (B, 3): sell, hold, buy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.train_outputs(x), dim=-1)  # (B, 3)
        return p[:, 2] - p[:, 0]  # (B,) score in [-1, 1]
