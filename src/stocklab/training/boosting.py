"""The tree trainer: LightGBM on a WindowSet's flattened windows, keeping the gradient trainer's contract.

What is fitted is what the networks fit: the training split's windows (train_every included)
and their target (`label`: raw or a cross-sectional transform), early-stopped on the
validation split by its loss or its rank IC (`select`), with `patience` in epochs. An epoch is
`rounds_per_epoch` boosting rounds: after each, `on_epoch` runs (MLflow's loss curves, Optuna's
report and pruning, as for a network's epoch) and the kept number of rounds may move. Rows
are the windows flattened to T*F columns (models/lgbm.py says why).

    regression   L2 on the target; valid_loss = the validation MSE (the networks' mse)
    lambdarank   one query per date, relevance = the date's quantile bucket of the target;
                 valid_loss = 1 - NDCG@20 of each validation date's ranking

Deterministic for a seed (`deterministic`, row-wise histograms, seeded bagging); it uses the
intra-op threads torch has (`n_jobs` workers divide the cores among them, study/workers.py).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from stocklab.config import FitOptions, StockLabError
from stocklab.training.history import EpochCallback, History, finish, improved, record_epoch
from stocklab.training.inference import valid_rank_ic
from stocklab.windows import WindowSet

NDCG_AT = 20  # lambdarank's validation loss: 1 - NDCG of each date's top 20
CHUNK = 65536  # windows gathered at a time while flattening


def rows(ws: WindowSet, split: str, index: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split's windows as LightGBM rows: X (W, T*F) float32, target (W,), end day (W,),
    in the index's order (by date, then ticker)."""
    n, t = index[split]
    X = np.empty((len(n), ws.seq_len * ws.n_features), np.float32)
    for i in range(0, len(n), CHUNK):
        X[i : i + CHUNK] = ws.gather(n[i : i + CHUNK], t[i : i + CHUNK]).flatten(1).float().cpu().numpy()
    return X, ws.target[n, t].double().cpu().numpy(), t.cpu().numpy()


def relevance(y: np.ndarray, days: np.ndarray, levels: int) -> np.ndarray:
    """Each date's quantile bucket of the target, 0 (worst) .. levels-1 (best): lambdarank's
    integer grades."""
    pct = np.empty(len(y))
    for d in np.unique(days):
        m = days == d
        pct[m] = (np.argsort(np.argsort(y[m], kind="stable"), kind="stable") + 0.5) / m.sum()
    return np.minimum((pct * levels).astype(int), levels - 1)


def groups(days: np.ndarray) -> np.ndarray:
    """Sizes of the runs of equal end days (rows are sorted by date): one query per date."""
    _, sizes = np.unique(days, return_counts=True)
    return sizes


def _dataset(lgb, X, y, days, cfg, reference=None):
    if cfg.objective == "lambdarank":
        return lgb.Dataset(X, relevance(y, days, cfg.relevance_levels), group=groups(days), reference=reference)
    return lgb.Dataset(X, y, reference=reference)


def fit_booster(model, ws: WindowSet, cfg: FitOptions, on_epoch: EpochCallback | None = None) -> History:
    """Boost `model`'s trees on ws's train split, early-stop on the validation split, keep the
    best epoch's rounds (model.best_iteration). Same contract and History as fit_gradient."""
    import lightgbm as lgb

    mc = model.cfg
    start = time.perf_counter()
    X, y, days = rows(ws, "train", ws.index)
    Xv, yv, dv = rows(ws, "valid", ws.loss_index)
    if not len(X) or not len(Xv):
        raise StockLabError("data: lgbm needs windows in both the train and the valid split")
    params = {
        "objective": mc.objective,
        "num_leaves": mc.num_leaves,
        "learning_rate": mc.learning_rate,
        "feature_fraction": mc.feature_fraction,
        "bagging_fraction": mc.bagging_fraction,
        "bagging_freq": 1 if mc.bagging_fraction < 1 else 0,
        "min_data_in_leaf": mc.min_data_in_leaf,
        "lambda_l2": mc.lambda_l2,
        "seed": cfg.seed,  # derives the bagging and feature-fraction seeds
        "deterministic": True,
        "force_row_wise": True,  # with `deterministic`: the same trees for the same seed
        "num_threads": torch.get_num_threads(),
        "metric": "ndcg" if mc.objective == "lambdarank" else "l2",
        "eval_at": [NDCG_AT],
        "verbosity": -1,
    }
    train_set = _dataset(lgb, X, y, days, mc)
    booster = lgb.Booster(params, train_set)
    booster.add_valid(_dataset(lgb, Xv, yv, dv, mc, reference=train_set), "valid")
    model.booster, model.best_iteration = booster, None  # forward() scores the current rounds
    epochs = cfg.epochs  # LGBM.fixed_inputs: n_estimators / rounds_per_epoch
    hist, best_rounds, train_only = History(), 0, 0.0
    bar = tqdm(range(1, epochs + 1), desc="train LGBM", unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        finished = False
        for _ in range(min(mc.rounds_per_epoch, mc.n_estimators - booster.current_iteration())):
            if booster.update():  # no split improves any more: the trees are done
                finished = True
                break
        train_only += time.perf_counter() - t0
        train_loss, valid_loss = (_loss(booster.eval_train()), _loss(booster.eval_valid()))
        score = valid_rank_ic(model, ws, cfg.eval_batch_size) if cfg.select == "rank_ic" else None
        done = record_epoch(hist, epoch, train_loss, valid_loss, score)
        bar.set_postfix(train=f"{train_loss:.4g}", valid=f"{valid_loss:.4g}", rounds=booster.current_iteration())
        if improved(hist, done):
            best_rounds = booster.current_iteration()
        if on_epoch is not None:  # after the update, as fit_gradient: it may raise to prune
            on_epoch(done)
        if finished or epoch - hist.best_epoch >= cfg.patience:
            break
    model.best_iteration = best_rounds
    hist.train_only_s = train_only
    return finish(hist, len(X), start, time.perf_counter())


def _loss(evaluation: list) -> float:
    """A LightGBM evaluation [(data, metric, value, higher_is_better)] as a loss (lower is better)."""
    _, _, value, higher_is_better = evaluation[0]
    return 1.0 - value if higher_is_better else float(value)
