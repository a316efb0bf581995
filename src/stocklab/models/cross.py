"""`cross`: a model that looks across stocks: each ticker's window encoded over time, then
attention across all tickers of the same date (MASTER, AAAI 2024; GATs and HIST on Qlib).

    x (N, T, F): the windows of every ticker scored on one date (a whole day: `whole_days`)
    -> GRU over each window's T days                       h (N, H)   per-ticker temporal state
    -> + a market vector: the day's mean state, projected  h (N, H)   (MASTER's market guide)
    -> L layers of multi-head self-attention across the N tickers, residual + LayerNorm; each
       head's logits get a learned mix of the day's co-movement graphs: per feature, the
       correlation of two tickers' day-to-day changes in the window, the day's common move out
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
    comovement: bool = opt(True, "bias the attention by how each feature of two tickers' windows moved together "
                                 "(a co-movement graph learned per head and feature)")  # fmt: skip

    def validate(self):
        if self.hidden_size % self.heads:
            raise StockLabError(f"hidden_size: {self.hidden_size} must be divisible by heads={self.heads}")


# the co-movement weights are kept as graph / COMOVE_SCALE: Adam moves every parameter by about
# lr a step, and a peer needs a logit several units above a stranger's, which at lr 1e-3 and a
# few thousand daily steps only a scaled weight reaches
COMOVE_SCALE = 10.0
# every feature's weight starts at 3: tickers that moved together are peers from the first step
# (a prior, not a fit: without it the attention learned to pool no one on the group market)
COMOVE_INIT = 3.0


def comovement(x: torch.Tensor) -> torch.Tensor:
    """(N, T, F) windows of one date -> (F, N, N): per feature, the correlation across tickers of
    their day-to-day changes over the window, each day's cross-sectional mean change removed
    (so a market-wide move links nobody), zero on the diagonal. Zero for one-day windows."""
    d = x[:, 1:] - x[:, :-1]  # (N, T-1, F)
    d = d - d.mean(dim=0, keepdim=True)  # the day's common move out
    d = d - d.mean(dim=1, keepdim=True)
    d = d / (d.norm(dim=1, keepdim=True) + 1e-6)
    c = torch.einsum("itf,jtf->fij", d, d)  # (F, N, N)
    # a ticker's own correlation (1) would outbid every peer's; its own state reaches the head
    # through the residual
    return c * (1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))


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
        # (heads, F): how much each head trusts each feature's co-movement; peers are found by
        # what moved with a ticker, which dot products of learned states find only slowly
        self.graph = (
            nn.Parameter(torch.full((cfg.heads, n_features), COMOVE_INIT / COMOVE_SCALE)) if cfg.comovement else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, F), one date's tickers
        _, h = self.encoder(x)  # (1, N, H): the last state of each ticker's window
        h = h[-1] + self.path(x.flatten(1))  # (N, H)
        if self.market is not None:
            h = h + self.market(h.mean(dim=0, keepdim=True))  # (N, H) + (1, H)
        bias = (
            None if self.graph is None else torch.einsum("hf,fij->hij", COMOVE_SCALE * self.graph, comovement(x))
        )  # (heads, N, N)
        z = h.unsqueeze(0)  # (1, N, H): the day is one sequence of tickers
        for attend, norm in zip(self.layers, self.norms):
            a, _ = attend(z, z, z, attn_mask=bias, need_weights=False)  # (1, N, H)
            z = norm(z + a)
        return self.head(self.drop(z[0])).squeeze(-1)  # (N,)
