"""What a run logs beyond its metrics: predictions, plots, the tear sheet, the input dataset,
the weights of a trial and, for a model that may be used, the model itself with its Bundle.

    evaluate_split:      score one split into the active run (the `evaluate` job)
    log_portfolio:       the daily long-short book of a run's predictions
    log_full_evaluation: plots, tear sheet, attention heatmap and the logged model
    log_state:           a trial's fitted state only (logged.complete_run turns it into a model)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch

from stocklab import factor_eval, plots
from stocklab.config import BookOptions, TrainConfig
from stocklab.data import ReadOptions, load_panel
from stocklab.errors import describe
from stocklab.pipeline import packaging
from stocklab.pipeline.inputs import Prepared
from stocklab.pipeline.scoring import portfolio_of, predictions_frame, split_metrics

BUNDLE_ARTIFACT = "model_bundle/preprocess.json"  # the same, as a run artifact for the UI
STATE_ARTIFACT = "model_state"  # a trial's fitted state (StockModel.save_state) until complete_run logs its model
SKIPPED_TAG = "factor_metrics_skipped"  # why a run has no factor metrics (too few stocks a day)


def log_predictions(df: pd.DataFrame, skipped: str | None) -> None:
    """predictions.parquet, and the reason its factor metrics were skipped, if they were."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.parquet"
        df.to_parquet(path, index=False)
        mlflow.log_artifact(str(path))
    if skipped:
        mlflow.set_tag(SKIPPED_TAG, skipped)


def log_portfolio(df: pd.DataFrame, ws, cfg: TrainConfig) -> None:
    """portfolio.parquet: the daily long-short book of these predictions (portfolio.py)."""
    book = portfolio_of(df, ws, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "portfolio.parquet"
        book.rename_axis("date").reset_index().to_parquet(path, index=False)
        mlflow.log_artifact(str(path))


def log_evaluation_plots(df: pd.DataFrame, prep: Prepared, cfg: TrainConfig, skipped, tear_sheet: bool = True) -> None:
    """Prediction-vs-actual plots and (unless the cross-section is too small) the long-short
    book's plots/portfolio.png (cumulative gross and net return, drawdown) and the tear sheet."""
    with tempfile.TemporaryDirectory() as tmp:
        factor_eval.prediction_plots(df, Path(tmp), seed=cfg.seed)
        mlflow.log_artifacts(tmp, "plots")
    if not skipped:
        book = portfolio_of(df, prep.ws, cfg)
        title = f"long-short book: {BookOptions.of(cfg).title()}"
        plots.log_figure(plots.portfolio_plot(book, title), "plots/portfolio.png")
    if tear_sheet and cfg.tear_sheet and not skipped:
        try:
            close = pd.DataFrame(prep.panel.close.T, index=prep.panel.dates, columns=prep.panel.tickers)
            with tempfile.TemporaryDirectory() as tmp:
                factor_eval.tear_sheet(df, close, (1, 5, cfg.horizon), Path(tmp))
                mlflow.log_artifacts(tmp, "tearsheet")
        except Exception as e:  # noqa: BLE001 - a tear sheet must never lose the run
            mlflow.set_tag("tearsheet_error", describe(e, 400))


def evaluate_split(model, prep: Prepared, cfg: TrainConfig, split: str, tear_sheet: bool = True) -> dict:
    """Score one split and log it to the active run: MSE skill vs the zero and the training-mean
    forecasts, factor metrics, predictions.parquet, plots and the alphalens tear sheet."""
    df = predictions_frame(model, prep.ws, split, cfg.eval_batch_size)
    metrics, skipped = split_metrics(df, prep.ws, cfg, split)
    log_predictions(df, skipped)
    if not skipped:
        log_portfolio(df, prep.ws, cfg)
    log_evaluation_plots(df, prep, cfg, skipped, tear_sheet)
    mlflow.log_metrics(metrics)
    return metrics


IMPORTANCE_SHARE = 0.2  # permutation importance may take this share of the fit's time (sampled days beyond)
IMPORTANCE_MIN_S = 10.0  # ... and at least this many seconds


def log_importance(model, prep: Prepared, cfg: TrainConfig, fit_seconds: float) -> None:
    """feature_importance.csv and plots/feature_importance.png (importance.py), on the
    validation split, within IMPORTANCE_SHARE of the fit's time."""
    from stocklab.importance import TOP, feature_importance

    budget = max(IMPORTANCE_MIN_S, IMPORTANCE_SHARE * fit_seconds)
    table = feature_importance(model, prep.ws, prep.panel.feature_names, cfg.eval_batch_size, budget, cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feature_importance.csv"
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    plots.log_figure(plots.feature_importance_plot(table, TOP), "plots/feature_importance.png")
    mlflow.log_metrics(
        {"valid_importance_time_s": table.attrs["seconds"], "valid_importance_days": table.attrs["days"]}
    )


def log_full_evaluation(
    model, prep: Prepared, test: pd.DataFrame, cfg: TrainConfig, bundle: dict, skipped: str | None,
    fit_seconds: float = 0.0,
) -> None:  # fmt: skip
    """What a model that may be used gets, in the active run: prediction plots and the tear sheet
    of its out-of-sample predictions, the attention heatmap, and the model itself: the raw-bar
    scoring pyfunc (serving.py) with its weights and Bundle, which predict, serving and the
    registry load, with a few of its tickers' bars as the input example."""
    log_evaluation_plots(test, prep, cfg, skipped)
    ws = prep.ws
    n, t = (a[:8] for a in ws.index["test"])
    with torch.no_grad():
        weights = model.attention(ws.gather(n, t))  # (8, T), or None for a model without attention
    if weights is not None:
        labels = [f"{prep.panel.tickers[i]} {prep.panel.dates[d].date()}" for i, d in zip(n.tolist(), t.tolist())]
        heatmap = plots.attention_heatmap(weights.float().cpu().numpy(), labels)
        plots.log_figure(heatmap, "plots/attention_heatmap.png")
    if cfg.importance and not model.constant_forecast:  # a factor's formula uses what it says
        log_importance(model, prep, cfg, fit_seconds)
    raw, _ = load_panel(cfg.data, cfg.cache_dir, ReadOptions.of(cfg))  # the parsed-panel cache: no second parse
    example = packaging.example_bars(raw, bundle["tickers"], cfg.seq_len, cfg.window_stride)
    packaging.log_scoring_model(model, bundle, example)


def log_state(model) -> None:
    """A trial's fitted state (KBs): enough for complete_run to log its model if the trial is picked."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_state(Path(tmp))
        mlflow.log_artifacts(tmp, STATE_ARTIFACT)


def log_dataset(dataset) -> None:
    """log_input, safe for concurrent workers: MLflow's store checks for the dataset and then
    inserts it, so two trials starting together can collide on its unique key. The retry finds
    the row the other wrote; the input record is never worth a trial."""
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training")
            return
        except mlflow.exceptions.MlflowException as e:
            if attempt == 2:
                mlflow.set_tag("stocklab.log_input_error", describe(e, 400))
                return
            time.sleep(0.2 * (attempt + 1))
