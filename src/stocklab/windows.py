"""Chronological splits with an embargo, train-only scaling, and lazily indexed windows.

No window is ever materialised in advance: the panel stays one (tickers, days, features) tensor
(on the GPU when training there) and a batch is a single advanced-indexing gather
``X[n[:, None], t[:, None] + offsets]`` -> (B, seq_len, F).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch

from stocklab.config import WALKS, StockLabError
from stocklab.crosssection import label_target
from stocklab.features import Panel
from stocklab.scalers import ROBUST_CLIP, Scaler  # noqa: F401 - re-exported: where windows are scaled

SPLITS = ("train", "valid", "test")


def split_bounds(n_days: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Day indices where valid and test begin (chronological, by calendar date)."""
    b1 = int(round(n_days * fractions[0]))
    b2 = int(round(n_days * (fractions[0] + fractions[1])))
    return b1, b2


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold, as day indices: training span [train_start, valid_start),
    validation [valid_start, test_start), out-of-sample test [test_start, test_end)."""

    index: int
    train_start: int
    valid_start: int
    test_start: int
    test_end: int
    n_days: int

    def end_day_ranges(self, horizon: int) -> dict[str, tuple[int, int]]:
        """Half-open ranges of window *end* days per split.

        A sample ending on day t has its label on day t + horizon, so train ends `horizon` days
        before the valid boundary and valid ends `horizon` days before the test boundary: this
        embargo keeps every label of a fitting window before the test period. Test windows end
        inside their own period (their labels may reach into the next one: that is the outcome
        being forecast, and no model trained before it has seen it).
        """
        return {
            "train": (self.train_start, self.valid_start - horizon),
            "valid": (self.valid_start, self.test_start - horizon),
            "test": (self.test_start, min(self.test_end, self.n_days - horizon)),
        }


def walk_forward_folds(n_days: int, fractions, horizon: int, folds: int = 1, walk: str = "expanding") -> list[Fold]:
    """The calendar cut into `folds` consecutive out-of-sample periods after an initial span.

    The split's train and valid fractions give the first fold's training and validation spans;
    the test fraction is cut into `folds` equal periods. Each later fold moves its validation
    span (same length) to just before its test period; its training span is everything before
    that (`expanding`) or the initial training length (`sliding`). `folds=1` is the plain
    chronological split.
    """
    if folds < 1:
        raise StockLabError(f"folds: {folds} must be >= 1")
    if walk not in WALKS:
        raise StockLabError(f"walk: {walk!r} must be one of {', '.join(WALKS)}")
    b1, b2 = split_bounds(n_days, fractions)
    train_len, valid_len = b1, b2 - b1
    starts = [b2 + int(round(k * (n_days - b2) / folds)) for k in range(folds + 1)]
    out = []
    for k in range(folds):
        test_start, test_end = starts[k], starts[k + 1]
        valid_start = test_start - valid_len
        train_start = 0 if walk == "expanding" else max(0, valid_start - train_len)
        out.append(Fold(k, train_start, valid_start, test_start, test_end, n_days))
    short = [f.index + 1 for f in out if f.end_day_ranges(horizon)["test"][1] <= f.test_start]
    if short:
        days = n_days - b2
        raise StockLabError(
            f"folds: {folds} folds leave fold {short[0]} without test days ({days} out-of-sample days, "
            f"horizon={horizon}); use fewer folds or a larger test fraction in split"
        )
    return out


def end_day_ranges(n_days: int, fractions, horizon: int) -> dict[str, tuple[int, int]]:
    """Half-open ranges of window end days of the plain chronological split (one fold)."""
    return walk_forward_folds(n_days, fractions, horizon)[0].end_day_ranges(horizon)


def window_offsets(seq_len: int, stride: int = 1) -> np.ndarray:
    """Day offsets of a window ending on day 0: seq_len steps, `stride` days apart."""
    return np.arange(-(seq_len - 1) * stride, 1, stride)


def window_span(seq_len: int, stride: int = 1) -> int:
    """Calendar days covered by a window (every one of them must be known)."""
    return (seq_len - 1) * stride + 1


def known_days(X: np.ndarray, optional_cols=()) -> np.ndarray:
    """(N, D) bool: every feature known on the day, the optional ones (Panel.optional_cols) aside."""
    if len(optional_cols):
        required = np.setdiff1d(np.arange(X.shape[-1]), optional_cols)
        return np.isfinite(X[..., required]).all(axis=-1) if len(required) else np.ones(X.shape[:2], bool)
    return np.isfinite(X).all(axis=-1)


def valid_window_mask(X: np.ndarray, seq_len: int, optional_cols=()) -> np.ndarray:
    """(N, D) bool: True where the `seq_len` days ending on day t are all fully known."""
    finite = known_days(X, optional_cols)  # (N, D)
    c = np.concatenate([np.zeros((X.shape[0], 1), np.int64), np.cumsum(finite, axis=1)], axis=1)
    ok = np.zeros_like(finite)
    ok[:, seq_len - 1 :] = (c[:, seq_len:] - c[:, :-seq_len]) == seq_len
    return ok


def gather_windows(X, n, t, offsets, rel_cols, rel_ref) -> torch.Tensor:
    """Windows ending on days `t` of tickers `n` from a (N, D, F) panel -> (B, T, F)."""
    x = X[n[:, None], t[:, None] + offsets[None, :]]  # (B, T, F)
    if len(rel_cols):
        # log(x / x_ref on the window's last day): subtract the last day's log reference
        x = x.clone()
        x[..., rel_cols] = x[..., rel_cols] - x[:, -1:, rel_ref]
    return x


def _split_days(fractions, scaler, n_days: int, span: int, horizon: int) -> tuple[Fold | None, dict]:
    """(the fold, each split's end-day range) of a WindowSet; none for a prediction-only set."""
    if fractions is None:
        if scaler is None:
            raise ValueError("a prediction-only WindowSet needs the model's fitted scaler")
        return None, {}
    if n_days < span + 3 * horizon:
        raise StockLabError(
            f"data: only {n_days} trading days; a window of {span} days and horizon={horizon} need "
            f"at least {span + 3 * horizon} for a train/valid/test split with embargo"
        )
    fold = fractions if isinstance(fractions, Fold) else walk_forward_folds(n_days, fractions, horizon)[0]
    return fold, fold.end_day_ranges(horizon)


class WindowSet:
    """The scaled panel as one tensor plus (ticker, end-day) indices per split."""

    def __init__(
        self,
        panel: Panel,
        seq_len: int,
        horizon: int,
        fractions,
        scaler_kind: str,
        device: str | torch.device = "cpu",
        scaler: Scaler | None = None,
        stride: int = 1,
        scale_in_place: bool = False,
        label: str = "raw",
        train_every: int = 1,
    ):
        """`label`: the training target (crosssection.label_target); `y` stays the raw forward
        return that predictions are judged against, `target` is what the losses read.
        `train_every`: only every k-th end day of the training span (counted from its first
        day) has training windows, which thins the heavily overlapping training windows in
        time; validation and test keep every day.

        `scale_in_place`: the caller hands over panel.X, which is scaled in place (NaN -> 0) and
        shared with the tensor instead of copied: one panel in memory instead of two.

        `fractions`: (train, valid, test) calendar fractions, or one walk-forward `Fold`; the
        scaler is fit on that fold's training span only.
        `fractions=None` builds a prediction-only set (no splits, no labels needed): `scaler`
        must then be the model's fitted one, and `window_ok` says which windows are complete."""
        self.panel, self.seq_len, self.horizon, self.stride = panel, seq_len, horizon, stride
        D, span = panel.X.shape[1], window_span(seq_len, stride)
        self.fold, self.ranges = _split_days(fractions, scaler, D, span, horizon)
        # relative columns: not shifted (the window's difference removes any shift), but divided by
        # their reference's daily-change std (relative_scales), so they reach the models at unit scale
        self.scaler = scaler or Scaler.fit(panel.X, self.fold.valid_start, scaler_kind, panel.relative_cols,
                                           train_start=self.fold.train_start, skip_ref=panel.relative_ref)  # fmt: skip
        ok = valid_window_mask(panel.X, span, panel.optional_cols)  # before scaling: NaN marks the unknown days
        self.window_ok = ok  # (N, D): the window ending on day t is complete
        labelled = ok & np.isfinite(panel.y)
        Xs = self.scaler.transform(panel.X, inplace=scale_in_place)
        self.device = torch.device(device)
        for j in range(0, Xs.shape[-1], 16):  # NaN -> 0 in place, a few columns at a time: nan_to_num's
            np.nan_to_num(Xs[..., j : j + 16], nan=0.0, copy=False)  # masks of a whole panel cost 3 bools a cell
        self.X = torch.from_numpy(Xs).to(self.device)  # (N, D, F)
        self.y = torch.from_numpy(np.nan_to_num(panel.y, nan=0.0)).to(self.device)  # (N, D)
        self.y_ok = torch.from_numpy(np.isfinite(panel.y)).to(self.device)  # (N, D)
        # the training target: the same day's labels only, thin days dropped (label != raw)
        target, self.thin_days = label_target(panel.y, labelled, label)
        self.label = label
        self.target_ok = torch.from_numpy(np.isfinite(target)).to(self.device)  # (N, D)
        self.target = torch.from_numpy(np.nan_to_num(target, nan=0.0)).to(self.device)  # (N, D)
        self.offsets = torch.from_numpy(window_offsets(seq_len, stride)).to(self.device)  # (T,)
        self.rel_cols = torch.tensor(panel.relative_cols, dtype=torch.long, device=self.device)
        self.rel_ref = torch.tensor(panel.relative_ref, dtype=torch.long, device=self.device)
        self._index_windows(labelled, np.isfinite(target), train_every)
        self.class_cuts = self._class_cuts()

    def _index_windows(self, labelled: np.ndarray, has_target: np.ndarray, train_every: int) -> None:
        """`index` (the scored windows of each split) and `loss_index` (those the losses see:
        with a target, and in training only every `train_every`-th end day)."""
        self.index = self._split_index(labelled)  # {split: (ticker idx (W,), end-day idx (W,))}
        fitted = labelled & has_target
        if train_every > 1 and self.fold is not None:
            days = np.arange(labelled.shape[1])
            fitted &= ~((days < self.fold.valid_start) & ((days - self.fold.train_start) % train_every != 0))[None, :]
        self.loss_index = self._split_index(fitted)
        if "train" in self.index:
            self.index["train"] = self.loss_index["train"]

    def _class_cuts(self) -> torch.Tensor:
        """Sell/hold/buy cut points for classifiers: terciles of the *training* targets only."""
        y_train = self.target[self.index["train"]].float() if "train" in self.index else self.y[:0, 0]
        if not y_train.numel():
            return torch.zeros(2, device=self.device)
        return torch.quantile(y_train, torch.tensor([1 / 3, 2 / 3], device=self.device))

    def _split_index(self, labelled: np.ndarray) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The labelled, complete windows ending in each split's day range, by date then ticker."""
        index = {}
        for name, (lo, hi) in self.ranges.items():
            m = np.zeros_like(labelled)
            m[:, max(lo, 0) : max(hi, 0)] = True
            n, t = np.nonzero(labelled & m)
            order = np.lexsort((n, t))  # by date, then ticker: stable, readable order
            index[name] = (torch.from_numpy(n[order]).to(self.device), torch.from_numpy(t[order]).to(self.device))
        return index

    @property
    def n_features(self) -> int:
        return int(self.X.shape[-1])

    def head(self, **sizes: int) -> WindowSet:
        """A view of this set whose named splits keep only their first windows
        (`head(train=4096, valid=256)`: the benchmark's short timed epochs); tensors are shared."""
        sub = copy.copy(self)
        sub.index = {k: tuple(a[: sizes[k]] for a in v) if k in sizes else v for k, v in self.index.items()}
        return sub

    def size(self, split: str) -> int:
        return int(self.index[split][0].numel())

    def gather(self, n: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B,) ticker and end-day indices -> (B, T, F) windows, one gather, no copies kept."""
        return gather_windows(self.X, n, t, self.offsets, self.rel_cols, self.rel_ref)

    def label_steps(self, n: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every day's target inside each window, (B, T), and whether it exists (per-step targets).
        For a training window all of them end before its own label, so they stay in the split."""
        days = t[:, None] + self.offsets[None, :]  # (B, T)
        return self.target[n[:, None], days], self.target_ok[n[:, None], days].float()

    def index_batches(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        daily: bool = False,
        index: dict | None = None,
    ):
        """Yield (n (B,), t (B,)) window indices covering the split once; shuffled when a
        generator is given; the last batch holds the remainder. `daily`: each batch is whole
        trading days, as many as hold about `batch_size` windows on average (at least one),
        the days in shuffled order when a generator is given. `index` replaces self.index
        (the losses' windows: self.loss_index)."""
        n_all, t_all = (index or self.index)[split]
        if daily:
            yield from self._day_batches(n_all, t_all, batch_size, generator)
            return
        if generator is not None:
            perm = torch.randperm(n_all.numel(), generator=generator).to(self.device)
            n_all, t_all = n_all[perm], t_all[perm]
        for i in range(0, n_all.numel(), batch_size):
            yield n_all[i : i + batch_size], t_all[i : i + batch_size]

    def _day_batches(self, n_all, t_all, batch_size: int, generator):
        if not n_all.numel():
            return
        _, counts = torch.unique_consecutive(t_all.cpu(), return_counts=True)  # the index is by date
        starts = torch.cumsum(counts, 0) - counts  # (days,) first window of each day
        per_batch = max(1, round(batch_size * len(counts) / n_all.numel()))  # days per batch
        if generator is not None:
            order = torch.randperm(len(counts), generator=generator)
            starts, counts = starts[order], counts[order]
        # every window once, day after day in the (shuffled) day order
        ends = torch.cumsum(counts, 0)
        pos = torch.arange(int(ends[-1])) - torch.repeat_interleave(ends - counts - starts, counts)
        pos = pos.to(self.device)
        cuts = [0, *ends[per_batch - 1 :: per_batch].tolist()]
        if cuts[-1] != len(pos):
            cuts.append(len(pos))  # the last, partial batch of days
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            yield n_all[pos[lo:hi]], t_all[pos[lo:hi]]

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None):
        """Yield (x (B,T,F), y (B,), n (B,), t (B,)); shuffled when a generator is given."""
        for n, t in self.index_batches(split, batch_size, generator):
            yield self.gather(n, t), self.y[n, t], n, t


