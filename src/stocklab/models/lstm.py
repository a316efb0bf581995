"""Stacked LSTM (the LSTM lab) and its GRU twin: dropout between layers, optional batch norm
before the head, prediction from the last step's hidden state."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.fields import opt
from stocklab.models.base import StockModel


@dataclass
class LSTMConfig:
    hidden_size: int = opt(32, "hidden units per recurrent layer", ge=1)
    num_layers: int = opt(2, "stacked layers", ge=1)
    dropout: float = opt(0.1, "between recurrent layers and before the head", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm1d on the last hidden state")


class LSTM(StockModel):
    cell = nn.LSTM

    def __init__(self, n_features: int, seq_len: int, cfg: LSTMConfig):
        super().__init__()
        self.rnn = self.cell(
            n_features,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,  # torch applies it between layers
            batch_first=True,
        )
        self.norm = nn.BatchNorm1d(cfg.hidden_size) if cfg.batch_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        out, _ = self.rnn(x)  # (B, T, H)
        h = self.drop(self.norm(out[:, -1]))  # last step's state: (B, H)
        return self.head(h).squeeze(-1)  # (B,)


class GRU(LSTM):
    """As LSTM with GRU cells (same config)."""

    cell = nn.GRU
