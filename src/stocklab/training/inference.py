"""Scoring a model on a WindowSet: predictions, the objective's mean, the validation rank IC.

Everything here runs in float32 on every device: autocast is switched off around each scoring
pass (`full_precision`), also inside a caller's autocast region. The logged predictions, the
rank IC that picks the kept epoch (select=rank_ic) and the values the pruner sees are then the
same numbers `evaluate`, `predict` and serving compute; bf16 autocast belongs to the training
step alone (gradient.py), where its ~3 significant digits cost nothing but would tie many of a
day's forecasts if they were scored that way.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from stocklab.allocator import release_free_memory
from stocklab.config import EVAL_BATCH_SIZE
from stocklab.crosssection import rank_ic
from stocklab.losses import Loss, is_daily, objective
from stocklab.models.base import StockModel
from stocklab.windows import WindowSet

# CPU throughput is flat beyond ~1k windows per batch while activations grow with the batch
# (cnn_ta: ~110 KB per window), so evaluation batches are capped there; GPUs get the full size.
CPU_EVAL_BATCH = 2048

# CPU GEMM and convolution kernels compute a batch's last rows (beyond a multiple of their
# register block) with other instructions, so a window's output changed in its last bits with
# the batch it came in: served predictions differed from the training run's. Every scoring pass
# pads its batch to a multiple of SCORE_ROWS, which leaves each row's output independent of
# the others (all models, measured: tests/test_models.py).
SCORE_ROWS = 64


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A region where `device`'s autocast is off: scoring is float32 whoever called it."""
    return torch.autocast(device_type=device.type, enabled=False)


def eval_batches(ws: WindowSet, split: str, batch_size: int, whole_days: bool = False):
    """ws.batches for evaluation: unshuffled, `batch_size` on CUDA, at most CPU_EVAL_BATCH on
    CPU, where the pass's freed transient tensors are then handed back to the OS (allocator.py).
    `whole_days` (StockModel.whole_days): one batch per date, all of its windows."""
    cpu = ws.device.type == "cpu"
    if whole_days:
        for n, t in ws.index_batches(split, 1, daily=True):  # one date per batch
            yield ws.gather(n, t), ws.y[n, t], n, t
    else:
        yield from ws.batches(split, min(batch_size, CPU_EVAL_BATCH) if cpu else batch_size)
    if cpu:
        release_free_memory()


def eval_mode(model: nn.Module) -> None:
    model.eval()


def score(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) for scoring: (B, T, F) -> (B, ...), each window's output independent of which
    other windows share its batch."""
    n, pad = len(x), -len(x) % SCORE_ROWS
    if model.whole_days:  # x is one date's cross-section: padding would add tickers to it
        return model(x)
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])  # (B + pad, T, F), zero windows dropped below
    return model(x)[:n]


@torch.no_grad()
def predict(model: nn.Module, ws: WindowSet, split: str, batch_size: int = EVAL_BATCH_SIZE):
    """Predictions for every window of a split -> (pred, label, ticker_idx, day_idx) numpy arrays."""
    eval_mode(model)
    preds, ys, ns, ts = [], [], [], []
    with full_precision(ws.device):
        for x, y, n, t in eval_batches(ws, split, batch_size, model.whole_days):
            preds.append(score(model, x).float())
            ys.append(y)
            ns.append(n)
            ts.append(t)
    if not preds:
        empty = np.zeros(0)
        return empty, empty, empty.astype(int), empty.astype(int)
    return tuple(torch.cat(a).cpu().numpy() for a in (preds, ys, ns, ts))


def batch_loss(
    model: StockModel, ws: WindowSet, x, y, n, t, train: bool = False, outputs=None, loss: Loss | None = None
) -> torch.Tensor:
    """The model's training objective on one batch of targets y: `loss` (default: its output's
    own, losses.py) on `model.train_outputs(x)`, plus its `penalty()` (e.g. ridge) in training.
    `outputs` replaces `model.train_outputs` (a torch.compile'd one)."""
    out = (outputs or model.train_outputs)(x).float()  # (B,), (B, T) or (B, 3) by the output kind
    value = (loss or model.output.loss)(out, y, ws, n, t)
    penalty = model.penalty() if train else None
    return value if penalty is None else value + penalty


@torch.no_grad()
def mean_loss(
    model: StockModel, ws: WindowSet, split: str, batch_size: int = EVAL_BATCH_SIZE, loss: str = "mse"
) -> float:
    """The objective averaged over a split's windows with a target (the early-stopping
    criterion); a loss over dates is averaged over batches of whole dates."""
    eval_mode(model)
    fn, _ = objective(model.output, loss)
    size = min(batch_size, CPU_EVAL_BATCH) if ws.device.type == "cpu" or is_daily(loss) else batch_size
    daily = is_daily(loss) or model.whole_days
    size = 1 if model.whole_days else size  # a whole-day model: one date per batch
    batches = ws.index_batches(split, size, daily=daily, index=ws.loss_index)  # whole dates when daily
    total = torch.zeros((), device=ws.device)
    with full_precision(ws.device):
        for n, t in batches:
            total += batch_loss(model, ws, ws.gather(n, t), ws.target[n, t], n, t, loss=fn) * n.numel()
    if ws.device.type == "cpu":
        release_free_memory()
    return float(total) / max(int(ws.loss_index[split][0].numel()), 1)


@torch.no_grad()
def valid_rank_ic(model: StockModel, ws: WindowSet, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """The mean daily rank IC of the model's predictions on the validation split against the
    raw forward return, on the device (what select=rank_ic compares after every epoch)."""
    eval_mode(model)
    preds, ys, ts = [], [], []
    with full_precision(ws.device):
        for x, y, _, t in eval_batches(ws, "valid", batch_size, model.whole_days):
            preds.append(score(model, x).float())
            ys.append(y)
            ts.append(t)
    if not preds:
        return float("nan")
    return rank_ic(torch.cat(preds), torch.cat(ys), torch.cat(ts))
