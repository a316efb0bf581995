"""The gradient trainer: Adam on the model's output loss, early stopping, the kept epoch restored.

What is optimised and kept is configuration, never the model: `loss` (the output's own, or a
loss over each date's cross-section: losses.objective), `batching` (shuffled windows or whole
trading days) and `select` (the kept epoch by validation loss or by validation rank IC,
computed on the device once per epoch: crosssection.rank_ic). The target is WindowSet.target
(the `label` transform), never the raw return.

The loop is deliberately short (nanoGPT style). Batches are gathered from the resident panel
tensor (windows.WindowSet), so there is no DataLoader and no per-step host synchronisation:
the epoch loss is accumulated on the device and read once per epoch. What a batch's loss is
comes from the model's declared output (losses.py); the trainer never asks which model it is.
bf16 autocast (CUDA) wraps the training step only; every scoring pass is float32 (inference.py).
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from stocklab.config import FitOptions, StockLabError
from stocklab.losses import Loss, objective
from stocklab.models.base import StockModel
from stocklab.training.device import configure_cpu_threads
from stocklab.training.history import EpochCallback, History, finish, improved, record_epoch
from stocklab.training.inference import batch_loss, mean_loss, valid_rank_ic
from stocklab.windows import WindowSet


class TrainingDiverged(StockLabError):
    """The loss became NaN or infinite (a user-facing error: usually the learning rate)."""


def _autocast(device: torch.device, cache_enabled: bool = True):
    # bf16 autocast on CUDA: same exponent range as fp32, so no loss scaler is needed
    # (a captured graph needs cache_enabled=False: cached casts would outlive the capture)
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=cache_enabled
    )


def train_step(
    model: StockModel,
    ws: WindowSet,
    opt,
    n: torch.Tensor,
    t: torch.Tensor,
    cache: bool = True,
    outputs=None,
    loss_fn: Loss | None = None,
):
    """One optimisation step on the windows (n, t): gather -> forward -> loss -> backward -> Adam.
    Returns the batch's loss (a device tensor: no host sync)."""
    x, y = ws.gather(n, t), ws.target[n, t]  # (B, T, F), (B,) training targets
    with _autocast(ws.device, cache):
        loss = batch_loss(model, ws, x, y, n, t, train=True, outputs=outputs, loss=loss_fn)
    if opt is not None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.detach()


