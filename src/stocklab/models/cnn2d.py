"""2D CNN over the (days x features) window, as in the 2D-CNN study.

`variant=baseline` uses 2 -> 4 channels, `variant=deep` 8 -> 16; `channels1`/`channels2` override
them, and `variant=custom` takes its channels from them alone (both must be set).
Convolutions mix neighbouring days and features; pooling is over days only, because the seven
feature columns are few and unordered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.fields import opt
from stocklab.models.base import StockModel

VARIANTS = {"baseline": (2, 4), "deep": (8, 16), "custom": (0, 0)}


@dataclass
class CNN2DConfig:
    variant: str = opt(
        "baseline", "channel preset: baseline 2->4, deep 8->16, custom = channels1/2", ("baseline", "deep", "custom")
    )
    channels1: int = opt(0, "first conv layer's channels (0 = from variant)", ge=0)
    channels2: int = opt(0, "second conv layer's channels (0 = from variant)", ge=0)
    kernel: int = opt(3, "convolution kernel size", ge=1)
    dropout: float = opt(0.1, "dropout rate", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm before the head")


class CNN2D(StockModel):
    def __init__(self, n_features: int, seq_len: int, cfg: CNN2DConfig):
        super().__init__()
        c1, c2 = VARIANTS[cfg.variant]
        c1, c2 = cfg.channels1 or c1, cfg.channels2 or c2
        if not (c1 and c2):
            raise ValueError("variant=custom needs channels1 and channels2 > 0")
        k, pad = cfg.kernel, cfg.kernel // 2

        def block(cin: int, cout: int) -> nn.Sequential:
            norm = nn.BatchNorm2d(cout) if cfg.batch_norm else nn.Identity()
            pool = nn.MaxPool2d((2, 1)) if seq_len >= 4 else nn.Identity()
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad), norm, nn.ReLU(), pool)

        self.features = nn.Sequential(block(1, c1), block(c1, c2))
        with torch.no_grad():  # flattened size for this (seq_len, n_features)
            n_flat = self.features(torch.zeros(1, 1, seq_len, n_features)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(n_flat, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        z = self.features(x.unsqueeze(1))  # (B, C2, T/4, F)
        return self.head(z).squeeze(-1)  # (B,)
