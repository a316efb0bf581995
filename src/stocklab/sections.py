"""Sections: the frozen part of a TrainConfig that one layer reads.

The flat TrainConfig (config.py) is the CLI and MLflow-params surface (one `-P name=value` per
field, names unchanged); a section is taken from it with `Section.of(cfg)`, so a trainer or a
book sees what it uses and nothing else. Sections declare no defaults: those live on
TrainConfig's fields, once (tests/test_config.py checks names and types agree). ReadOptions
(data.py) is the reading section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _section(cls, cfg):
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class FitOptions:
    """What the trainers read (training/): the optimisation, early stopping, the loss, how batches
    are drawn and how the CUDA step runs."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int
    loss: str
    batching: str
    select: str
    seed: int
    eval_batch_size: int
    compile: bool
    cuda_graph: bool

    @classmethod
    def of(cls, cfg) -> FitOptions:
        """The section of a TrainConfig (or of a FitOptions: itself)."""
        return cfg if isinstance(cfg, cls) else _section(cls, cfg)


@dataclass(frozen=True)
class BookOptions:
    """The long-short book every scored split is judged by (portfolio.py)."""

    quantiles: int
    hold_days: int  # the resolved holding period (hold, or the label horizon when hold=0)
    cost_bps: float
    topk: int  # the long-only TopkDropout book's names and daily replacements
    n_drop: int

    @classmethod
    def of(cls, cfg) -> BookOptions:
        """The book of a TrainConfig (hold 0: the label horizon)."""
        return cls(cfg.quantiles, cfg.holding_days(), cfg.cost_bps, cfg.topk, cfg.n_drop)

    def title(self) -> str:
        return f"top/bottom 1/{self.quantiles}, hold {self.hold_days} days, {self.cost_bps:g} bp"

    def daily(self, pred, close):
        """portfolio.daily_portfolio of these settings."""
        from stocklab import portfolio

        return portfolio.daily_portfolio(pred, close, self.quantiles, self.hold_days, self.cost_bps, self.topk,
                                         self.n_drop)  # fmt: skip
