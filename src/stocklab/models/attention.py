"""LSTM encoder + dot-product attention: the query is the last hidden state, keys and values are
all encoder states; the context and the query feed the head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from stocklab.fields import opt
from stocklab.models.base import StockModel


@dataclass
class AttentionConfig:
    hidden_size: int = opt(32, "hidden units per recurrent layer", ge=1)
    num_layers: int = opt(1, "stacked layers", ge=1)
    dropout: float = opt(0.1, "dropout rate", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm1d on [context, query] before the head")


class Attention(StockModel):
    def __init__(self, n_features: int, seq_len: int, cfg: AttentionConfig):
        super().__init__()
        self.encoder = nn.LSTM(
            n_features,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.norm = nn.BatchNorm1d(2 * cfg.hidden_size) if cfg.batch_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden_size, 1)

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.encoder(x)  # keys = values: (B, T, H)
        query = out[:, -1]  # (B, H)
        scores = torch.einsum("bth,bh->bt", out, query) / math.sqrt(out.shape[-1])  # (B, T)
        weights = torch.softmax(scores, dim=1)  # (B, T)
        context = torch.einsum("bt,bth->bh", weights, out)  # (B, H)
        return torch.cat([context, query], dim=1), weights

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) attention over the window's days (for the heatmap artifact)."""
        return self.attend(x)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        z, _ = self.attend(x)
        return self.head(self.drop(self.norm(z))).squeeze(-1)  # (B,)