def select_tickers(panel: Panel, keep: np.ndarray) -> Panel:
    """The panel restricted to tickers where `keep` (N,) is True, in their order. The panel is
    consumed: its X is compacted in place, because a boolean-index copy of a large panel
    (225 indicator features: ~450 MB) would briefly hold two of them."""
    if keep.all():
        return panel
    X, kept = panel.X, np.nonzero(keep)[0]
    for j, i in enumerate(kept):
        if i != j:
            X[j] = X[i]
    tickers = [t for t, k in zip(panel.tickers, keep) if k]
    return replace(panel, tickers=tickers, X=X[: len(kept)], y=panel.y[keep], close=panel.close[keep])


class TooShort(StockLabError):
    """No ticker has bars enough for one window: scoring (serving.py) answers with no rows."""


def drop_short_tickers(panel: Panel, seq_len: int, horizon: int) -> tuple[Panel, int]:
    """Drop tickers with fewer rows than one window (`seq_len` days) plus the horizon; error if
    none is left. The panel is consumed (see select_tickers)."""
    rows = known_days(panel.X, panel.optional_cols).sum(axis=1)  # (N,)
    keep = rows >= seq_len + horizon
    if not keep.any():
        raise TooShort(
            f"data: no ticker has at least seq_len + horizon = {seq_len + horizon} usable rows "
            f"(longest has {int(rows.max()) if rows.size else 0})"
        )
    return select_tickers(panel, keep), int((~keep).sum())
