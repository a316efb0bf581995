"""The one path between raw bars and a model, shared by every job.

    prepare:        load -> validate -> features -> tickers -> split -> scale (train only) -> windows
    Bundle:         what a logged model needs to rebuild its inputs (features, column order,
                    fitted scaler, window shape, label definition, data fingerprint)
    latest_windows: each ticker's latest complete window (the `predict` job's inputs)
    predictions_frame / evaluate_split: scored windows and the metrics/artifacts of one split
    train_in_run:   fit one model and log everything inside the MLflow run the caller opened
                    (a tune trial: metrics, loss curves, predictions and weights only)
    InputCache:     a worker's prepared inputs, reused by every trial with the same data recipe
    complete_run:   a trial's full evaluation (model, plots, tear sheet) from its logged weights

Training, evaluation and prediction all call `prepare`; evaluation and prediction pass the
model's Bundle, which fixes the feature recipe, column order and scaler instead of fitting
them, so there is no second preprocessing path to drift from the first.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from stocklab import evaluation, indicators, tracking
from stocklab.config import StockLabError, TrainConfig
from stocklab.data import DataReport, load_panel
from stocklab.features import Panel, build_panel, resolve_feature_set
from stocklab.models import build_model, fixed_inputs, model_config
from stocklab.training import History, configure_cpu_threads, eval_mode, fit, predict, resolve_device, set_seed
from stocklab.windows import (
    Fold,
    Scaler,
    WindowSet,
    drop_short_tickers,
    select_tickers,
    split_bounds,
    walk_forward_folds,
    window_span,
)

BUNDLE_FILE = "preprocess.json"  # inside the logged model's directory (extra_files)
BUNDLE_ARTIFACT = "model_bundle/preprocess.json"  # the same, as a run artifact for the UI


@dataclass
class Bundle:
    """Everything needed to turn raw bars into a logged model's inputs, saved with the model."""

    model: str
    model_config: dict
    features: str  # the resolved feature set (never "auto")
    feature_names: list[str]  # column order the model was trained on
    seq_len: int
    horizon: int
    scaler: Scaler  # fitted on the training days only
    tickers: list[str]  # tickers the model was trained on (the rows of a per-ticker scaler)
    ticker_universe: list[str] | None = None  # tickers behind the `ticker_id` feature's scale
    window_stride: int = 1
    return_period: int = 1
    label_scale: float = 1.0
    split: str = "0.6,0.2,0.2"
    folds: int = 1  # the model is the last walk-forward fold's: scoring uses that fold's splits
    walk: str = "expanding"
    class_cuts: list[float] = field(default_factory=list)  # sell/hold/buy cuts (classifiers)
    data: str = ""  # the training data as given (`evaluate` scores it by default)
    data_fingerprint: str = ""
    max_tickers: int = 0
    seed: int = 0

    @classmethod
    def from_training(cls, cfg: TrainConfig, mcfg, prep: Prepared) -> Bundle:
        return cls(
            model=cfg.model,
            model_config=dataclasses.asdict(mcfg),
            features=prep.features,
            feature_names=list(prep.panel.feature_names),
            seq_len=cfg.seq_len,
            horizon=cfg.horizon,
            scaler=prep.ws.scaler,
            tickers=list(prep.panel.tickers),
            ticker_universe=list(prep.universe),
            window_stride=cfg.window_stride,
            return_period=cfg.return_period,
            label_scale=cfg.label_scale,
            split=cfg.split,
            folds=cfg.folds,
            walk=cfg.walk,
            class_cuts=prep.ws.class_cuts.tolist(),
            data=cfg.data,
            data_fingerprint=prep.report.fingerprint,
            max_tickers=cfg.max_tickers,
            seed=cfg.seed,
        )

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["scaler"] = self.scaler.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Bundle:
        """A bundle from its JSON form; keys a newer version added get their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["scaler"] = Scaler.from_dict(d["scaler"])
        return cls(**values)

    def train_config(self, **overrides) -> TrainConfig:
        """The TrainConfig that rebuilds this model's inputs (data etc. overridable)."""
        values = dict(
            data=self.data,
            model=self.model,
            features=self.features,
            horizon=self.horizon,
            seq_len=self.seq_len,
            window_stride=self.window_stride,
            return_period=self.return_period,
            label_scale=self.label_scale,
            split=self.split,
            folds=self.folds,
            walk=self.walk,
            max_tickers=self.max_tickers,
            seed=self.seed,
            scaler=self.scaler.kind,
            device="cpu",
        )
        return TrainConfig(**{**values, **overrides})


