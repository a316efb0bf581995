"""Fitting: one model trained inside the caller's MLflow run, on one split or walk-forward folds.

`train_in_run` is the one training path of every job (train, a tune trial, a walk-forward
evaluate, the models benchmark); it reads as its steps: resolve the configuration, load the
inputs, log what the run is about, fit every fold, combine the folds' scores, log the outcome.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import torch

from stocklab import factor_eval, plots, portfolio, tracking
from stocklab.config import StockLabError, TrainConfig
from stocklab.crosssection import MIN_TICKERS, label_target
from stocklab.models import build_model, effective_config, model_config
from stocklab.pipeline.artifacts import (
    BUNDLE_ARTIFACT,
    log_dataset,
    log_full_evaluation,
    log_portfolio,
    log_predictions,
    log_state,
)
from stocklab.pipeline.inputs import Bundle, InputCache, Prepared, folds_of, load_inputs, with_windows
from stocklab.pipeline.scoring import (
    mse_of,
    portfolio_of,
    predictions_frame,
    rank_ic_of,
    split_metrics,
    valid_portfolio_metrics,
)
from stocklab.training import Epoch, History, configure_cpu_threads, fit, resolve_device, set_seed
from stocklab.windows import valid_window_mask, window_span


@dataclass
class EpochInfo:
    """What a training hook sees after each epoch (the tuner reports from it)."""

    epoch: int
    train_loss: float
    valid_loss: float
    best_epoch: int  # epoch of the lowest validation loss so far (its weights are kept)
    valid_loss_min: float
    valid_rank_ic: Callable[[], float]  # rank IC of the current weights on the validation split
    valid_book: Callable[[str], float]  # a metric of their validation books (valid_ls_sharpe_net, valid_topk_ir)
    fold: int = 0  # walk-forward fold (0-based)
    step: int = 0  # epoch counted across folds: fold * epochs + epoch (Optuna's report step)


EpochHook = Callable[[EpochInfo], None]

# per-fold metrics summarised as mean and standard deviation over the folds
FOLD_SUMMARY = (
    "test_rank_ic", "test_ic", "test_icir", "test_ic_tstat", "test_hit_rate", "test_spread_q5_q1",
    "test_mse_skill", "test_mse_skill_mean", "test_mse", "valid_loss_min", "valid_rank_ic", "valid_mse_min",
    "test_ls_sharpe_net", "valid_ls_sharpe_net", "test_topk_ir", "valid_topk_ir",
)  # fmt: skip
# summed over folds, not averaged
FOLD_TOTALS = ("train_time_s", "train_epochs_run", "train_windows", "test_windows")


@dataclass
class FoldResult:
    model: torch.nn.Module | None
    prep: Prepared | None
    hist: History
    test: pd.DataFrame  # the fold's out-of-sample predictions
    metrics: dict
    skipped: str | None
    n_params: int


class EpochLogger:
    """The trainer's epoch hook for one fold: the epoch's losses to the active run (as
    `<prefix>train_loss`, ...), then the caller's hook (the tuner) with an EpochInfo whose
    validation rank IC and book are computed only if it asks for them."""

    def __init__(self, model, ws, cfg: TrainConfig, on_epoch: EpochHook | None, prefix: str):
        self.model, self.ws, self.cfg, self.on_epoch, self.prefix = model, ws, cfg, on_epoch, prefix

    def __call__(self, done: Epoch) -> None:
        losses = {f"{self.prefix}train_loss": done.train_loss, f"{self.prefix}valid_loss": done.valid_loss}
        if done.rank_ic is not None:
            losses[f"{self.prefix}valid_rank_ic_epoch"] = done.rank_ic
        mlflow.log_metrics(losses, step=done.epoch)
        if self.on_epoch is None:
            return
        fold = self.ws.fold.index
        self.on_epoch(EpochInfo(
            done.epoch, done.train_loss, done.valid_loss, done.best_epoch, done.best_valid,
            functools.partial(self.valid_rank_ic, done), self.valid_book,
            fold=fold, step=fold * self.cfg.epochs + done.epoch,
        ))  # fmt: skip

    def valid_rank_ic(self, done: Epoch) -> float:  # select=rank_ic computed it already: the same value
        if done.rank_ic is not None:
            return done.rank_ic
        return rank_ic_of(predictions_frame(self.model, self.ws, "valid", self.cfg.eval_batch_size))

    def valid_book(self, metric: str) -> float:
        frame = predictions_frame(self.model, self.ws, "valid", self.cfg.eval_batch_size)
        return valid_portfolio_metrics(frame, self.ws, self.cfg).get(metric, float("nan"))


def fit_fold(cfg: TrainConfig, mcfg, prep: Prepared, on_epoch: EpochHook | None, prefix: str) -> FoldResult:
    """Fit a fresh model on one fold's training span, early-stop on its validation span and
    score its test period. Per-epoch losses go to the active run as `<prefix>train_loss`."""
    ws = prep.ws
    set_seed(cfg.seed)  # every fold starts from the same initialisation
    model = build_model(cfg.model, ws.n_features, cfg.seq_len, mcfg)
    hist = fit(
        model, ws, cfg, on_epoch=EpochLogger(model, ws, cfg, on_epoch, prefix)
    )  # restores the best epoch's weights
    if hist.graph_fallback:  # the model could not be captured: it trained eagerly
        mlflow.set_tag("stocklab.cuda_graph_fallback", hist.graph_fallback)
    valid = predictions_frame(model, ws, "valid", cfg.eval_batch_size)
    test = predictions_frame(model, ws, "test", cfg.eval_batch_size)
    metrics, skipped = split_metrics(test, ws, cfg, "test")
    metrics.update(valid_portfolio_metrics(valid, ws, cfg))
    metrics.update(
        {
            # the kept epoch's validation loss (the lowest, unless select=rank_ic kept another)
            "valid_loss_min": hist.best_valid,
            "valid_rank_ic": rank_ic_of(valid),
            # facts of the training are train_*: every metric name says its split (METRIC_SCHEME)
            "train_best_epoch": hist.best_epoch,
            "train_time_s": hist.train_time_s,
            "train_samples_per_s": hist.samples_per_s,
            "train_epochs_run": len(hist.train_loss),
            "train_windows": ws.size("train"),
            "test_windows": ws.size("test"),
        }
    )
    if model.output.forecasts_label:
        # the selected model's forecast vs the label: for regressors the objective itself, for
        # seq2seq the last step's error (its objective averages every step of the window)
        metrics["valid_mse_min"] = mse_of(valid)
    n_params = sum(p.numel() for p in model.parameters())
    return FoldResult(model, prep, hist, test, metrics, skipped, n_params)


def summarise_folds(per_fold: list[dict]) -> dict:
    """Means over folds (and `<key>_std` for FOLD_SUMMARY keys); times and sizes are totals."""
    frame = pd.DataFrame(per_fold)
    out = {}
    for key in frame.columns:
        values = frame[key].astype(float)
        if key in FOLD_TOTALS:
            out[key] = float(values.sum())
        else:
            out[key] = float(values.mean())
            if key in FOLD_SUMMARY:
                out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def train_in_run(
    cfg: TrainConfig,
    model_overrides: dict | None = None,
    on_epoch: EpochHook | None = None,
    full: bool = True,
    cache: InputCache | None = None,
) -> dict:
    """Train one model and log params, per-epoch losses, metrics, plots and the model with its
    Bundle to the *active* MLflow run (the caller opens it and decides how it ends).

    With `cfg.folds` > 1 the model is refit on every walk-forward fold (scaler included): each
    fold's metrics are logged as `fold/<metric>` with step = fold, the run's metrics are their
    means (`<metric>_std` their spread), predictions.parquet and the tear sheet cover the
    concatenated out-of-sample periods, and the logged model is the last fold's.
    `on_epoch(EpochInfo)` runs after every epoch; it may raise (e.g. optuna.TrialPruned) to stop.
    `full=False` (a tune trial) logs metrics, predictions, loss curves, the Bundle and the weights
    but not the model, plots or tear sheet: `complete_run` adds them if the trial is picked.
    `cache` reuses inputs prepared by an earlier call with the same data recipe (InputCache).
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("train_in_run needs an active MLflow run")
    mcfg = model_config(cfg.model, model_overrides)
    cfg = effective_config(cfg, mcfg).validate()  # e.g. a factor's raw bars and look-back
    configure_cpu_threads()
    device = resolve_device(cfg.device)
    base = cache.inputs(cfg) if cache is not None else load_inputs(cfg)
    _log_setup(cfg, mcfg, base, device)

    results = _fit_folds(cfg, mcfg, base, device, on_epoch, cache)
    metrics, test, skipped, sheet_skipped = _combine_folds(cfg, results)

    last = results[-1]
    log_predictions(test, skipped)
    if not skipped:
        log_portfolio(test, last.prep.ws, cfg)
    mlflow.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, str)})
    bundle = Bundle.from_training(cfg, mcfg, last.prep).to_dict()
    tracking.log_json(bundle, BUNDLE_ARTIFACT)
    if full:
        log_full_evaluation(last.model, last.prep, test, cfg, bundle, sheet_skipped, last.hist.train_time_s)
    else:
        log_state(last.model)
    why = None if last.model.constant_forecast else degenerate(test, metrics, skipped)
    if why:  # everything is logged for inspection; the run must not pass for a result
        mlflow.set_tag("stocklab.degenerate", why)
        raise DegenerateRun(
            f"predictions: {why}; the model learned nothing usable (see data_report.json for extreme values; "
            "try a lower lr or other features)"
        )
    return {"run_id": run.info.run_id, **metrics, "n_params": last.n_params}


