"""Which features a trained model uses: permutation importance on the validation split for
every model, and LightGBM's gain importance for the trees.

Permutation importance of feature f: the drop in validation rank IC when f is shuffled across
the tickers of each day (every day of the scaled panel, so a window sees other tickers' values
of f on each of its days), every other feature and the labels untouched. A drop near 0 says the
model does not use f (or uses it only together with features that carry the same signal); a
negative drop is noise. Shuffling within days keeps each day's distribution of f, so the
model is never asked about values it could not have seen.

Cost: one validation scoring pass per feature. With many features (alpha158: 157) the passes
run on a sample of the validation days, as many as fit in `budget_s` (at least MIN_DAYS):
the importance of a feature is then measured on those days only, and the CSV says how many.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pandas as pd
import torch

from stocklab.training.inference import valid_rank_ic
from stocklab.windows import WindowSet

MIN_DAYS = 20  # validation days the permutation passes use at least (below: too noisy to rank)
TOP = 20  # features in the plot


def on_days(ws: WindowSet, split: str, days: torch.Tensor) -> WindowSet:
    """A view of `ws` whose `split` keeps only the windows ending on `days`; tensors shared."""
    n, t = ws.index[split]
    keep = torch.isin(t, days.to(t.device))
    sub = copy.copy(ws)
    sub.index = {**ws.index, split: (n[keep], t[keep])}
    return sub


def _shuffled_within_days(column: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, D) -> the same values, each day's column permuted across the N tickers."""
    perm = torch.argsort(torch.rand(column.shape, generator=generator), dim=0).to(column.device)  # (N, D)
    return column.gather(0, perm)


def permutation_importance(
    model, ws: WindowSet, feature_names: list[str], batch_size: int, budget_s: float, seed: int = 0
) -> pd.DataFrame:
    """(feature, permutation_drop, days) sorted by the drop, largest first; the base rank IC and
    the number of validation days used in its `attrs`. ws.X is restored afterwards."""
    t0 = time.perf_counter()
    base = valid_rank_ic(model, ws, batch_size)
    pass_s = max(time.perf_counter() - t0, 1e-3)
    days = torch.unique(ws.index["valid"][1].cpu())
    share = min(1.0, budget_s / (pass_s * len(feature_names)))
    n_days = min(len(days), max(MIN_DAYS, math.ceil(share * len(days))))
    gen = torch.Generator().manual_seed(seed)
    sub = ws
    for _ in range(2):  # a pass has a cost per call too: measure the sample's pass, shrink it once more
        if n_days >= len(days):
            break
        days = days[torch.randperm(len(days), generator=gen)[:n_days]].sort().values
        sub = on_days(ws, "valid", days)
        t1 = time.perf_counter()
        base = valid_rank_ic(model, sub, batch_size)
        sample_s = max(time.perf_counter() - t1, 1e-3)
        n_days = max(MIN_DAYS, math.floor(len(days) * min(1.0, budget_s / (sample_s * len(feature_names)))))
    drops = []
    for f in range(len(feature_names)):
        kept = ws.X[:, :, f].clone()  # (N, D)
        ws.X[:, :, f] = _shuffled_within_days(kept, gen)
        try:
            drops.append(base - valid_rank_ic(model, sub, batch_size))
        finally:
            ws.X[:, :, f] = kept
    out = pd.DataFrame({"feature": feature_names, "permutation_drop": drops, "days": len(days)})
    out = out.sort_values("permutation_drop", ascending=False, kind="stable").reset_index(drop=True)
    out.attrs = {"base_rank_ic": base, "days": int(len(days)), "seconds": time.perf_counter() - t0}
    return out


def feature_importance(model, ws: WindowSet, feature_names: list[str], batch_size: int, budget_s: float, seed: int):
    """Permutation importance for every model, with the model's own (gain) importance beside
    it where it has one (StockModel.gain_importance: the trees), summed over the window's days."""
    table = permutation_importance(model, ws, feature_names, batch_size, budget_s, seed)
    gain = model.gain_importance(len(feature_names))
    if gain is not None:
        table["gain"] = table["feature"].map(dict(zip(feature_names, np.asarray(gain, dtype=float))))
    return table