@dataclass
class Prepared:
    """Everything between raw files and the trainer. `panel.X` holds the *scaled* features
    (NaN -> 0) once the WindowSet is built: it is the array behind `ws.X` on CPU."""

    ws: WindowSet | None  # None until `with_windows` builds one
    panel: Panel
    report: DataReport
    features: str
    universe: list[str]  # the tickers `build_panel` saw (the scale of the ticker_id feature)
    dataset: object | None = None  # an mlflow.data Dataset describing the input (for log_input)


def _dataset(raw: pd.DataFrame, cfg: TrainConfig, report: DataReport):
    """The input as an MLflow dataset: digest and schema from mlflow.data.from_pandas, kept as a
    MetaDataset so the run does not hold on to the whole raw frame."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # registered at import time

    source = LocalArtifactDatasetSource(report.source if cfg.data == "sample" else str(Path(cfg.data).resolve()))
    name = "sample" if cfg.data == "sample" else Path(cfg.data.rstrip("/")).name
    ds = mlflow.data.from_pandas(raw, source=source, name=name)
    return MetaDataset(source=source, name=name, digest=ds.digest, schema=ds.schema)


def prepare(cfg: TrainConfig, device="cpu", bundle: Bundle | None = None, *, labels: bool = True) -> Prepared:
    """Load, clean, featurise, split and scale `cfg.data` into a WindowSet.

    Training (`bundle=None`) fits the scaler on the training days and, for the `technical`
    image, the indicator order. Scoring a logged model passes its `bundle`, which fixes the
    feature set, the column order and the scaler (a per-ticker scaler keeps the tickers it knows).
    `labels=False` builds a prediction-only set (no split; a ticker needs one window, no label).
    With walk-forward folds the splits are the last fold's (the one a logged model was fit on).
    """
    prep = load_inputs(cfg, bundle, labels=labels)
    fold = folds_of(cfg, len(prep.panel.dates))[-1] if labels else None
    scaler = bundle.scaler if bundle is not None else None
    if scaler is not None and scaler.per_ticker:
        scaler = scaler.rows([bundle.tickers.index(t) for t in prep.panel.tickers])
    # this panel is ours: the WindowSet scales its X in place rather than keeping a second copy
    return with_windows(prep, cfg, device, fold, scaler, in_place=True)


def folds_of(cfg: TrainConfig, n_days: int) -> list[Fold]:
    """The walk-forward folds of a configuration (one fold: the plain chronological split)."""
    return walk_forward_folds(n_days, cfg.split_fractions(), cfg.horizon, cfg.folds, cfg.walk)


def load_inputs(cfg: TrainConfig, bundle: Bundle | None = None, *, labels: bool = True) -> Prepared:
    """Everything before scaling: load -> validate -> features -> tickers -> column order.
    The returned Prepared has no WindowSet yet (`with_windows` adds one per fold)."""
    raw, report = load_panel(cfg.data, cfg.cache_dir)
    if bundle is None:
        features = resolve_feature_set(cfg.features, report.columns, cfg.model)
    else:
        features = resolve_feature_set(bundle.features, report.columns)  # errors if columns are missing
    if cfg.max_tickers:
        keep = sorted(raw["ticker"].unique())[: cfg.max_tickers]
        raw = raw[raw["ticker"].isin(keep)]
    # only a training run logs its input; scoring a logged model does not need the digest
    dataset = _dataset(raw, cfg, report) if bundle is None else None
    universe = bundle.ticker_universe if bundle is not None else None
    panel = build_panel(raw, features, cfg.horizon, cfg.label_scale, cfg.return_period, universe=universe)
    del raw
    universe = universe or list(panel.tickers)

    if bundle is not None and bundle.scaler.per_ticker:
        # a per-ticker scaler has rows for the training tickers only: score those
        known = set(bundle.tickers)
        keep = np.array([t in known for t in panel.tickers])
        report.dropped["unknown_tickers"] = int((~keep).sum())
        if not keep.any():
            raise StockLabError("data: none of its tickers was in the model's training data (per-ticker scaler)")
        panel = select_tickers(panel, keep)
    span = window_span(cfg.seq_len, cfg.window_stride)
    panel, report.dropped["short_tickers"] = drop_short_tickers(panel, span, cfg.horizon if labels else 0)

    feature_names = bundle.feature_names if bundle is not None else None
    if feature_names is None and features == "technical":
        # image rows ordered by clustering the indicators' correlations on the initial training
        # span only (before every walk-forward fold's validation and test days)
        order = indicators.cluster_order(panel.X, split_bounds(len(panel.dates), cfg.split_fractions())[0])
        feature_names = indicators.feature_names(order)
    if feature_names is not None and feature_names != panel.feature_names:
        missing = [f for f in feature_names if f not in panel.feature_names]
        if missing:
            raise StockLabError(f"data: the model needs features {missing[:5]} that '{features}' does not build")
        cols = [panel.feature_names.index(f) for f in feature_names]
        for i in range(len(panel.X)):  # one ticker at a time: one panel in memory, not two
            panel.X[i] = panel.X[i][:, cols]
        panel = dataclasses.replace(panel, feature_names=list(feature_names))
    return Prepared(None, panel, report, features, universe, dataset)


def with_windows(
    prep: Prepared, cfg: TrainConfig, device, fold: Fold | None, scaler: Scaler | None = None, in_place: bool = False
) -> Prepared:
    """`prep` with a WindowSet for one fold (scaler fit on that fold's training span unless
    given). `in_place` scales the panel itself (one fold only); otherwise each fold scales a
    copy and the raw panel stays for the next fold. `fold=None`: prediction-only windows."""
    ws = WindowSet(
        prep.panel,
        cfg.seq_len,
        cfg.horizon,
        fold,
        cfg.scaler,
        device,
        scaler,
        cfg.window_stride,
        scale_in_place=in_place,
    )
    for split in ws.ranges:
        if ws.size(split) == 0:
            where = f" in fold {fold.index + 1} of {cfg.folds}" if cfg.folds > 1 else ""
            raise StockLabError(
                f"data: the {split} split has no complete windows{where} (seq_len={cfg.seq_len}, "
                f"horizon={cfg.horizon}, split={cfg.split}); use more data or shorter windows"
            )
    return dataclasses.replace(prep, ws=ws)


# what load_inputs reads from a configuration, and what with_windows adds: two trials whose
# values agree on these get the same inputs (training settings such as lr never change them)
INPUT_KEYS = (
    "data", "model", "features", "horizon", "seq_len", "window_stride", "return_period",
    "label_scale", "split", "max_tickers", "cache_dir",
)  # fmt: skip
WINDOW_KEYS = ("scaler", "folds", "walk")


class InputCache:
    """A study's inputs, prepared once per process and reused by every trial that reads the
    same data the same way: the loaded panel per input recipe (INPUT_KEYS) and each fold's
    scaled WindowSet per window recipe (+ WINDOW_KEYS, device, fold). A cached WindowSet is
    read-only to the trainer, and folds scale copies of the raw panel, so trials cannot see
    each other's state. At most `max_entries` recipes of each kind are kept (least recently
    used first out), which bounds memory when a study searches `seq_len`."""

    def __init__(self, max_entries: int = 4):
        self.max_entries = max_entries
        self._inputs: OrderedDict[tuple, Prepared] = OrderedDict()
        self._windows: OrderedDict[tuple, Prepared] = OrderedDict()
        self.loads = self.hits = 0  # load_inputs calls, and reuses of a loaded panel

    def _get(self, store: OrderedDict, key: tuple, build: Callable[[], Prepared]) -> Prepared:
        if key in store:
            store.move_to_end(key)
            return store[key]
        store[key] = value = build()
        while len(store) > self.max_entries:
            store.popitem(last=False)
        return value

    def inputs(self, cfg: TrainConfig) -> Prepared:
        key = tuple(getattr(cfg, k) for k in INPUT_KEYS)
        if key in self._inputs:
            self.hits += 1

        def build() -> Prepared:
            self.loads += 1
            return load_inputs(cfg)

        return self._get(self._inputs, key, build)

    def windows(self, cfg: TrainConfig, device, fold: Fold) -> Prepared:
        key = (*(getattr(cfg, k) for k in INPUT_KEYS + WINDOW_KEYS), str(device), fold.index)
        return self._get(self._windows, key, lambda: with_windows(self.inputs(cfg), cfg, device, fold))


def latest_windows(prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """(ticker index, end day) of each ticker's latest complete window, in ticker order."""
    ok = prep.ws.window_ok  # (N, D)
    has = ok.any(axis=1)
    if not has.any():
        span = window_span(prep.ws.seq_len, prep.ws.stride)
        raise StockLabError(f"data: no ticker has a complete window of {span} days")
    last = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)  # (N,) latest complete window
    n = np.nonzero(has)[0]
    return torch.from_numpy(n).to(prep.ws.device), torch.from_numpy(last[n]).to(prep.ws.device)


