"""Sections: the frozen part of a job's config that one layer reads.

The flat job configs (config.py) are the CLI and MLflow-params surface (one `-P name=value` per
field, names unchanged); a section is taken from one with `Section.of(cfg)`, so a trainer, a
book or a benchmark suite sees what it uses and nothing else. Sections declare no defaults:
those live on the job configs' fields, once (tests/test_config.py checks names and types
agree). ReadOptions (data.py) is the reading section of a TrainConfig; FitOptions and
BookOptions below are its training and book sections; SpeedSuite, ModelsSuite and
RecoverySuite are the three suites' sections of a BenchmarkConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from stocklab.errors import StockLabError


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


# --- the benchmark suites: one config each, taken from the job's flat BenchmarkConfig ---------
# `benchmark` keeps one `-P` surface (config.BenchmarkConfig); each suite reads only its own
# section, whose epochs/seeds/report carry the suite's default where the job left them 0 / ''.


@dataclass(frozen=True)
class SpeedSuite:
    """suite=speed (benchmarks/speed.py): (a) windows, (b) training step, (c) the 2D-CNN study's
    workload, (d) a short study with one and several workers."""

    data: str
    n_tickers: int
    seq_len: int
    batch_size: int
    train_steps: int
    seed000_steps: int
    seed000_tickers: int
    seed000_days: int
    study_trials: int
    study_tickers: int
    study_jobs: int
    output: str
    device: str
    experiment: str
    suite: str = "speed"

    @classmethod
    def of(cls, cfg) -> SpeedSuite:
        return _section(cls, cfg)


@dataclass(frozen=True)
class ModelsSuite:
    """suite=models (benchmarks/models.py): every entry on walk-forward folds, the model report."""

    data: str
    models: str
    model_tickers: int
    epochs: int
    seeds: int
    folds: int
    walk: str
    split: str
    horizons: str
    recipes: str
    train_every: int
    patience: int
    tear_sheet: bool
    resume: bool
    report: str
    device: str
    experiment: str
    suite: str = "models"

    @classmethod
    def of(cls, cfg) -> ModelsSuite:
        return _section(cls, cfg.resolved())

    def recipe_names(self) -> list[str]:
        return [r.strip() for r in self.recipes.split(",") if r.strip()]

    def horizon_list(self) -> list[int]:
        return parse_horizons(self.horizons)

    def report_for(self, horizon: int) -> str:
        """The first horizon's report is `report`; another's is <report>_h<horizon>.md."""
        if horizon == self.horizon_list()[0]:
            return self.report
        path = Path(self.report)
        return str(path.with_name(f"{path.stem}_h{horizon}{path.suffix}"))


def parse_horizons(text: str) -> list[int]:
    """'20,5' -> [20, 5]: label horizons in trading days, each once."""
    try:
        values = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise StockLabError(f"horizons: {text!r} must be label horizons in days, each once (e.g. 20,5)")
    return values


@dataclass(frozen=True)
class RecoverySuite:
    """suite=recovery (benchmarks/recovery.py): a planted market, every family's recovery of it."""

    market: str
    tickers: int
    days: int
    models: str
    epochs: int
    seeds: int
    patience: int
    report: str
    device: str
    experiment: str
    suite: str = "recovery"

    @classmethod
    def of(cls, cfg) -> RecoverySuite:
        return _section(cls, cfg.resolved())


SUITES = {"speed": SpeedSuite, "models": ModelsSuite, "recovery": RecoverySuite}
