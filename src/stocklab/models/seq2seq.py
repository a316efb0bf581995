"""Sequence-to-sequence regressor: a recurrent net returns the whole sequence and a per-step dense
head predicts the next value at every step. Trained on per-step targets (the label of every day
in the window); the prediction for the window is the last step's.

With `relative` features (the default recipe's) only the last step is trained: every step's
input is its price over the window's *last* close, so step s sees the return from s to the
window's end, most of its own label's forward return (losses.step_mse). Per-step training
needs inputs that are causal per step: `features=returns` (the seed003 preset)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.fields import opt
from stocklab.losses import STEPS
from stocklab.models.base import StockModel


@dataclass
class Seq2SeqConfig:
    hidden_size: int = opt(100, "hidden units per recurrent layer", ge=1)
    num_layers: int = opt(1, "stacked layers", ge=1)
    cell: str = opt("lstm", "recurrent cell", ("lstm", "rnn"))
    dropout: float = opt(0.0, "dropout rate", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm1d over the hidden units of every step, before the per-step head")


class Seq2Seq(StockModel):
    output = STEPS  # trained on per-step forecasts (B, T) vs every day's label

    def __init__(self, n_features: int, seq_len: int, cfg: Seq2SeqConfig):
        super().__init__()
        cell = {"lstm": nn.LSTM, "rnn": nn.RNN}[cfg.cell]
        self.rnn = cell(
            n_features,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.norm = nn.BatchNorm1d(cfg.hidden_size) if cfg.batch_norm else nn.Identity()
        self.head = nn.Linear(cfg.hidden_size, 1)  # applied at every step

    def train_outputs(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        out, _ = self.rnn(x)  # (B, T, H)
        out = self.norm(out.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d wants (B, H, T)
        return self.head(out).squeeze(-1)  # (B, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.train_outputs(x)[:, -1]  # (B,)