@torch.no_grad()
def predict_windows(model, windows: torch.Tensor, batch_size: int = 8192) -> np.ndarray:
    """Model outputs for (B, T, F) windows, in order, `batch_size` at a time."""
    eval_mode(model)
    out = [model(windows[i : i + batch_size].float()).float().cpu() for i in range(0, len(windows), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def predictions_frame(model, ws: WindowSet, split: str, batch_size: int = 8192) -> pd.DataFrame:
    """One split's predictions as a long frame (date, ticker, prediction, label)."""
    pred, y, n, t = predict(model, ws, split, batch_size)
    return pd.DataFrame(
        {"date": ws.panel.dates[t], "ticker": np.asarray(ws.panel.tickers)[n], "prediction": pred, "label": y}
    )


def rank_ic_of(df: pd.DataFrame) -> float:
    """Mean daily rank IC of a predictions frame (NaN when no date has a cross-section)."""
    ic = evaluation.daily_ic(df)
    return float(ic["rank_ic"].mean()) if len(ic) else float("nan")


def mse_of(df: pd.DataFrame) -> float:
    err = df["prediction"].to_numpy(np.float64) - df["label"].to_numpy(np.float64)
    return float(np.mean(err**2)) if len(err) else float("nan")


def split_metrics(df: pd.DataFrame, ws: WindowSet, label_scale: float) -> tuple[dict, str | None]:
    """A scored split's metrics: MSE against the zero forecast (`mse_skill`) and against the
    training-mean forecast (`mse_skill_mean`: the mean of the fold's training labels), and the
    factor metrics. Returns (metrics, why the factor metrics were skipped or None)."""
    split_mse = mse_of(df)
    label = df["label"].to_numpy(np.float64)
    naive_mse = float(np.mean(label**2)) if len(label) else float("nan")  # the zero forecast
    train = ws.index.get("train")
    train_mean = float(ws.y[train].double().mean()) if train is not None and train[0].numel() else 0.0
    mean_mse = float(np.mean((label - train_mean) ** 2)) if len(label) else float("nan")
    metrics = {
        "test_mse": split_mse,
        "naive_mse": naive_mse,
        "mse_skill": split_mse / naive_mse if naive_mse > 0 else float("nan"),
        "mse_skill_mean": split_mse / mean_mse if mean_mse > 0 else float("nan"),
    }
    factor, skipped = evaluation.factor_metrics(df, label_scale)
    metrics.update(factor)
    return metrics, skipped


def log_split_artifacts(df: pd.DataFrame, prep: Prepared, cfg: TrainConfig, skipped, tear_sheet: bool) -> None:
    """predictions.parquet, prediction-vs-actual plots and the alphalens tear sheet -> active run."""
    log_predictions(df)
    log_evaluation_plots(df, prep, cfg, skipped, tear_sheet)


def log_predictions(df: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.parquet"
        df.to_parquet(path, index=False)
        mlflow.log_artifact(str(path))


def log_evaluation_plots(df: pd.DataFrame, prep: Prepared, cfg: TrainConfig, skipped, tear_sheet: bool = True) -> None:
    """Prediction-vs-actual plots and (unless the cross-section is too small) the tear sheet."""
    with tempfile.TemporaryDirectory() as tmp:
        evaluation.prediction_plots(df, Path(tmp), seed=cfg.seed)
        mlflow.log_artifacts(tmp, "plots")
    if skipped:
        mlflow.set_tag("factor_metrics_skipped", skipped)
    elif tear_sheet:
        try:
            _log_tear_sheet(df, prep, cfg.horizon, mlflow.log_artifacts)
        except Exception as e:  # noqa: BLE001 - a tear sheet must never lose the run
            mlflow.set_tag("tearsheet_error", tracking.describe(e, 400))


def evaluate_split(model, prep: Prepared, cfg: TrainConfig, split: str, tear_sheet: bool = True) -> dict:
    """Score one split and log it to the active run: MSE skill vs the zero and the training-mean
    forecasts, factor metrics, predictions.parquet, plots and the alphalens tear sheet."""
    df = predictions_frame(model, prep.ws, split, cfg.eval_batch_size)
    metrics, skipped = split_metrics(df, prep.ws, cfg.label_scale)
    metrics[f"{split}_mse"] = metrics.pop("test_mse")
    log_split_artifacts(df, prep, cfg, skipped, tear_sheet)
    mlflow.log_metrics(metrics)
    return metrics


def _log_tear_sheet(df: pd.DataFrame, prep: Prepared, horizon: int, log_dir) -> None:
    """alphalens tear sheet of a predictions frame -> `log_dir(local_dir, "tearsheet")`."""
    close = pd.DataFrame(prep.panel.close.T, index=prep.panel.dates, columns=prep.panel.tickers)
    with tempfile.TemporaryDirectory() as tmp:
        evaluation.tear_sheet(df, close, (1, 5, horizon), Path(tmp))
        log_dir(tmp, "tearsheet")


def log_full_evaluation(model, prep: Prepared, test: pd.DataFrame, cfg: TrainConfig, bundle: dict) -> None:
    """What a model that may be used gets, in the active run: prediction plots and the tear sheet
    of its out-of-sample predictions, the attention heatmap, and the model itself (torch.export
    pt2, with its Bundle) that evaluate/predict/the registry load."""
    skipped = evaluation.factor_metrics(test, cfg.label_scale)[1] if len(test) else "no test predictions"
    log_evaluation_plots(test, prep, cfg, skipped)
    ws = prep.ws
    if hasattr(model, "attention_weights"):
        n, t = (a[:8] for a in ws.index["test"])
        with torch.no_grad():
            weights = model.attention_weights(ws.gather(n, t)).float().cpu().numpy()  # (8, T)
        labels = [f"{prep.panel.tickers[i]} {prep.panel.dates[d].date()}" for i, d in zip(n.tolist(), t.tolist())]
        tracking.log_figure(tracking.attention_heatmap(weights, labels), "plots/attention_heatmap.png")
    n, t = (a[:2] for a in ws.index["test"])
    example = ws.gather(n, t).cpu().numpy()  # (2, T, F): batch > 1 keeps the batch dim dynamic
    tracking.log_model(model, example, bundle, BUNDLE_FILE)


WEIGHTS_ARTIFACT = "model_state/state_dict.pt"  # a trial's weights until complete_run logs its model


def has_model(run_id: str) -> bool:
    return "stocklab.model_uri" in mlflow.get_run(run_id).data.tags


def complete_run(run_id: str, cache_dir: str = ".stocklab_cache") -> bool:
    """Give a finished light run (a tune trial: metrics, predictions, Bundle and weights only)
    the full evaluation of `log_full_evaluation`: its model, tear sheet and plots. The weights
    are loaded into a fresh model and the inputs rebuilt from the Bundle through `prepare`, as
    `evaluate` does, so the logged model is exactly the trial's. False if it already had one."""
    if has_model(run_id):
        return False
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE_ARTIFACT))
    bundle = json.loads(local.read_text())
    b = Bundle.from_dict(bundle)
    tcfg = b.train_config(cache_dir=cache_dir)
    prep = prepare(tcfg, "cpu", b)
    model = build_model(b.model, prep.ws.n_features, b.seq_len, model_config(b.model, b.model_config))
    weights = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=WEIGHTS_ARTIFACT)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    eval_mode(model)
    test = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet"))
    # the run ended FINISHED; reopened to add artifacts, it ends FINISHED again
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        log_full_evaluation(model, prep, test, tcfg, bundle)
    return True


