"""What the trainer optimises, one entry per kind of model output.

A model declares its `output` (models/base.py); the trainer takes that output's loss and never
looks at which model it trains. Each loss reads the model's `train_outputs(x)` and the batch's
window indices, so per-step or per-class targets are built here, from the WindowSet, not in the
models:

    RETURN   forward(x) (B,) vs the forward return: mean squared error
    STEPS    per-step forecasts (B, T) vs every day's label in the window: masked MSE
    CLASSES  sell/hold/buy logits (B, 3) vs the label's tercile among the training labels:
             cross-entropy

A new training objective for models of one output kind (e.g. a loss over whole days) is a new
function here and a choice in the trainer, not a change to any model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stocklab.windows import WindowSet

# (train outputs, labels (B,), windows, ticker idx (B,), end-day idx (B,)) -> scalar loss
Loss = Callable[[torch.Tensor, torch.Tensor, WindowSet, torch.Tensor, torch.Tensor], torch.Tensor]


def mse(out: torch.Tensor, y: torch.Tensor, ws: WindowSet, n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.mean((out - y) ** 2)  # out, y: (B,)


def step_mse(out: torch.Tensor, y: torch.Tensor, ws: WindowSet, n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    ys, ok = ws.label_steps(n, t)  # (B, T) labels of every day in the window and their availability
    return (((out - ys) ** 2) * ok).sum() / ok.sum().clamp(min=1)  # out: (B, T)


def tercile_cross_entropy(
    out: torch.Tensor, y: torch.Tensor, ws: WindowSet, n: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    # out: (B, 3) logits; the cut points are terciles of the training labels (WindowSet.class_cuts)
    return F.cross_entropy(out, torch.bucketize(y, ws.class_cuts))


@dataclass(frozen=True)
class Output:
    """A kind of model output and how it is trained."""

    name: str
    loss: Loss
    loss_name: str  # what the loss curves' y axis shows
    forecasts_label: bool  # forward(x) forecasts the label itself, so its MSE vs the label means something


RETURN = Output("return", mse, "MSE", forecasts_label=True)
# seq2seq: the prediction is the last step's forecast, so its error vs the label is still reported
STEPS = Output("steps", step_mse, "MSE", forecasts_label=True)
CLASSES = Output("classes", tercile_cross_entropy, "cross-entropy", forecasts_label=False)
