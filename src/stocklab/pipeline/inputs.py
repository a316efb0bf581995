"""Inputs: raw bars -> a scaled WindowSet, and the Bundle that lets a logged model rebuild them.

    prepare:        load -> validate -> features -> tickers -> split -> scale (train only) -> windows
    load_inputs / with_windows: the two halves of `prepare` (a walk-forward run scales per fold)
    Bundle:         what a logged model needs to rebuild its inputs (the input-defining
                    configuration, column order, fitted scaler, tickers, data fingerprint)
    InputCache:     a worker's prepared inputs, reused by every trial with the same data recipe
    latest_windows: each ticker's latest complete window (the `predict` job's inputs)

Training, evaluation and prediction all call `prepare`; evaluation and prediction pass the
model's Bundle, which fixes the feature recipe, column order and scaler instead of fitting
them, so there is no second preprocessing path to drift from the first.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from stocklab import indicators
from stocklab.config import StockLabError, TrainConfig, with_values
from stocklab.crosssection import MIN_TICKERS
from stocklab.data import DataReport, ReadOptions, load_panel
from stocklab.factor_eval import MIN_CROSS_SECTION
from stocklab.features import Panel, build_panel, resolve_feature_set
from stocklab.models import LEGACY_MODEL_VALUES, MODELS
from stocklab.windows import (
    Fold,
    Scaler,
    TooShort,
    WindowSet,
    drop_short_tickers,
    select_tickers,
    split_bounds,
    walk_forward_folds,
    window_span,
)

Loaded = tuple[pd.DataFrame, DataReport]  # clean long bars and their report (data.load_panel)


@dataclass
class Bundle:
    """Everything needed to turn raw bars into a logged model's inputs, saved with the model."""

    inputs: dict  # TrainConfig.input_values() of the training run, `features` resolved (never "auto")
    model_config: dict
    feature_names: list[str]  # column order the model was trained on
    scaler: Scaler  # fitted on the training days only
    tickers: list[str]  # tickers the model was trained on (the rows of a per-ticker scaler)
    ticker_universe: list[str] | None = None  # tickers behind the `ticker_id` feature's scale
    class_cuts: list[float] = field(default_factory=list)  # sell/hold/buy cuts (classifiers)
    data_fingerprint: str = ""

    @classmethod
    def from_training(cls, cfg: TrainConfig, mcfg, prep: Prepared) -> Bundle:
        return cls(
            # `extra` as the columns read (extra=all resolved): scoring reads, and requires, those
            inputs={**cfg.input_values(), "features": prep.features, "extra": ",".join(prep.report.extra)},
            model_config=dataclasses.asdict(mcfg),
            feature_names=list(prep.panel.feature_names),
            scaler=prep.ws.scaler,
            tickers=list(prep.panel.tickers),
            ticker_universe=list(prep.universe),
            class_cuts=prep.ws.class_cuts.tolist(),
            data_fingerprint=prep.report.fingerprint,
        )

    model = property(lambda self: self.inputs["model"])
    features = property(lambda self: self.inputs["features"])
    seq_len = property(lambda self: self.inputs["seq_len"])
    data = property(lambda self: self.inputs.get("data", ""))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["scaler"] = self.scaler.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Bundle:
        """A bundle from its JSON form; keys a newer version added get their defaults. A bundle
        written before `inputs` existed kept those values at its top level."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["scaler"] = Scaler.from_dict(d["scaler"])
        if "inputs" not in d:
            known = TrainConfig().input_values()
            values["inputs"] = {k: d[k] for k in known if k in d} | {"scaler": values["scaler"].kind}
        # what a bundle written before a parameter existed was trained with (not today's default)
        values["inputs"] = {**LEGACY_INPUTS, **values["inputs"]}
        legacy = LEGACY_MODEL_VALUES.get(values["inputs"].get("model"), {})
        values["model_config"] = {**legacy, **d.get("model_config", {})}
        return cls(**values)

    def train_config(self, **overrides) -> TrainConfig:
        """The TrainConfig that rebuilds this model's inputs (data etc. overridable); keys a
        newer version added are ignored."""
        known = {k: v for k, v in self.inputs.items() if k in TrainConfig().input_values()}
        return with_values(TrainConfig(), {**known, "device": "cpu", **overrides})


# inputs older bundles lack, with the values they were trained with: before `recipe` (and the
# cs default) every run was the raw recipe
LEGACY_INPUTS = {"recipe": "raw", "label": "raw"}


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


def prepare(
    cfg: TrainConfig, device="cpu", bundle: Bundle | None = None, *, labels: bool = True, bars: Loaded | None = None
) -> Prepared:
    """Load, clean, featurise, split and scale `cfg.data` into a WindowSet.

    Training (`bundle=None`) fits the scaler on the training days and, for the `technical`
    image, the indicator order. Scoring a logged model passes its `bundle`, which fixes the
    feature set, the column order and the scaler (a per-ticker scaler keeps the tickers it knows).
    `labels=False` builds a prediction-only set (no split; a ticker needs one window, no label).
    With walk-forward folds the splits are the last fold's (the one a logged model was fit on).
    `bars`: clean bars already in memory (data.clean_bars) instead of reading `cfg.data`.
    """
    prep = load_inputs(cfg, bundle, labels=labels, bars=bars)
    fold = folds_of(cfg, len(prep.panel.dates))[-1] if labels else None
    scaler = bundle.scaler if bundle is not None else None
    if scaler is not None and scaler.per_ticker:
        scaler = scaler.rows([bundle.tickers.index(t) for t in prep.panel.tickers])
    # this panel is ours: the WindowSet scales its X in place rather than keeping a second copy
    return with_windows(prep, cfg, device, fold, scaler, in_place=True)


def folds_of(cfg: TrainConfig, n_days: int) -> list[Fold]:
    """The walk-forward folds of a configuration (one fold: the plain chronological split)."""
    return walk_forward_folds(n_days, cfg.split_fractions(), cfg.horizon, cfg.folds, cfg.walk)


def load_inputs(
    cfg: TrainConfig, bundle: Bundle | None = None, *, labels: bool = True, bars: Loaded | None = None
) -> Prepared:
    """Everything before scaling: load -> validate -> features -> tickers -> column order.
    The returned Prepared has no WindowSet yet (`with_windows` adds one per fold)."""
    raw, report = bars if bars is not None else load_panel(cfg.data, cfg.cache_dir, ReadOptions.of(cfg))
    if bundle is None:
        features = resolve_feature_set(cfg.features, report.columns, MODELS[cfg.model][0].auto_features, cfg.recipe)
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
        label=cfg.label,
        train_every=cfg.train_every,
    )
    # a book needs `quantiles` names a day (a cross-section too small for any is skipped, not an error)
    n_tickers = len(prep.panel.tickers)
    if fold is not None and MIN_CROSS_SECTION <= n_tickers < cfg.quantiles:
        raise StockLabError(
            f"quantiles: {cfg.quantiles} buckets of the long-short book need at least {cfg.quantiles} tickers; "
            f"the data has {n_tickers}"
        )
    for split in ws.ranges:
        if ws.size(split) == 0 and cfg.label != "raw" and len(prep.panel.tickers) < MIN_TICKERS:
            raise StockLabError(
                f"label: '{cfg.label}' is a transform within each day's cross-section and needs at least "
                f"{MIN_TICKERS} tickers a day; the data has {len(prep.panel.tickers)} (use recipe=raw or label=raw)"
            )
        if ws.size(split) == 0:
            where = f" in fold {fold.index + 1} of {cfg.folds}" if cfg.folds > 1 else ""
            raise StockLabError(
                f"data: the {split} split has no complete windows{where} (seq_len={cfg.seq_len}, "
                f"horizon={cfg.horizon}, split={cfg.split}); use more data or shorter windows"
            )
    return dataclasses.replace(prep, ws=ws)


class InputCache:
    """A study's inputs, prepared once per process and reused by every trial that reads the
    same data the same way: the loaded panel per input recipe (the `panel` fields of
    TrainConfig) and each fold's scaled WindowSet per window recipe (+ the `windows` fields,
    device, fold). A cached WindowSet is read-only to the trainer, and folds scale copies of
    the raw panel, so trials cannot see each other's state. At most `max_entries` recipes of
    each kind are kept (least recently used first out), which bounds memory when a study
    searches `seq_len`."""

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
        key = tuple(cfg.input_values(("panel",)).items())
        if key in self._inputs:
            self.hits += 1

        def build() -> Prepared:
            self.loads += 1
            return load_inputs(cfg)

        return self._get(self._inputs, key, build)

    def windows(self, cfg: TrainConfig, device, fold: Fold) -> Prepared:
        key = (*cfg.input_values(("panel", "windows")).items(), str(device), fold.index)
        return self._get(self._windows, key, lambda: with_windows(self.inputs(cfg), cfg, device, fold))


def latest_windows(prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """(ticker index, end day) of each ticker's latest complete window, in ticker order."""
    ok = prep.ws.window_ok  # (N, D)
    has = ok.any(axis=1)
    if not has.any():
        span = window_span(prep.ws.seq_len, prep.ws.stride)
        raise TooShort(f"data: no ticker has a complete window of {span} days")
    last = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)  # (N,) latest complete window
    n = np.nonzero(has)[0]
    return torch.from_numpy(n).to(prep.ws.device), torch.from_numpy(last[n]).to(prep.ws.device)
