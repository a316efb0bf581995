"""What the trainer optimises, one entry per kind of model output.

A model declares its `output` (models/base.py); the trainer takes that output's loss and never
looks at which model it trains. Each loss reads the model's `train_outputs(x)` and the batch's
window indices, so per-step or per-class targets are built here, from the WindowSet, not in the
models:

    RETURN   forward(x) (B,) vs the forward return: mean squared error
    STEPS    per-step forecasts (B, T) vs every day's label in the window: masked MSE (with
             relative features, the last day's only: the others are partly seen)
    CLASSES  sell/hold/buy logits (B, 3) vs the label's tercile among the training labels:
             cross-entropy

Every loss reads the batch's *training target* (`WindowSet.target`: the label transformed
by `label`, crosssection.py), never the raw return the factor metrics judge.

`loss=ic` and `loss=rank` replace the output's own loss by one over each date's cross-section
of the model's score (RETURN: forward(x); STEPS: the last step's forecast, which is what
forward(x) returns); CLASSES has no score to rank, so they are an error for it:

    ic    minus the mean over the batch's dates of the Pearson correlation between score and
          target within the date
    rank  ListNet (Cao et al. 2007, top-one probabilities): the cross-entropy between the
          softmax of each date's targets and the softmax of its scores, averaged over dates

Both need whole dates in a batch (batching=daily); `objective(output, loss)` picks the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from stocklab.crosssection import date_groups, group_corr
from stocklab.errors import StockLabError

if TYPE_CHECKING:  # windows.py imports config, which lists this module's losses
    from stocklab.windows import WindowSet

# (train outputs, labels (B,), windows, ticker idx (B,), end-day idx (B,)) -> scalar loss
Loss = Callable[[torch.Tensor, torch.Tensor, "WindowSet", torch.Tensor, torch.Tensor], torch.Tensor]


def mse(out: torch.Tensor, y: torch.Tensor, ws: WindowSet, n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.mean((out - y) ** 2)  # out, y: (B,)


def step_mse(out: torch.Tensor, y: torch.Tensor, ws: WindowSet, n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ys, ok = ws.label_steps(n, t)  # (B, T) labels of every day in the window and their availability
    if len(ws.rel_cols):
        # relative features are log(x / x on the window's *last* day): step s sees the return from
        # s to the window's end, most of its own label's forward return; only the last step's
        # target is unseen, so only it is trained
        ok = ok * (torch.arange(ok.shape[1], device=ok.device) == ok.shape[1] - 1)
    return (((out - ys) ** 2) * ok).sum() / ok.sum().clamp(min=1)  # out: (B, T)


def tercile_cross_entropy(
    out: torch.Tensor, y: torch.Tensor, ws: WindowSet, n: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    # out: (B, 3) logits; the cut points are terciles of the training labels (WindowSet.class_cuts)
    return F.cross_entropy(out, torch.bucketize(y, ws.class_cuts))


def daily_ic(score: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    groups, n = date_groups(t)
    corr, defined = group_corr(score, y, groups, n, eps=1e-12)
    return -(corr * defined).sum() / defined.sum().clamp(min=1)


def listnet(score: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    groups, n = date_groups(t)

    def log_softmax(v: torch.Tensor) -> torch.Tensor:  # within each date
        top = torch.full((n,), -torch.inf, device=v.device, dtype=v.dtype)
        top = top.scatter_reduce(0, groups, v.detach(), "amax")
        e = torch.exp(v - top[groups])
        total = torch.zeros(n, device=v.device, dtype=v.dtype).index_add_(0, groups, e)
        return v - top[groups] - torch.log(total)[groups]

    p_true = torch.exp(log_softmax(y))  # (B,) each date's target distribution
    per_date = torch.zeros(n, device=score.device, dtype=score.dtype)
    return per_date.index_add_(0, groups, -p_true * log_softmax(score)).mean()


# the `loss` parameter's values: "mse" trains the output's own loss (an MSE for a return or
# per-step forecast, cross-entropy for classes); the others are losses over each date's
# cross-section of the model's score (they need batching=daily)
DAILY = {"ic": (daily_ic, "-IC"), "rank": (listnet, "ListNet cross-entropy")}
LOSSES = ("mse", *DAILY)
DAILY_LOSSES = tuple(DAILY)


def is_daily(loss: str) -> bool:
    """True for a loss over each date's cross-section (it needs whole dates in a batch)."""
    return loss in DAILY


@dataclass(frozen=True)
class Output:
    """A kind of model output and how it is trained."""

    name: str
    loss: Loss
    loss_name: str  # what the loss curves' y axis shows
    forecasts_label: bool  # forward(x) forecasts the label itself, so its MSE vs the label means something
    score: Callable[[torch.Tensor], torch.Tensor] | None = None  # train outputs -> (B,) score; None: unrankable


def objective(output: Output, loss: str) -> tuple[Loss, str]:
    """(the training loss of a model with this output under `loss`, its name for the plots); a
    name that is not in LOSSES is an error, never a silent fallback to the output's own loss."""
    if loss not in LOSSES:
        raise StockLabError(f"loss: unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    if not is_daily(loss):
        return output.loss, output.loss_name
    if output.score is None:
        raise StockLabError(
            f"loss: '{loss}' ranks a return forecast within each date; a model whose output is {output.name} "
            "has none (use loss=mse)"
        )
    daily, name = DAILY[loss]

    def on_dates(out, y, ws, n, t):
        return daily(output.score(out), y, t)

    return on_dates, name


RETURN = Output("return", mse, "MSE", forecasts_label=True, score=lambda out: out)
# seq2seq: the prediction is the last step's forecast, so its error vs the label is still reported
STEPS = Output("steps", step_mse, "MSE", forecasts_label=True, score=lambda out: out[:, -1])
CLASSES = Output("classes", tercile_cross_entropy, "cross-entropy", forecasts_label=False)
