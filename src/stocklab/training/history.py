"""What both trainers keep: the History of a fit and the kept-epoch rule, and the value the
epoch hook receives once per epoch (MLflow's loss curves, Optuna's report and pruning)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_rank_ic: list[float] = field(default_factory=list)  # per epoch, with select=rank_ic
    best_epoch: int = 0
    best_valid: float = math.inf  # the validation loss of the kept epoch
    best_rank_ic: float = -math.inf  # the validation rank IC of the kept epoch (select=rank_ic)
    train_time_s: float = 0.0  # whole fit, validation included
    samples_per_s: float = 0.0  # training windows per second of train_time_s
    train_only_s: float = 0.0  # the optimisation steps alone
    samples_per_s_train: float = 0.0  # training windows per second of train_only_s
    graph_replays: int = 0  # training steps replayed from a CUDA graph
    graph_fallback: str | None = None  # why the CUDA graph was not used, if it failed


@dataclass(frozen=True)
class Epoch:
    """One finished epoch as the hook sees it, after the kept-epoch rule ran."""

    epoch: int
    train_loss: float
    valid_loss: float
    rank_ic: float | None  # the validation rank IC (select=rank_ic computed it), else None
    best_epoch: int  # the kept epoch so far (its weights are restored at the end)
    best_valid: float  # the kept epoch's validation loss


EpochCallback = Callable[[Epoch], None]


def record_epoch(hist: History, epoch: int, train_loss: float, valid_loss: float, score: float | None) -> Epoch:
    """Add an epoch to `hist` and return it; it becomes the kept epoch (`hist.best_epoch`) on
    the lowest validation loss, or with select=rank_ic (`score` given) the best validation rank
    IC. Both trainers keep it (gradient.py, boosting.py)."""
    hist.train_loss.append(train_loss)
    hist.valid_loss.append(valid_loss)
    if score is None:
        improved = valid_loss < hist.best_valid
    else:
        hist.valid_rank_ic.append(score)
        # a NaN rank IC (a constant forecast) is never an improvement but the first epoch
        improved = score > hist.best_rank_ic or (hist.best_epoch == 0 and not math.isfinite(score))
    if improved:
        hist.best_valid, hist.best_epoch = valid_loss, epoch
        if score is not None:  # a NaN first epoch leaves the bar at -inf for the next
            hist.best_rank_ic = score if math.isfinite(score) else -math.inf
    return Epoch(epoch, train_loss, valid_loss, score, hist.best_epoch, hist.best_valid)


def improved(hist: History, epoch: Epoch) -> bool:
    """True when `epoch` is the kept one."""
    return hist.best_epoch == epoch.epoch


def finish(hist: History, windows: int, start: float, now: float) -> History:
    """The fit's timings and throughputs from its epochs (`windows` trained per epoch)."""
    hist.train_time_s = now - start
    epochs = len(hist.train_loss)
    hist.samples_per_s = windows * epochs / max(hist.train_time_s, 1e-9)
    hist.samples_per_s_train = windows * epochs / max(hist.train_only_s, 1e-9)
    return hist
