"""A small Transformer encoder over the window: linear embedding + learned positions, pre-norm
encoder layers, the last day's token feeds the head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.errors import StockLabError
from stocklab.fields import opt
from stocklab.models.base import StockModel


@dataclass
class TransformerConfig:
    d_model: int = opt(32, "model width (divisible by nhead)", ge=1)
    nhead: int = opt(4, "attention heads", ge=1)
    num_layers: int = opt(2, "stacked layers", ge=1)
    dim_feedforward: int = opt(64, "feed-forward width", ge=1)
    dropout: float = opt(0.1, "dropout rate", ge=0.0, lt=1.0)
    batch_norm: bool = opt(False, "BatchNorm1d on the last token before the head (the encoder keeps its LayerNorms)")

    def validate(self):
        if self.d_model % self.nhead:
            raise StockLabError(f"d_model: {self.d_model} must be divisible by nhead={self.nhead}")


class Transformer(StockModel):
    def __init__(self, n_features: int, seq_len: int, cfg: TransformerConfig):
        super().__init__()
        self.embed = nn.Linear(n_features, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, cfg.d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.nhead, cfg.dim_feedforward, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.batch_norm = nn.BatchNorm1d(cfg.d_model) if cfg.batch_norm else nn.Identity()
        self.head = nn.Linear(cfg.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, F)
        z = self.encoder(self.embed(x) + self.pos)  # (B, T, D)
        return self.head(self.batch_norm(self.norm(z[:, -1]))).squeeze(-1)  # (B,)
