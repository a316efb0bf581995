"""Vanilla RNN of the RNN study: every time step's output, flattened, feeds one linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.fields import opt
from stocklab.models.base import StockModel


@dataclass
class RNNConfig:
    hidden_size: int = opt(8, "hidden units per recurrent layer", ge=1)
    num_layers: int = opt(2, "stacked layers", ge=1)
    dropout: float = opt(0.0, "between RNN layers", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm1d on the flattened step outputs before the head")
    sigmoid: bool = opt(False, "squash the output to (0, 1) for min-max scaled targets")


class RNN(StockModel):
    def __init__(self, n_features: int, seq_len: int, cfg: RNNConfig):
        super().__init__()
        self.rnn = nn.RNN(
            n_features,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.norm = nn.BatchNorm1d(seq_len * cfg.hidden_size) if cfg.batch_norm else nn.Identity()
        self.head = nn.Linear(seq_len * cfg.hidden_size, 1)
        self.sigmoid = cfg.sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        out, _ = self.rnn(x)  # (B, T, H)
        y = self.head(self.norm(out.flatten(1))).squeeze(-1)  # all steps (B, T*H) -> (B,)
        return torch.sigmoid(y) if self.sigmoid else y
