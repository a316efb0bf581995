"""Training: one `fit` for every model, which picks the trainer from the model's declared kind.

    history.py    what both trainers keep: History, the kept-epoch rule, the Epoch the hook sees
    inference.py  scoring in float32: predict, score, the objective's mean, the validation rank IC
    gradient.py   the gradient trainer (Adam, the CUDA-graph step, early stopping)
    boosting.py   the tree trainer (LightGBM on the flattened windows)
    device.py     seeds, the device, the CPU threads

A model family says which trainer fits it with `trained_by` (models/base.py); TRAINERS maps
that name to the trainer. Both keep one contract: fit(model, ws, FitOptions, on_epoch) -> History,
the kept epoch restored.
"""

from __future__ import annotations

from torch import nn

from stocklab.config import FitOptions, StockLabError, TrainConfig
from stocklab.training.boosting import fit_booster
from stocklab.training.device import configure_cpu_threads, resolve_device, set_seed
from stocklab.training.gradient import fit_gradient
from stocklab.training.history import Epoch, EpochCallback, History
from stocklab.training.inference import mean_loss, predict, score, valid_rank_ic
from stocklab.windows import WindowSet

TRAINERS = {"gradient": fit_gradient, "boosting": fit_booster}

__all__ = [
    "TRAINERS", "Epoch", "EpochCallback", "History", "configure_cpu_threads", "fit", "mean_loss", "predict",
    "resolve_device", "score", "set_seed", "valid_rank_ic",
]  # fmt: skip


def fit(
    model: nn.Module, ws: WindowSet, cfg: TrainConfig | FitOptions, on_epoch: EpochCallback | None = None
) -> History:
    """Train `model` on ws's train split with its trainer, early-stop on the validation split
    (its loss, or its rank IC: cfg.select) and keep the best epoch. The trainers see the
    FitOptions section of `cfg` only. `on_epoch(Epoch)` runs after every epoch; it may raise to
    stop training (e.g. optuna.TrialPruned)."""
    trainer = TRAINERS.get(model.trained_by)
    if trainer is None:
        raise StockLabError(
            f"model: {type(model).__name__} is trained_by {model.trained_by!r}, not one of {', '.join(TRAINERS)}"
        )
    return trainer(model, ws, FitOptions.of(cfg), on_epoch)
