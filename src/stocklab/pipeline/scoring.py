"""Scoring: a model's predictions on a split as a long frame, and the metrics of that frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from stocklab import factor_eval, portfolio
from stocklab.config import EVAL_BATCH_SIZE, BookOptions, TrainConfig
from stocklab.training.inference import eval_mode, predict, score
from stocklab.windows import WindowSet


@torch.no_grad()
def predict_windows(
    model, windows: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE, days: torch.Tensor | None = None
) -> np.ndarray:
    """Model outputs for (B, T, F) windows, in order, `batch_size` at a time. A whole-day model
    (StockModel.whole_days) scores the windows of each end day (`days` (B,)) together: the
    request's tickers of one date are its cross-section."""
    eval_mode(model)
    if model.whole_days:
        if days is None:
            raise ValueError("a whole-day model's windows need their end days")
        out = torch.empty(len(windows))
        for d in torch.unique(days):
            rows = torch.nonzero(days == d).squeeze(1)
            out[rows] = score(model, windows[rows].float()).float().cpu()
        return out.numpy()
    out = [score(model, windows[i : i + batch_size].float()).float().cpu() for i in range(0, len(windows), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def predictions_frame(model, ws: WindowSet, split: str, batch_size: int) -> pd.DataFrame:
    """One split's predictions as a long frame (date, ticker, prediction, label)."""
    pred, y, n, t = predict(model, ws, split, batch_size)
    return pd.DataFrame(
        {"date": ws.panel.dates[t], "ticker": np.asarray(ws.panel.tickers)[n], "prediction": pred, "label": y}
    )


def rank_ic_of(df: pd.DataFrame) -> float:
    """Mean daily rank IC of a predictions frame (NaN when no date has a cross-section)."""
    ic = factor_eval.daily_ic(df)
    return float(ic["rank_ic"].mean()) if len(ic) else float("nan")


def mse_of(df: pd.DataFrame) -> float:
    err = df["prediction"].to_numpy(np.float64) - df["label"].to_numpy(np.float64)
    return float(np.mean(err**2)) if len(err) else float("nan")


def panel_close(panel) -> pd.DataFrame:
    """A panel's close prices as (dates x tickers): what the portfolio trades at."""
    return pd.DataFrame(panel.close.T, index=panel.dates, columns=panel.tickers)


def portfolio_of(df: pd.DataFrame, ws: WindowSet, cfg: TrainConfig) -> pd.DataFrame:
    """The daily long-short book of a predictions frame (portfolio.py), with cfg's settings."""
    return BookOptions.of(cfg).daily(df, panel_close(ws.panel))


def split_metrics(df: pd.DataFrame, ws: WindowSet, cfg: TrainConfig, split: str) -> tuple[dict, str | None]:
    """A scored split's metrics, each named `<split>_<metric>` (METRIC_SCHEME): its MSE, the zero
    forecast's (`naive_mse`), MSE skill against the zero forecast (`mse_skill`) and against the
    training-mean forecast (`mse_skill_mean`: the mean of the fold's training labels), the
    factor metrics and the long-short portfolio's (`ls_*`). Returns (metrics, why the factor
    metrics were skipped or None)."""
    split_mse = mse_of(df)
    label = df["label"].to_numpy(np.float64)
    naive_mse = float(np.mean(label**2)) if len(label) else float("nan")  # the zero forecast
    train = ws.index.get("train")
    train_mean = float(ws.y[train].double().mean()) if train is not None and train[0].numel() else 0.0
    mean_mse = float(np.mean((label - train_mean) ** 2)) if len(label) else float("nan")
    metrics = {
        "mse": split_mse,
        "naive_mse": naive_mse,
        "mse_skill": split_mse / naive_mse if naive_mse > 0 else float("nan"),
        "mse_skill_mean": split_mse / mean_mse if mean_mse > 0 else float("nan"),
    }
    factor, skipped = factor_eval.factor_metrics(df, cfg.label_scale)
    metrics.update(factor)
    if not skipped:  # too few names a day for quintiles: no book either
        metrics.update(portfolio.portfolio_metrics(portfolio_of(df, ws, cfg)))
    return {f"{split}_{k}": v for k, v in metrics.items()}, skipped


def valid_portfolio_metrics(df: pd.DataFrame, ws: WindowSet, cfg: TrainConfig) -> dict:
    """The validation split's book as `valid_ls_*` metrics (what a study may select on)."""
    names = df.groupby("date")["ticker"].nunique()
    if names.empty or names.median() < factor_eval.MIN_CROSS_SECTION:
        return {}
    return portfolio.portfolio_metrics(portfolio_of(df, ws, cfg), prefix="valid_")