class GraphStep:
    """`train_step` for full batches replayed from a CUDA graph: ~0.2 ms a step instead of ~3 ms
    of Python and kernel launches (GPU issue's micro-benchmark: cnn2d deep, batch 64, H100).

    The batch's window indices are copied into static index buffers, so the gather, forward,
    loss, backward and the fused, capturable Adam update all read fixed addresses. The first
    `warmup` full batches run eagerly on a side stream (real training steps: cuBLAS/cuDNN set
    themselves up before capture), the next one is captured then replayed, and every later full
    batch is a replay. A batch of another size (the epoch's remainder) runs eagerly with the same
    optimiser, so no window is dropped. `capture=False` keeps the buffers and the schedule but
    runs every step eagerly: the CPU tests check the buffer logic that way. If capture fails
    (a model with a host sync), the step falls back to eager and `fallback` says why.
    """

    def __init__(self, model, ws: WindowSet, opt, batch_size: int, capture: bool = True, warmup: int = 3):
        self.model, self.ws, self.opt, self.capture, self.warmup = model, ws, opt, capture, warmup
        self.n = torch.zeros(batch_size, dtype=torch.long, device=ws.device)  # static inputs
        self.t = torch.zeros(batch_size, dtype=torch.long, device=ws.device)
        self.graph = None
        self.loss: torch.Tensor | None = None  # static output of the captured step
        self.steps = self.replays = self.eager_steps = 0
        self.fallback: str | None = None

    def __call__(self, n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        if n.numel() != self.n.numel() or self.fallback is not None:
            self.eager_steps += 1
            return train_step(self.model, self.ws, self.opt, n, t)
        self.n.copy_(n)
        self.t.copy_(t)
        if not self.capture or self.steps <= self.warmup:
            self.eager_steps += 1
            return self._warm_step() if self.capture else train_step(self.model, self.ws, self.opt, self.n, self.t)
        if self.graph is None:
            try:
                self._capture()
            except Exception as e:  # noqa: BLE001 - e.g. a model that syncs with the host
                self.fallback = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                self.graph = None
                self.eager_steps += 1
                return train_step(self.model, self.ws, self.opt, n, t)
        self.graph.replay()
        self.replays += 1
        return self.loss.clone()  # the next replay overwrites the static output

    def _warm_step(self) -> torch.Tensor:
        side = torch.cuda.Stream(device=self.ws.device)
        side.wait_stream(torch.cuda.current_stream(self.ws.device))
        with torch.cuda.stream(side):
            loss = train_step(self.model, self.ws, self.opt, self.n, self.t, cache=False)
        torch.cuda.current_stream(self.ws.device).wait_stream(side)
        return loss

    def _capture(self) -> None:
        # the documented whole-step pattern: grads set to None before capture are allocated from
        # the graph's private pool, and every replay rewrites them (no zero_grad inside)
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            x, y = self.ws.gather(self.n, self.t), self.ws.target[self.n, self.t]
            with _autocast(self.ws.device, cache_enabled=False):
                loss = batch_loss(self.model, self.ws, x, y, self.n, self.t, train=True)
            loss.backward()
            self.opt.step()
            self.loss = loss.detach()
        self.graph = graph


def make_optimizer(params: list, cfg: FitOptions, device: torch.device, graph: bool):
    """Adam; on CUDA the fused kernel, capturable (its step count on the device) for a graph."""
    if not params:
        return None  # a parameter-free baseline (naive zero forecast) is only evaluated
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, capturable=graph)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit_gradient(model: nn.Module, ws: WindowSet, cfg: FitOptions, on_epoch: EpochCallback | None = None) -> History:
    """Train `model` on ws's train split, early-stop on the validation loss (or rank IC:
    cfg.select), restore the kept epoch's weights. `on_epoch(Epoch)` runs after every epoch and
    may raise to stop training (optuna.TrialPruned)."""
    model.to(ws.device)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn, _ = objective(model.output, cfg.loss)
    daily = cfg.batching == "daily"
    # a graph replays one batch size; daily batches vary in size, so they run eagerly
    graph = ws.device.type == "cuda" and cfg.cuda_graph and bool(params) and not cfg.compile and not daily
    opt = make_optimizer(params, cfg, ws.device, graph)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling order, independent of model init
    hist, best_state = History(), copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    outputs = torch.compile(model.train_outputs) if cfg.compile else None  # shares the parameters
    step = GraphStep(model, ws, opt, cfg.batch_size) if graph else None
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {type(model).__name__}", unit="epoch")
    for epoch in bar:
        configure_cpu_threads()  # other jobs may have started or ended since the last epoch
        model.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=ws.device)
        # (B,) ticker, end-day indices; a whole-day model steps on one date at a time
        steps = ws.index_batches("train", 1 if model.whole_days else cfg.batch_size, gen, daily=daily)
        for n, t in steps:
            loss = (
                step(n, t) if step is not None else train_step(model, ws, opt, n, t, outputs=outputs, loss_fn=loss_fn)
            )
            total += loss * n.numel()  # stays on the device: no sync per step
        train_loss = float(total) / ws.size("train")  # the epoch's one host sync
        hist.train_only_s += time.perf_counter() - t0
        valid_loss = mean_loss(model, ws, "valid", cfg.eval_batch_size, cfg.loss)
        check_finite(epoch, train_loss, valid_loss, cfg.lr)
        score = valid_rank_ic(model, ws, cfg.eval_batch_size) if cfg.select == "rank_ic" else None
        done = record_epoch(hist, epoch, train_loss, valid_loss, score)
        bar.set_postfix(train=f"{train_loss:.4g}", valid=f"{valid_loss:.4g}",
                        **({} if score is None else {"rank_ic": f"{score:.4f}"}))  # fmt: skip
        if improved(hist, done):
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:  # after the update: the hook sees this epoch's best-so-far
            on_epoch(done)
        if opt is None or epoch - hist.best_epoch >= cfg.patience:  # opt None: nothing to fit (a factor)
            break
    if step is not None:
        hist.graph_replays, hist.graph_fallback = step.replays, step.fallback
    model.load_state_dict(best_state)
    model.eval()
    return finish(hist, ws.size("train"), start, time.perf_counter())


def check_finite(epoch: int, train_loss: float, valid_loss: float, lr: float) -> None:
    if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
        raise TrainingDiverged(
            f"lr: training diverged at epoch {epoch} with lr={lr:g} (train loss {train_loss}, "
            f"valid loss {valid_loss}); lower lr or scale the inputs"
        )
