"""`cross`: a model that looks across stocks: each ticker's window encoded over time, then
attention across all tickers of the same date (MASTER, AAAI 2024; GATs and HIST on Qlib).

    x (N, T, F): the windows of every ticker scored on one date (a whole day: `whole_days`)
    -> GRU over each window's T days                       h (N, H)   per-ticker temporal state
    -> + a market vector: the day's mean state, projected  h (N, H)   (MASTER's market guide)
    -> L layers of multi-head self-attention across the N tickers, residual + LayerNorm
    -> a linear head                                       (N,)       one score per ticker

No positional encoding across tickers: permuting a day's tickers permutes the scores (tests
check it). A ticker's score depends on the other tickers of its date (that is the point), never
on later bars, because every window ends on the date. The trainer, the scoring passes and
serving call it one date at a time (StockModel.whole_days), so it trains only with
`batching=daily`, and a served request's tickers of one date are its cross-section.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stocklab.errors import StockLabError
from stocklab.fields import opt
from stocklab.models.base import StockModel


@dataclass
class CrossConfig:
    hidden_size: int = opt(32, "units of the per-ticker GRU and of the attention across tickers (divisible by heads)",
                           ge=1)  # fmt: skip
    heads: int = opt(4, "attention heads across the day's tickers", ge=1)
    num_layers: int = opt(1, "attention layers across tickers", ge=1)
    dropout: float = opt(0.1, "dropout on the attention weights and before the head", ge=0.0, lt=1.0)
    market: bool = opt(True, "add the day's mean state (a market vector) to every ticker's before attending")

    def validate(self):
        if self.hidden_size % self.heads:
            raise StockLabError(f"hidden_size: {self.hidden_size} must be divisible by heads={self.heads}")


class Cross(StockModel):
    whole_days = True

    def __init__(self, n_features: int, seq_len: int, cfg: CrossConfig):
        super().__init__()
        self.encoder = nn.GRU(n_features, cfg.hidden_size, batch_first=True)
        # the window's path, projected: tickers whose recent days moved together find each other
        self.path = nn.Linear(seq_len * n_features, cfg.hidden_size)
        self.market = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.market else None
        self.layers = nn.ModuleList(
            nn.MultiheadAttention(cfg.hidden_size, cfg.heads, dropout=cfg.dropout, batch_first=True)
            for _ in range(cfg.num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.hidden_size) for _ in range(cfg.num_layers))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, F), one date's tickers
        _, h = self.encoder(x)  # (1, N, H): the last state of each ticker's window
        h = h[-1] + self.path(x.flatten(1))  # (N, H)
        if self.market is not None:
            h = h + self.market(h.mean(dim=0, keepdim=True))  # (N, H) + (1, H)
        z = h.unsqueeze(0)  # (1, N, H): the day is one sequence of tickers
        for attend, norm in zip(self.layers, self.norms):
            a, _ = attend(z, z, z, need_weights=False)  # (1, N, H)
            z = norm(z + a)
        return self.head(self.drop(z[0])).squeeze(-1)  # (N,)