@dataclass
class EpochInfo:
    """What a training hook sees after each epoch (the tuner reports from it)."""

    epoch: int
    train_loss: float
    valid_loss: float
    best_epoch: int  # epoch of the lowest validation loss so far (its weights are kept)
    valid_loss_min: float
    valid_rank_ic: Callable[[], float]  # rank IC of the current weights on the validation split
    fold: int = 0  # walk-forward fold (0-based)
    step: int = 0  # epoch counted across folds: fold * epochs + epoch (Optuna's report step)


# per-fold metrics summarised as mean and standard deviation over the folds
FOLD_SUMMARY = (
    "rank_ic", "ic", "icir", "ic_tstat", "hit_rate", "spread_q5_q1", "mse_skill", "mse_skill_mean",
    "test_mse", "valid_loss_min", "valid_rank_ic", "valid_mse_min",
)  # fmt: skip


@dataclass
class FoldResult:
    model: torch.nn.Module | None
    prep: Prepared | None
    hist: History
    test: pd.DataFrame  # the fold's out-of-sample predictions
    metrics: dict
    skipped: str | None


def _fit_fold(cfg, mcfg, prep: Prepared, on_epoch, prefix: str) -> FoldResult:
    """Fit a fresh model on one fold's training span, early-stop on its validation span and
    score its test period. Per-epoch losses go to the active run as `<prefix>train_loss`."""
    ws, fold = prep.ws, prep.ws.fold
    set_seed(cfg.seed)  # every fold starts from the same initialisation
    model = build_model(cfg.model, ws.n_features, cfg.seq_len, mcfg)

    def valid_rank_ic() -> float:
        return rank_ic_of(predictions_frame(model, ws, "valid", cfg.eval_batch_size))

    def log_epoch(epoch: int, train_loss: float, valid_loss: float, hist: History) -> None:
        mlflow.log_metrics({f"{prefix}train_loss": train_loss, f"{prefix}valid_loss": valid_loss}, step=epoch)
        if on_epoch is not None:
            step = fold.index * cfg.epochs + epoch
            info = EpochInfo(epoch, train_loss, valid_loss, hist.best_epoch, hist.best_valid, valid_rank_ic)
            on_epoch(dataclasses.replace(info, fold=fold.index, step=step))

    hist = fit(model, ws, cfg, on_epoch=log_epoch)  # restores the best epoch's weights
    if hist.graph_fallback:  # the model could not be captured: it trained eagerly
        mlflow.set_tag("stocklab.cuda_graph_fallback", hist.graph_fallback)
    valid = predictions_frame(model, ws, "valid", cfg.eval_batch_size)
    test = predictions_frame(model, ws, "test", cfg.eval_batch_size)
    metrics, skipped = split_metrics(test, ws, cfg.label_scale)
    metrics.update(
        {
            "valid_loss_min": hist.best_valid,  # the early-stopping objective (see training.batch_loss)
            "valid_rank_ic": rank_ic_of(valid),
            "best_epoch": hist.best_epoch,
            "train_time_s": hist.train_time_s,
            "train_samples_per_s": hist.samples_per_s,
            "epochs_run": len(hist.train_loss),
            "n_train": ws.size("train"),
            "n_test": ws.size("test"),
        }
    )
    if getattr(model, "target", "regression") in ("regression", "sequence"):
        # the selected model's forecast vs the label: for regressors the objective itself, for
        # seq2seq the last step's error (its objective averages every step of the window)
        metrics["valid_mse_min"] = mse_of(valid)
    return FoldResult(model, prep, hist, test, metrics, skipped)