class DegenerateRun(StockLabError):
    """A trained model whose test predictions carry no signal: the run ends FAILED, exit 2."""


CONSTANT_TOL = 1e-6  # predictions whose std is below this x max(1, |mean|) are constant


def degenerate(test: pd.DataFrame, metrics: dict, skipped: str | None) -> str | None:
    """Why a run's out-of-sample predictions are no result (None when they are one): some are
    not finite, they are constant, or their factor metrics are NaN though the cross-section
    was large enough to compute them."""
    pred = test["prediction"].to_numpy(np.float64)
    if not len(pred):
        return None
    bad = int((~np.isfinite(pred)).sum())
    if bad:
        return f"{bad} of {len(pred)} test predictions are NaN or infinite"
    spread, centre = float(pred.std()), float(pred.mean())
    if spread <= CONSTANT_TOL * max(1.0, abs(centre)):
        return f"the {len(pred)} test predictions are constant (std {spread:.2g} around {centre:.4g})"
    if not skipped and not np.isfinite(metrics.get("test_rank_ic", np.nan)):
        return "the test rank IC is NaN (no test day has a spread of predictions)"
    return None


def _log_setup(cfg: TrainConfig, mcfg, base: Prepared, device) -> None:
    """What the run is about, before it trains: the effective configuration, the input data
    (params, MLflow dataset, data_report.json) and the environment."""
    effective = tracking.config_params(cfg, mcfg)
    differs = tracking.log_params_once(
        {
            **tracking.run_params(cfg, mcfg),
            "features_resolved": base.features,
            "n_features": len(base.panel.feature_names),
            **tracking.dataset_params(base.report, len(base.panel.tickers)),
            **tracking.environment_params(device),
        }
    )
    tags = {"stocklab.model": cfg.model, "stocklab.preset": cfg.preset or "none", "stocklab.label": cfg.label}
    # which target each loss-type metric measures (label != raw: they are on different scales)
    tags["stocklab.loss_target"] = (
        f"train_loss, valid_loss, valid_loss_min: loss={cfg.loss} on the {cfg.label} label; "
        "test_mse, test_naive_mse, test_mse_skill*, valid_mse_min and every factor metric: vs the raw forward return"
    )
    mlflow.set_tags({**tags, "stocklab.data_fingerprint": base.report.fingerprint[:16]})
    if base.dataset is not None:
        log_dataset(base.dataset)
    tracking.log_json({**base.report.to_dict(), **_label_report(cfg, base)}, "data_report.json")
    tracking.log_json(effective, "config.json")  # the effective configuration
    if differs:  # a value logged before this code ran (e.g. by `mlflow run`) is not what was trained
        mlflow.set_tag("stocklab.effective_params", ", ".join(f"{k}={v}" for k, v in differs.items())[:5000])


