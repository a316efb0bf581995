"""The `train` job: one model, one configuration -> one MLflow run.

Run it as an MLflow Project entry point::

    mlflow run . -e train --env-manager local -P data=../shared/data/sp500_5yr -P model=lstm

or directly: ``stocklab train --data sample --model cnn2d --variant deep``.
Flow: load -> validate -> features -> split -> scale (train only) -> windows -> fit -> score -> log.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from stocklab import evaluation, indicators, tracking
from stocklab.config import StockLabError, TrainConfig
from stocklab.data import DataReport, load_panel
from stocklab.features import Panel, build_panel, resolve_feature_set
from stocklab.models import build_model, model_config
from stocklab.training import History, configure_cpu_threads, fit, predict, resolve_device, set_seed
from stocklab.windows import Scaler, WindowSet, drop_short_tickers, split_bounds, window_span

BUNDLE_ARTIFACT = "model_bundle/preprocess.json"


@dataclass
class Prepared:
    """Everything between raw files and the trainer. `panel.X` holds the *scaled* features
    (NaN -> 0) once the WindowSet is built: it is the array behind `ws.X` on CPU."""

    ws: WindowSet
    panel: Panel
    report: DataReport
    features: str


def prepare(
    cfg: TrainConfig, device="cpu", scaler: Scaler | None = None, feature_names: list | None = None
) -> Prepared:
    """Load, clean, featurise, split and scale. `scaler` and `feature_names` (from a logged
    model) reuse the training run's fitted scaler and column order instead of fitting them."""
    raw, report = load_panel(cfg.data, cfg.cache_dir)
    features = resolve_feature_set(cfg.features, report.columns, cfg.model)
    if cfg.max_tickers:
        keep = sorted(raw["ticker"].unique())[: cfg.max_tickers]
        raw = raw[raw["ticker"].isin(keep)]
    panel = build_panel(raw, features, cfg.horizon, cfg.label_scale, cfg.return_period)
    panel, n_short = drop_short_tickers(panel, window_span(cfg.seq_len, cfg.window_stride), cfg.horizon)
    report.dropped["short_tickers"] = n_short
    if feature_names is None and features == "technical":
        # image rows ordered by clustering the indicators' correlations on the training days only
        order = indicators.cluster_order(panel.X, split_bounds(len(panel.dates), cfg.split_fractions())[0])
        feature_names = indicators.feature_names(order)
    if feature_names is not None and feature_names != panel.feature_names:
        cols = [panel.feature_names.index(f) for f in feature_names]
        for i in range(len(panel.X)):  # one ticker at a time: one panel in memory, not two
            panel.X[i] = panel.X[i][:, cols]
        panel = dataclasses.replace(panel, feature_names=list(feature_names))
    # this panel is ours: the WindowSet scales its X in place rather than keeping a second copy
    ws = WindowSet(
        panel,
        cfg.seq_len,
        cfg.horizon,
        cfg.split_fractions(),
        cfg.scaler,
        device,
        scaler,
        cfg.window_stride,
        scale_in_place=True,
    )
    for split in ("train", "valid", "test"):
        if ws.size(split) == 0:
            raise StockLabError(
                f"data: the {split} split has no complete windows (seq_len={cfg.seq_len}, "
                f"horizon={cfg.horizon}, split={cfg.split}); use more data or shorter windows"
            )
    return Prepared(ws, panel, report, features)


def bundle_for(cfg: TrainConfig, mcfg, prep: Prepared) -> dict:
    """What a logged model needs to score raw bars: feature recipe, scaler, window shape."""
    return {
        "model": cfg.model,
        "model_config": dataclasses.asdict(mcfg),
        "features": prep.features,
        "feature_names": prep.panel.feature_names,
        "seq_len": cfg.seq_len,
        "window_stride": cfg.window_stride,
        "return_period": cfg.return_period,
        "horizon": cfg.horizon,
        "class_cuts": prep.ws.class_cuts.tolist(),
        "label_scale": cfg.label_scale,
        "split": cfg.split,
        "tickers": prep.panel.tickers,
        "scaler": prep.ws.scaler.to_dict(),
    }


def run_train(
    cfg: TrainConfig,
    model_overrides: dict | None = None,
    *,
    nested: bool = False,
    run_name: str | None = None,
    tags: dict | None = None,
    on_start=None,
    on_epoch=None,
    tear_sheet: bool = True,
) -> dict:
    """Train one model inside an MLflow run (the one `mlflow run` opened, or a new one).

    Hooks for the tuner: `on_start(run_id)` once the run exists; `on_epoch(epoch, valid_loss,
    model, prep)` after every epoch (it may raise, e.g. optuna.TrialPruned, to stop).
    """
    with mlflow.start_run(nested=nested, run_name=run_name, tags=tags) as run:
        if on_start is not None:
            on_start(run.info.run_id)
        try:
            return _train_in_run(cfg, model_overrides, on_epoch, tear_sheet, run.info.run_id)
        except Exception as e:
            # the run ends FAILED; say why in the UI (pruning is not a failure)
            if type(e).__name__ != "TrialPruned":
                mlflow.set_tag(
                    "stocklab.error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
                )
            raise