def summarise_folds(per_fold: list[dict]) -> dict:
    """Means over folds (and `<key>_std` for FOLD_SUMMARY keys); times and sizes are totals."""
    frame = pd.DataFrame(per_fold)
    out = {}
    for key in frame.columns:
        values = frame[key].astype(float)
        if key in ("train_time_s", "epochs_run", "n_train", "n_test"):
            out[key] = float(values.sum())
        else:
            out[key] = float(values.mean())
            if key in FOLD_SUMMARY:
                out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def train_in_run(
    cfg: TrainConfig,
    model_overrides: dict | None = None,
    on_epoch: Callable[[EpochInfo], None] | None = None,
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
    cfg = dataclasses.replace(cfg, **fixed_inputs(cfg.model, mcfg))  # a factor's raw bars and look-back
    cfg.validate()
    configure_cpu_threads()
    device = resolve_device(cfg.device)
    base = cache.inputs(cfg) if cache is not None else load_inputs(cfg)
    folds = folds_of(cfg, len(base.panel.dates))
    walk = len(folds) > 1
    effective = tracking.config_params(cfg, mcfg)
    differs = tracking.log_params_once(
        {
            **effective,
            "features_resolved": base.features,
            "n_features": len(base.panel.feature_names),
            **tracking.dataset_params(base.report),
            **tracking.environment_params(device),
        }
    )
    mlflow.set_tags(
        {
            "stocklab.model": cfg.model,
            "stocklab.preset": cfg.preset or "none",
            "stocklab.data_fingerprint": base.report.fingerprint[:16],
        }
    )
    if base.dataset is not None:
        _log_dataset(base.dataset)
    tracking.log_json(base.report.to_dict(), "data_report.json")
    tracking.log_json(effective, "config.json")  # the effective configuration
    if differs:  # a value logged before this code ran (e.g. by `mlflow run`) is not what was trained
        mlflow.set_tag("stocklab.effective_params", ", ".join(f"{k}={v}" for k, v in differs.items())[:5000])

    results: list[FoldResult] = []
    for fold in folds:
        # one fold scales the panel in place; walk-forward folds each scale a copy of the raw one
        if cache is not None:  # a scaled copy kept for the next trial with the same recipe
            prep = cache.windows(cfg, device, fold)
        else:
            prep = with_windows(base, cfg, device, fold, in_place=not walk)
        res = _fit_fold(cfg, mcfg, prep, on_epoch, f"fold_{fold.index + 1}/" if walk else "")
        if fold.index == 0:
            mlflow.log_param("n_params", sum(p.numel() for p in res.model.parameters()))
        if walk:
            fold_metrics = {f"fold/{k}": v for k, v in res.metrics.items() if np.isfinite(v)}
            dates = prep.panel.dates
            fold_metrics["fold/test_start_ordinal"] = float(dates[fold.test_start].toordinal())
            mlflow.log_metrics(fold_metrics, step=fold.index + 1)
            h = res.hist
            curve = tracking.loss_curve(h.train_loss, h.valid_loss, h.best_epoch, _objective(res.model))
            tracking.log_figure(curve, f"plots/loss_curve_fold_{fold.index + 1}.png")
        if fold is not folds[-1]:
            res.prep = res.model = None  # a fold's scaled panel copy is not kept once it is scored
        results.append(res)
    last = results[-1]
    model, prep, ws = last.model, last.prep, last.prep.ws

    if walk:
        metrics = summarise_folds([r.metrics for r in results])
        test = pd.concat([r.test for r in results], ignore_index=True)
        skipped = next((r.skipped for r in results if r.skipped), None)
        if not skipped:
            # the concatenated out-of-sample periods judged as one factor (what the tear sheet shows)
            oos, skipped = evaluation.factor_metrics(test, cfg.label_scale)
            keep = ("rank_ic", "icir", "ic_tstat", "spread_q5_q1")
            metrics.update({f"oos_{k}": v for k, v in oos.items() if k in keep})
    else:
        metrics, test, skipped = dict(last.metrics), last.test, last.skipped
        tracking.log_figure(
            tracking.loss_curve(last.hist.train_loss, last.hist.valid_loss, last.hist.best_epoch, _objective(model)),
            "plots/loss_curve.png",
        )
        mlflow.log_params({"n_train": ws.size("train"), "n_valid": ws.size("valid"), "n_test": ws.size("test")})
    log_predictions(test)
    if skipped:
        mlflow.set_tag("factor_metrics_skipped", skipped)
    mlflow.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, str)})
    bundle = Bundle.from_training(cfg, mcfg, prep).to_dict()
    tracking.log_json(bundle, BUNDLE_ARTIFACT)
    if full:
        log_full_evaluation(model, prep, test, cfg, bundle)
    else:  # a trial: the weights (KBs) let complete_run log the model if this trial is picked
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(WEIGHTS_ARTIFACT).name
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
            mlflow.log_artifact(str(path), str(Path(WEIGHTS_ARTIFACT).parent))
    n_params = sum(p.numel() for p in model.parameters())
    return {"run_id": run.info.run_id, **metrics, "n_params": n_params}