def _label_report(cfg: TrainConfig, base: Prepared) -> dict:
    """What the training target drops: days whose cross-section has fewer than MIN_TICKERS
    labelled tickers are no target for a per-day label (crosssection.label_target)."""
    if cfg.label == "raw":
        return {"label": "raw"}
    span = window_span(cfg.seq_len, cfg.window_stride)
    labelled = valid_window_mask(base.panel.X, span, base.panel.optional_cols) & np.isfinite(base.panel.y)
    _, thin = label_target(base.panel.y, labelled, cfg.label)
    return {"label": cfg.label, "label_min_tickers": MIN_TICKERS, "label_thin_days_dropped": thin}


def _fit_folds(cfg, mcfg, base: Prepared, device, on_epoch, cache: InputCache | None) -> list[FoldResult]:
    """Fit and score every fold; a walk-forward run logs each fold's metrics and loss curve."""
    folds = folds_of(cfg, len(base.panel.dates))
    walk = len(folds) > 1
    results: list[FoldResult] = []
    for fold in folds:
        # one fold scales the panel in place; walk-forward folds each scale a copy of the raw one
        if cache is not None:  # a scaled copy kept for the next trial with the same recipe
            prep = cache.windows(cfg, device, fold)
        else:
            prep = with_windows(base, cfg, device, fold, in_place=not walk)
        res = fit_fold(cfg, mcfg, prep, on_epoch, f"fold_{fold.index + 1}/" if walk else "")
        if fold.index == 0:
            mlflow.log_param("n_params", res.n_params)
        if walk:
            fold_metrics = {f"fold/{k}": v for k, v in res.metrics.items() if np.isfinite(v)}
            fold_metrics["fold/test_start_ordinal"] = float(prep.panel.dates[fold.test_start].toordinal())
            mlflow.log_metrics(fold_metrics, step=fold.index + 1)
        _log_loss_curve(res, f"plots/loss_curve_fold_{fold.index + 1}.png" if walk else "plots/loss_curve.png")
        if fold is not folds[-1]:
            res.prep = res.model = None  # a fold's scaled panel copy is not kept once it is scored
        results.append(res)
    if not walk:
        ws = results[0].prep.ws
        mlflow.log_params({"n_train": ws.size("train"), "n_valid": ws.size("valid"), "n_test": ws.size("test")})
    return results


