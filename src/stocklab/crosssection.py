"""Per-day cross-sectional operations: training targets, feature z-scores, per-date statistics.

Everything here looks at one trading day's cross-section at a time (the tickers of that day),
never at other days, so nothing is fitted and nothing can leak across time:

    label_target      the training target of `label` (raw, excess, cs_zscore, cs_rank) on a
                      (tickers, days) label array; days with too few tickers are dropped
    zscore_days       each feature z-scored within each day across tickers (scaler=cs_zscore)
    date_groups       a batch's end-day indices as group ids (the dates of daily losses)
    group_ranks       average ranks within each group (ties share their mean rank), on the device
    group_corr        per-group Pearson correlation, on the device
    rank_ic           the mean daily Spearman rank IC of (prediction, label, date) on the device:
                      what select=rank_ic compares after every epoch

`group_corr` and `rank_ic` follow factor_eval.daily_ic's rule: a date counts only with >= 3
names and a non-constant prediction and label.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

MIN_TICKERS = 5  # a day's cross-section needs this many labelled tickers to be a training target


def label_target(y: np.ndarray, labelled: np.ndarray, label: str, min_tickers: int = MIN_TICKERS):
    """The training target of `label` -> ((N, D) float32 with NaN where not a target, the
    number of days with 1..min_tickers-1 labelled tickers whose labels were dropped).

    `y` (N, D) is the raw forward return (NaN where unknown), `labelled` (N, D) the windows that
    exist (complete window and known label): a day's cross-section is its labelled tickers.
    raw keeps every label; the others use only the same day's labels and drop thin days."""
    if label == "raw":
        return np.where(labelled, y, np.nan).astype(np.float32), 0
    v = np.where(labelled, y, np.nan).astype(np.float64)  # (N, D)
    count = labelled.sum(axis=0)  # (D,) tickers per day
    thin = (count > 0) & (count < min_tickers)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN days
        if label == "cs_rank":
            v = _ranks(v)  # average ranks per day (NaN stays NaN)
        mean = np.nanmean(v, axis=0, keepdims=True)
        out = v - mean
        if label in ("cs_zscore", "cs_rank"):
            std = np.nanstd(v, axis=0, keepdims=True)
            out = np.where(std > 0, out / np.where(std > 0, std, 1.0), 0.0)
    out[:, thin | (count == 0)] = np.nan
    return out.astype(np.float32), int(thin.sum())


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (1..n) down each column of v (N, D), NaN left as NaN."""
    import pandas as pd

    return pd.DataFrame(v).rank(axis=0, method="average").to_numpy(np.float64)


def zscore_days(X: np.ndarray, skip_cols=(), out: np.ndarray | None = None) -> np.ndarray:
    """Each feature of X (N, D, F) z-scored within each day across the tickers that have it,
    in float32, into `out` (X itself allowed); columns in `skip_cols` are copied unchanged.
    A day where a feature is constant (or known for one ticker) gets 0 there."""
    out = X.astype(np.float32, copy=True) if out is None else out
    skip = set(skip_cols)
    for j in range(X.shape[-1]):
        if j in skip:
            if out is not X:
                out[..., j] = X[..., j]
            continue
        col = X[..., j].astype(np.float64)  # (N, D): one feature at a time keeps memory flat
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(col, axis=0), np.nanstd(col, axis=0)
        z = np.where(std > 1e-12, (col - mean) / np.where(std > 1e-12, std, 1.0), 0.0)
        out[..., j] = np.where(np.isfinite(col), z, np.nan)
    return out


def date_groups(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B,) end-day indices -> (group id per window (B,), number of groups)."""
    days, inverse = torch.unique(t, return_inverse=True)
    return inverse, int(days.numel())


def _group_sum(values: torch.Tensor, groups: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, groups, values)


def group_corr(a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor, n: int, eps: float = 0.0):
    """Pearson correlation of a and b (B,) within each group -> ((n,) correlations, (n,) bool:
    the group has >= 3 members and neither a nor b is constant there). `eps` keeps the
    gradient finite for a constant group (the losses); undefined groups read 0."""
    count = _group_sum(torch.ones_like(a), groups, n)  # (n,)
    size = count.clamp(min=1)
    da = a - (_group_sum(a, groups, n) / size)[groups]  # (B,) deviations from the group mean
    db = b - (_group_sum(b, groups, n) / size)[groups]
    cov = _group_sum(da * db, groups, n)
    va, vb = _group_sum(da * da, groups, n), _group_sum(db * db, groups, n)
    defined = (count >= 3) & (va > 0) & (vb > 0)
    corr = cov / torch.sqrt(va * vb + eps)
    return torch.where(defined, corr, torch.zeros_like(corr)), defined


def group_ranks(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Average rank (0-based) of each value within its group; tied values share their mean rank."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # by group, then by value
    g, v = groups[order], values[order]
    pos = torch.arange(len(v), device=v.device, dtype=torch.float64)
    new_group = torch.ones_like(g, dtype=torch.bool)
    new_group[1:] = g[1:] != g[:-1]
    start = torch.cummax(torch.where(new_group, pos, torch.zeros_like(pos)), 0).values
    within = pos - start  # position inside the group
    new_tie = new_group.clone()
    new_tie[1:] |= v[1:] != v[:-1]
    tie = torch.cumsum(new_tie.long(), 0) - 1  # a run of equal values inside one group
    n_ties = int(tie[-1]) + 1 if len(tie) else 0
    mean_pos = _group_sum(within, tie, n_ties) / _group_sum(torch.ones_like(within), tie, n_ties)
    ranks = torch.empty_like(within)
    ranks[order] = mean_pos[tie]
    return ranks


@torch.no_grad()
def rank_ic(pred: torch.Tensor, label: torch.Tensor, t: torch.Tensor) -> float:
    """Mean daily Spearman rank IC of pred vs label (B,) over the dates t (B,) (NaN without a
    defined date): ranks within each date, then their per-date Pearson correlation."""
    groups, n = date_groups(t)
    p = group_ranks(pred.double(), groups)
    y = group_ranks(label.double(), groups)
    corr, defined = group_corr(p, y, groups, n)
    return float(corr[defined].mean()) if bool(defined.any()) else float("nan")