def _log_dataset(dataset) -> None:
    """log_input, safe for concurrent workers: MLflow's store checks for the dataset and then
    inserts it, so two trials starting together can collide on its unique key (seen with 4
    workers on PostgreSQL: the first trial failed). The retry finds the row the other wrote;
    the input record is never worth a trial."""
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training")
            return
        except mlflow.exceptions.MlflowException as e:
            if attempt == 2:
                mlflow.set_tag("stocklab.log_input_error", tracking.describe(e, 400))
                return
            time.sleep(0.2 * (attempt + 1))


def _objective(model) -> str:
    return "cross-entropy" if getattr(model, "target", "") == "classes" else "MSE"


def load_model_bundle(model_uri: str):
    """(callable model, Bundle) from a logged model URI (runs:/..., models:/...). A tune trial
    that logged weights only gets its model logged first (`complete_run`), on request."""
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/") :].split("/")[0]
        client = mlflow.MlflowClient()
        if not has_model(run_id) and client.list_artifacts(run_id, Path(WEIGHTS_ARTIFACT).parent.as_posix()):
            complete_run(run_id)
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    model = mlflow.pytorch.load_model(str(local))
    found = list(local.rglob(BUNDLE_FILE))
    if not found:
        raise StockLabError(f"model: {model_uri} has no {BUNDLE_FILE} (not logged by stocklab)")
    return model, Bundle.from_dict(json.loads(found[0].read_text()))