def _log_loss_curve(res: FoldResult, artifact_file: str) -> None:
    h = res.hist
    curve = plots.loss_curve(h.train_loss, h.valid_loss, h.best_epoch, res.model.output.loss_name)
    plots.log_figure(curve, artifact_file)


def _combine_folds(cfg: TrainConfig, results: list[FoldResult]) -> tuple[dict, pd.DataFrame, str | None, str | None]:
    """(the run's metrics, its out-of-sample predictions, why factor metrics were skipped, why
    the tear sheet of those predictions is skipped): one fold's reasons are the same; with
    walk-forward folds the first is any fold's, the second the concatenated periods'."""
    if len(results) == 1:
        only = results[0]
        return dict(only.metrics), only.test, only.skipped, only.skipped
    metrics = summarise_folds([r.metrics for r in results])
    test = pd.concat([r.test for r in results], ignore_index=True)
    skipped = next((r.skipped for r in results if r.skipped), None)
    # the concatenated out-of-sample periods judged as one factor (what the tear sheet shows)
    oos, sheet_skipped = factor_eval.factor_metrics(test, cfg.label_scale)
    if not skipped:
        keep = ("rank_ic", "icir", "ic_tstat", "spread_q5_q1")
        metrics.update({f"oos_{k}": v for k, v in oos.items() if k in keep})
        skipped = sheet_skipped
    if not skipped:  # the book traded over the concatenated out-of-sample periods
        book = portfolio_of(test, results[-1].prep.ws, cfg)
        metrics.update(portfolio.portfolio_metrics(book, prefix="oos_"))
    return metrics, test, skipped, sheet_skipped
