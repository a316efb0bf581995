"""One trainer for every model: Adam on the model's output loss, early stopping, best state restored.

What is optimised and kept is configuration, never the model: `loss` (the output's own, or a
loss over each date's cross-section: losses.objective), `batching` (shuffled windows or whole
trading days) and `select` (the kept epoch by validation loss or by validation rank IC,
computed on the device once per epoch: crosssection.rank_ic). The target is WindowSet.target
(the `label` transform), never the raw return.

The loop is deliberately short (nanoGPT style). Batches are gathered from the resident panel
tensor (windows.WindowSet), so there is no DataLoader and no per-step host synchronisation:
the epoch loss is accumulated on the device and read once per epoch. What a batch's loss is
comes from the model's declared output (losses.py); the trainer never asks which model it is.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from stocklab.allocator import release_free_memory
from stocklab.config import DAILY_LOSSES, EVAL_BATCH_SIZE, StockLabError, TrainConfig
from stocklab.cpu_share import fair_threads
from stocklab.crosssection import rank_ic
from stocklab.losses import Loss, objective
from stocklab.models.base import StockModel
from stocklab.windows import WindowSet


class TrainingDiverged(StockLabError):
    """The loss became NaN or infinite (a user-facing error: usually the learning rate)."""


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


def set_seed(seed: int) -> None:
    """Seed every generator the pipeline touches (Python, NumPy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StockLabError("device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def configure_cpu_threads() -> None:
    """Intra-op threads: this job's fair share of the cores (cpu_share.py: the cores divided
    among the running stocklab jobs, or OMP_NUM_THREADS). Re-read before every epoch."""
    threads = fair_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _autocast(device: torch.device, cache_enabled: bool = True):
    # bf16 autocast on CUDA: same exponent range as fp32, so no loss scaler is needed
    # (a captured graph needs cache_enabled=False: cached casts would outlive the capture)
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=cache_enabled
    )


# CPU throughput is flat beyond ~1k windows per batch while activations grow with the batch
# (cnn_ta: ~110 KB per window), so evaluation batches are capped there; GPUs get the full size.
CPU_EVAL_BATCH = 2048


def eval_batches(ws: WindowSet, split: str, batch_size: int):
    """ws.batches for evaluation: unshuffled, `batch_size` on CUDA, at most CPU_EVAL_BATCH on
    CPU, where the pass's freed transient tensors are then handed back to the OS (allocator.py)."""
    cpu = ws.device.type == "cpu"
    yield from ws.batches(split, min(batch_size, CPU_EVAL_BATCH) if cpu else batch_size)
    if cpu:
        release_free_memory()


def eval_mode(model: nn.Module) -> None:
    model.eval()


# CPU GEMM and convolution kernels compute a batch's last rows (beyond a multiple of their
# register block) with other instructions, so a window's output changed in its last bits with
# the batch it came in: served predictions differed from the training run's. Every scoring pass
# pads its batch to a multiple of SCORE_ROWS, which leaves each row's output independent of
# the others (all models, measured: tests/test_models.py).
SCORE_ROWS = 64


def score(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) for scoring: (B, T, F) -> (B, ...), each window's output independent of which
    other windows share its batch."""
    n, pad = len(x), -len(x) % SCORE_ROWS
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])  # (B + pad, T, F), zero windows dropped below
    return model(x)[:n]


@torch.no_grad()
def predict(model: nn.Module, ws: WindowSet, split: str, batch_size: int = EVAL_BATCH_SIZE):
    """Predictions for every window of a split -> (pred, label, ticker_idx, day_idx) numpy arrays."""
    eval_mode(model)
    preds, ys, ns, ts = [], [], [], []
    for x, y, n, t in eval_batches(ws, split, batch_size):
        with _autocast(ws.device):
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
    daily = loss in DAILY_LOSSES
    total = torch.zeros((), device=ws.device)
    if daily:  # whole dates in order, one eval batch's worth at a time
        batches = ws.index_batches(split, min(batch_size, CPU_EVAL_BATCH), daily=True, index=ws.loss_index)
    else:
        batches = ws.index_batches(split, min(batch_size, CPU_EVAL_BATCH) if ws.device.type == "cpu" else batch_size,
                                   index=ws.loss_index)  # fmt: skip
    for n, t in batches:
        with _autocast(ws.device):
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
    for x, y, _, t in eval_batches(ws, "valid", batch_size):
        with _autocast(ws.device):
            preds.append(score(model, x).float())
        ys.append(y)
        ts.append(t)
    if not preds:
        return float("nan")
    return rank_ic(torch.cat(preds), torch.cat(ys), torch.cat(ts))


EpochCallback = Callable[[int, float, float, History], None]


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


def make_optimizer(params: list, cfg: TrainConfig, device: torch.device, graph: bool):
    """Adam; on CUDA the fused kernel, capturable (its step count on the device) for a graph."""
    if not params:
        return None  # a parameter-free baseline (naive zero forecast) is only evaluated
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, capturable=graph)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def record_epoch(hist: History, epoch: int, train_loss: float, valid_loss: float, score: float | None) -> bool:
    """Add an epoch to `hist`; True when it becomes the kept epoch: the lowest validation loss,
    or with select=rank_ic (`score` given) the best validation rank IC. Both trainers keep it
    (this one and boosting.py)."""
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
    return improved


def fit(model: nn.Module, ws: WindowSet, cfg: TrainConfig, on_epoch: EpochCallback | None = None) -> History:
    """Train `model` on ws's train split, early-stop on the validation loss (or rank IC:
    cfg.select), restore the kept epoch's weights.

    `on_epoch(epoch, train_loss, valid_loss, hist)` is called after every epoch, once `hist`
    knows whether it is the best so far (MLflow logging, Optuna `trial.report`); it may raise
    to stop training (e.g. optuna.TrialPruned).
    """
    if model.trained_by == "boosting":  # trees: boosting.py keeps this function's contract
        from stocklab.boosting import fit_booster  # it imports this module: imported on use

        return fit_booster(model, ws, cfg, on_epoch)
    model.to(ws.device)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn, _ = objective(model.output, cfg.loss)
    daily = cfg.batching == "daily"
    # a graph replays one batch size; daily batches vary in size, so they run eagerly
    graph = ws.device.type == "cuda" and cfg.cuda_graph and bool(params) and not cfg.compile and not daily
    opt = make_optimizer(params, cfg, ws.device, graph)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling order, independent of model init
    n_train = ws.size("train")
    hist, best_state = History(), copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {type(model).__name__}", unit="epoch")
    outputs = torch.compile(model.train_outputs) if cfg.compile else None  # shares the parameters
    step = GraphStep(model, ws, opt, cfg.batch_size) if graph else None
    for epoch in bar:
        configure_cpu_threads()  # other jobs may have started or ended since the last epoch
        model.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=ws.device)
        for n, t in ws.index_batches("train", cfg.batch_size, gen, daily=daily):  # (B,) ticker, end-day indices
            if step is not None:
                loss = step(n, t)
            else:
                loss = train_step(model, ws, opt, n, t, outputs=outputs, loss_fn=loss_fn)
            total += loss * n.numel()  # stays on the device: no sync per step
        train_loss = float(total) / n_train  # the epoch's one host sync
        hist.train_only_s += time.perf_counter() - t0
        valid_loss = mean_loss(model, ws, "valid", cfg.eval_batch_size, cfg.loss)
        if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
            raise TrainingDiverged(
                f"lr: training diverged at epoch {epoch} with lr={cfg.lr:g} (train loss {train_loss}, "
                f"valid loss {valid_loss}); lower lr or scale the inputs"
            )
        score = valid_rank_ic(model, ws, cfg.eval_batch_size) if cfg.select == "rank_ic" else None
        improved = record_epoch(hist, epoch, train_loss, valid_loss, score)
        bar.set_postfix(train=f"{train_loss:.4g}", valid=f"{valid_loss:.4g}",
                        **({} if score is None else {"rank_ic": f"{score:.4f}"}))  # fmt: skip
        if improved:
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:  # after the update: the hook sees this epoch's best-so-far
            on_epoch(epoch, train_loss, valid_loss, hist)
        if opt is None:  # nothing to fit (a factor, the zero forecast): one scoring pass is all
            break
        if not improved and epoch - hist.best_epoch >= cfg.patience:
            break
    if step is not None:
        hist.graph_replays, hist.graph_fallback = step.replays, step.fallback
    hist.train_time_s = time.perf_counter() - start
    hist.samples_per_s = n_train * len(hist.train_loss) / max(hist.train_time_s, 1e-9)
    hist.samples_per_s_train = n_train * len(hist.train_loss) / max(hist.train_only_s, 1e-9)
    model.load_state_dict(best_state)
    model.eval()
    return hist