def _train_in_run(cfg: TrainConfig, model_overrides, on_epoch, tear_sheet: bool, run_id: str) -> dict:
    cfg.validate()
    mcfg = model_config(cfg.model, model_overrides)
    configure_cpu_threads()
    device = resolve_device(cfg.device)
    prep = prepare(cfg, device)
    ws = prep.ws
    differs = tracking.log_params_once(
        {
            **tracking.config_params(cfg, mcfg),
            "features_resolved": prep.features,
            "n_features": ws.n_features,
            "n_train": ws.size("train"),
            "n_valid": ws.size("valid"),
            "n_test": ws.size("test"),
            **tracking.dataset_params(prep.report),
            **tracking.environment_params(device),
        }
    )
    tracking.log_json(prep.report.to_dict(), "data_report.json")
    tracking.log_json(tracking.config_params(cfg, mcfg), "config.json")  # the effective configuration
    if differs:  # e.g. a preset replaced the MLproject defaults that `mlflow run` logged
        mlflow.set_tag("stocklab.effective_params", ", ".join(f"{k}={v}" for k, v in differs.items())[:5000])

    set_seed(cfg.seed)
    model = build_model(cfg.model, ws.n_features, cfg.seq_len, mcfg)
    n_params = sum(p.numel() for p in model.parameters())
    mlflow.log_param("n_params", n_params)

    def log_epoch(epoch, train_loss, valid_loss, lr):
        mlflow.log_metrics({"train_loss": train_loss, "valid_loss": valid_loss, "lr": lr}, step=epoch)
        if on_epoch is not None:
            on_epoch(epoch, valid_loss, model, prep)

    hist: History = fit(model, ws, cfg, on_epoch=log_epoch)

    metrics = {
        **evaluate_split(model, prep, cfg, "test", tear_sheet=tear_sheet),
        "valid_mse_min": hist.best_valid,
        "valid_rank_ic": valid_rank_ic(model, prep, cfg),
        "best_epoch": hist.best_epoch,
        "train_time_s": hist.train_time_s,
        "train_samples_per_s": hist.samples_per_s,
        "epochs_run": len(hist.train_loss),
    }
    mlflow.log_metrics(metrics)
    tracking.log_figure(tracking.loss_curve(hist.train_loss, hist.valid_loss, hist.best_epoch), "plots/loss_curve.png")
    if hasattr(model, "attention_weights"):
        n, t = (a[:8] for a in ws.index["test"])
        with torch.no_grad():
            weights = model.attention_weights(ws.gather(n, t)).float().cpu().numpy()  # (8, T)
        labels = [f"{prep.panel.tickers[i]} {prep.panel.dates[d].date()}" for i, d in zip(n.tolist(), t.tolist())]
        tracking.log_figure(tracking.attention_heatmap(weights, labels), "plots/attention_heatmap.png")
    bundle = bundle_for(cfg, mcfg, prep)
    tracking.log_json(bundle, BUNDLE_ARTIFACT)
    n, t = (a[:2] for a in ws.index["test"])
    example = ws.gather(n, t).cpu().numpy()  # (2, T, F): batch > 1 keeps the batch dim dynamic
    tracking.log_model(model, example, bundle)
    return {"run_id": run_id, **metrics, "n_params": n_params}


def predictions_frame(model, ws: WindowSet, split: str, batch_size: int = 8192) -> pd.DataFrame:
    """One split's predictions as a long frame (date, ticker, prediction, label)."""
    pred, y, n, t = predict(model, ws, split, batch_size)
    return pd.DataFrame(
        {"date": ws.panel.dates[t], "ticker": np.asarray(ws.panel.tickers)[n], "prediction": pred, "label": y}
    )


def valid_rank_ic(model, prep: Prepared, cfg: TrainConfig) -> float:
    """Mean daily rank IC on the validation split (the tuner's alternative objective)."""
    ic = evaluation.daily_ic(predictions_frame(model, prep.ws, "valid", cfg.eval_batch_size))
    return float(ic["rank_ic"].mean()) if len(ic) else float("nan")


def evaluate_split(model, prep: Prepared, cfg: TrainConfig, split: str, tear_sheet: bool = True) -> dict:
    """Score one split and log it to the active run: MSE vs the zero forecast, factor metrics,
    predictions.parquet, prediction-vs-actual plots and the alphalens tear sheet."""
    df = predictions_frame(model, prep.ws, split, cfg.eval_batch_size)
    err = df["prediction"].to_numpy(np.float64) - df["label"].to_numpy(np.float64)
    split_mse = float(np.mean(err**2))
    naive_mse = float(np.mean(df["label"].to_numpy(np.float64) ** 2))  # the zero forecast
    metrics = {
        f"{split}_mse": split_mse,
        "naive_mse": naive_mse,
        "mse_skill": split_mse / naive_mse if naive_mse > 0 else float("nan"),
    }
    factor, skipped = evaluation.factor_metrics(df, cfg.label_scale)
    metrics.update(factor)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        df.to_parquet(out / "predictions.parquet", index=False)
        mlflow.log_artifact(str(out / "predictions.parquet"))
        evaluation.prediction_plots(df, out / "plots", seed=cfg.seed)
        mlflow.log_artifacts(str(out / "plots"), "plots")
        if skipped:
            mlflow.set_tag("factor_metrics_skipped", skipped)
        elif tear_sheet:
            close = pd.DataFrame(prep.panel.close.T, index=prep.panel.dates, columns=prep.panel.tickers)
            try:
                evaluation.tear_sheet(df, close, (1, 5, cfg.horizon), out / "tearsheet")
                mlflow.log_artifacts(str(out / "tearsheet"), "tearsheet")
            except Exception as e:  # noqa: BLE001 - a tear sheet must never lose the run
                mlflow.set_tag("tearsheet_error", f"{type(e).__name__}: {str(e).splitlines()[0][:400]}")
    mlflow.log_metrics(metrics)
    return metrics
