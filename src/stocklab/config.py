"""Configuration dataclasses, one per job: the single home of every default.

MLproject params -> argparse (generated from these fields by `add_arguments`) -> dataclass ->
mlflow.log_params. A field's type, default, help text and allowed values live here and nowhere
else; `tests/test_config.py` checks MLproject against these defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from stocklab.errors import StockLabError
from stocklab.features import FEATURE_SETS, check_extra, check_feature_sets  # the registries beside their builders
from stocklab.fields import (  # noqa: F401 - re-exported: the jobs' configs and their users
    ArgumentParser,
    add_arguments,
    check_fields,
    convert,
    field_types,
    opt,
    with_values,
)
from stocklab.losses import DAILY_LOSSES, LOSSES
from stocklab.scalers import SCALERS
from stocklab.sections import SUITES, BookOptions, FitOptions, parse_horizons  # noqa: F401 - re-exported: the sections of TrainConfig

__all__ = ["StockLabError"]  # re-exported: config users need not import errors too

LABELS = ("raw", "excess", "cs_zscore", "cs_rank")
# The training recipes (`recipe`): the training target, how batches are drawn, how the kept
# epoch is chosen and what `features=auto` means (crosssection.py, windows.py, training/).
# cs, the default: the cross-sectional recipe of the references (Qlib's Alpha360 benchmarks,
# HIST, MASTER): the label ranked within each day, batches of whole days, the kept epoch by
# validation rank IC, prices relative to the window's last close. On a planted signal every
# family learns under it (tests/test_learnability.py); on price levels none does.
# raw: the source studies' recipe: MSE on the raw forward return of shuffled windows, the kept
# epoch by validation loss, `auto` features by the data (price levels on OHLCV bars).
# The dataclass defaults below are cs's values; explicit values always win over a recipe.
RECIPES: dict[str, dict] = {
    "cs": dict(label="cs_rank", batching="daily", select="rank_ic"),
    "raw": dict(label="raw", batching="random", select="loss"),
}
# what features=auto means under each recipe for a model without a feature set of its own
AUTO_FEATURES = {"cs": "relative", "raw": "by data"}
BATCHINGS = ("random", "daily")
SELECTS = ("loss", "rank_ic")
DEVICES = ("auto", "cpu", "cuda")
WALKS = ("expanding", "sliding")
# what a study optimises -> its objectives (all on the validation split); "both" is a
# two-objective study whose registered model is the Pareto-front trial with the best rank IC
TUNE_METRICS = {
    "valid_loss": ("valid_loss",),
    "valid_rank_ic": ("valid_rank_ic",),
    "valid_ls_sharpe_net": ("valid_ls_sharpe_net",),  # the validation long-short book, net of costs
    "valid_topk_ir": ("valid_topk_ir",),  # the validation long-only topk book's information ratio, net
    "both": ("valid_loss", "valid_rank_ic"),
}
DIRECTIONS = {"valid_loss": "minimize", "valid_rank_ic": "maximize", "valid_ls_sharpe_net": "maximize",
              "valid_topk_ir": "maximize"}  # fmt: skip
PRUNERS = ("median", "hyperband", "none")
DEFAULT_JOURNAL = "optuna-journal.log"
# defaults shared by several jobs' configs (scoring passes, the parsed-panel cache)
EVAL_BATCH_SIZE = 8192
CACHE_DIR = ".stocklab_cache"

# what a TrainConfig field does to a model's inputs (the `role` of `opt`):
#   panel:    changes the loaded, featurised panel (a study's InputCache reloads for a new value)
#   windows:  changes the scaled windows built from that panel (one WindowSet per value and fold)
#   recorded: changes no input, but is kept with the model to rebuild its run (the seed of plots)
# A logged model's Bundle keeps every field with a role and rebuilds its TrainConfig from them.
INPUT_ROLES = ("panel", "windows", "recorded")


MAX_SEED = 2**32 - 1
MAX_LABEL_SCALE = 1e6  # beyond it the label's squares overflow float32 losses (blamed on lr otherwise)


@dataclass
class TrainConfig:
    """Everything one `train` run needs except the model's own hyper-parameters."""

    data: str = opt("sample", "'sample', a folder of per-ticker CSVs, or one CSV/Parquet file", role="panel")
    date_format: str = opt("", "how text dates are written (e.g. %d/%m/%Y) when a file's cannot be told; '' detects",
                           role="panel")  # fmt: skip
    decimal: str = opt(".", "decimal mark of numbers written as text (',' also drops '.' thousands separators)",
                       (".", ","), role="panel")  # fmt: skip
    max_drop: float = opt(
        0.05, "warn about a ticker losing more than this share of its rows in cleaning", role="panel", ge=0.0, le=1.0
    )
    model: str = opt("lstm", "a name from stocklab.models.MODELS", role="panel")
    preset: str = opt("", "a source study's configuration (see presets.py); explicit values override it")
    recipe: str = opt(
        "cs",
        "training recipe: cs = label cs_rank, batching daily, select rank_ic, features relative; raw = the source "
        "studies' (label raw, batching random, select loss, features by the data); explicit values win",
        tuple(RECIPES),
        role="panel",
    )
    features: str = opt(
        "auto",
        f"feature set: {', '.join(FEATURE_SETS)}, or sets joined by '+' (relative+alpha158); auto: the model's "
        "own, else the recipe's (relative, or by the data)",
        role="panel",
    )
    extra: str = opt(
        "",
        "the user's own columns beside the bars (pe_ratio,short_interest; all: every numeric non-bar column), "
        "added to the feature set as of each row's date; features=extra uses them alone",
        role="panel",
    )
    horizon: int = opt(20, "label = forward return over N trading days", role="panel", ge=1)
    seq_len: int = opt(20, "steps per input window", role="panel", ge=1)
    window_stride: int = opt(1, "days between window steps (21: monthly)", role="panel", ge=1)
    return_period: int = opt(1, "look-back of `returns` features in days", role="panel", ge=1)
    epochs: int = opt(10, "maximum training epochs", ge=1)
    batch_size: int = opt(256, "training batch size", ge=1)
    lr: float = opt(1e-3, "Adam learning rate", gt=0.0)
    weight_decay: float = opt(0.0, "Adam weight decay", ge=0.0)
    patience: int = opt(3, "early-stopping patience (epochs without a better validation loss or rank IC)", ge=1)
    seed: int = opt(
        0, "seed of model init, shuffling and plots", role="recorded", ge=0, le=MAX_SEED, why="(numpy's seed range)"
    )
    label_scale: float = opt(
        1.0, "multiplies the label (the 2D CNN study tried 1 and 10)", role="panel", gt=0.0, le=MAX_LABEL_SCALE
    )
    label: str = opt(
        "cs_rank",
        "training target: the forward return, minus the day's mean, or z-scored / ranked within each day "
        "(factor metrics always judge the raw forward return)",
        LABELS,
        role="windows",
    )
    loss: str = opt("mse", "training loss: the model's own (mse), or minus each day's IC / a ListNet ranking", LOSSES)
    batching: str = opt("daily", "training batches: shuffled windows, or whole days in shuffled order", BATCHINGS)
    select: str = opt("rank_ic", "the kept epoch, early stopping: lowest validation loss or best rank IC", SELECTS)
    split: str = opt("0.6,0.2,0.2", "train,valid,test fractions of the calendar", role="panel")
    folds: int = opt(
        1, "walk-forward: the test fraction cut into K out-of-sample periods, a refit per fold", role="windows", ge=1
    )
    walk: str = opt(
        "expanding", "walk-forward training span: all earlier days or the initial length", WALKS, role="windows"
    )
    scaler: str = opt("standard", "feature scaling, fit on the training days only", SCALERS, role="windows")
    train_every: int = opt(
        1, "only every k-th end day enters training (every day is still scored)", role="windows", ge=1
    )
    max_tickers: int = opt(0, "use the first N tickers in name order (0 = all)", role="panel", ge=0)
    device: str = opt("auto", "where to train", DEVICES, setup=True)
    compile: bool = opt(False, "torch.compile the model for training", setup=True)
    cuda_graph: bool = opt(True, "CUDA: replay the training step from a CUDA graph (false: eager steps)", setup=True)
    eval_batch_size: int = opt(EVAL_BATCH_SIZE, "batch size for validation/test passes", setup=True, ge=1)
    tear_sheet: bool = opt(
        True, "log the alphalens tear sheet of the test predictions (its slowest artifact)", setup=True
    )
    importance: bool = opt(
        True,
        "log feature_importance.csv and its plot: permutation importance on validation (+ trees' gain)",
        setup=True,
    )
    # the long-short book every scored split is judged by (portfolio.py)
    quantiles: int = opt(5, "portfolio: long the top 1/q and short the bottom 1/q by prediction", role="recorded", ge=2)
    hold: int = opt(
        0,
        "portfolio: trading days each daily tranche is held (0 = the label horizon)",
        role="recorded",
        ge=0,
        why="(0 = the label horizon)",
    )
    topk: int = opt(
        50,
        "portfolio: the long-only topk book holds this many names (at most a fifth of a day's)",
        role="recorded",
        ge=1,
    )
    n_drop: int = opt(5, "portfolio: names the topk book replaces a day at most (Qlib's TopkDropout)",
                      role="recorded", ge=0)  # fmt: skip
    cost_bps: float = opt(
        10.0, "portfolio: trading cost in basis points per unit of weight traded", role="recorded", ge=0.0
    )
    cache_dir: str = opt(CACHE_DIR, "parsed-panel cache folder ('' = no cache)", setup=True)
    experiment: str = opt(
        "", "MLflow experiment (default: stocklab-train; for tune: stocklab-tune-<study>)", setup=True
    )

    def split_fractions(self) -> tuple[float, float, float]:
        try:
            parts = tuple(float(p) for p in self.split.split(","))
        except ValueError:
            raise StockLabError(f"split: '{self.split}' is not three comma-separated numbers") from None
        if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
            raise StockLabError(f"split: fractions '{self.split}' must be three non-negative numbers summing to 1")
        if min(parts) == 0:
            raise StockLabError(f"split: every fraction in '{self.split}' must be > 0")
        return parts  # type: ignore[return-value]

    def validate(self):
        """Raise StockLabError naming the first bad parameter; return self."""
        check_fields(self)
        check_feature_sets(self.features)
        check_extra(self.extra)
        if self.date_format and "%" not in self.date_format:
            raise StockLabError(f"date_format: {self.date_format!r} must be a strftime format like %d/%m/%Y")
        if self.loss in DAILY_LOSSES and self.batching != "daily":
            raise StockLabError(
                f"loss: '{self.loss}' is computed over each date's cross-section and needs batching=daily "
                f"(batching is '{self.batching}')"
            )
        self.split_fractions()
        return self

    def with_recipe(self, name: str, explicit: frozenset | set = frozenset()) -> TrainConfig:
        """A copy trained under recipe `name`: its values, except the fields in `explicit`."""
        values = {k: v for k, v in RECIPES[name].items() if k not in explicit}
        return dataclasses.replace(self, recipe=name, **values)

    def holding_days(self) -> int:
        return self.hold or self.horizon

    def train_config(self) -> TrainConfig:
        """The TrainConfig part of this config (itself for a TrainConfig)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})

    def input_values(self, roles: tuple[str, ...] = INPUT_ROLES) -> dict:
        """The values of the fields with one of these input roles (see INPUT_ROLES)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig) if f.metadata.get("role") in roles
        }


@dataclass
class TuneConfig(TrainConfig):
    """A study: every `train` parameter (the base of each trial) plus the study's own settings."""

    epochs: int = opt(4, "maximum epochs per trial", ge=1)
    n_trials: int = opt(8, "total finished trials of the study (a resumed study runs the rest)", ge=1)
    count_failed: bool = opt(False, "failed trials count towards n_trials (false: a rerun after a fix runs them again)")
    timeout: float = opt(0.0, "seconds for this invocation (0 = no limit)", ge=0.0)
    study_name: str = opt("", "default: <model>-<data folder name>")
    storage: str = opt("", f"Optuna storage: a journal file (default {DEFAULT_JOURNAL}) or an RDB URL")
    metric: str = opt(
        "valid_rank_ic",
        "what the study optimises on validation data (both: valid_loss and valid_rank_ic)",
        tuple(TUNE_METRICS),
    )
    pruner: str = opt("median", "pruning rule on the per-epoch report", PRUNERS)
    space: str = opt("", "search-space YAML replacing the built-in one (stocklab/spaces/<model>.yaml)")
    register: bool = opt(True, "register the best trial's model as stocklab-<model>")
    n_jobs: int = opt(
        1,
        "worker processes on this machine sharing the study (and its GPU); n_trials stays the total",
        setup=True,
        ge=1,
    )
    trial_artifacts: str = opt(
        "best",
        "best: trials log metrics, loss curves and weights; the best gets model, plots, tear sheet. all: every trial",
        ("best", "all"),
    )
    heartbeat: int = opt(
        60, "RDB storage: seconds between a trial's heartbeats; silent 2x as long = failed, retried", ge=1
    )

    def resolved_study_name(self) -> str:
        data_name = "sample" if self.data == "sample" else Path(self.data.rstrip("/")).name
        return self.study_name or f"{self.model}-{data_name}"


@dataclass
class EvaluateConfig:
    run_id: str = opt("", "a train run whose model to score")
    model_uri: str = opt("", "or any model URI (models:/stocklab-lstm@champion)")
    split: str = opt("test", "the split to score", ("valid", "test"))
    data: str = opt("", "data to score (default: the data the model was trained on)")
    cache_dir: str = opt(CACHE_DIR, "parsed-panel cache folder ('' = no cache)")
    eval_batch_size: int = opt(EVAL_BATCH_SIZE, "batch size of the scoring pass", ge=1)
    folds: int = opt(1, "K > 1: walk-forward evaluation of the model's configuration (a refit per fold)", ge=1)
    walk: str = opt("expanding", "walk-forward training span (with folds > 1)", WALKS)
    tear_sheet: bool = opt(True, "log the alphalens tear sheet of the scored split")

    experiment: str = opt("", "MLflow experiment (default: stocklab-evaluate)")

    def validate(self):
        if bool(self.run_id) == bool(self.model_uri):
            raise StockLabError("run_id/model_uri: give exactly one of them")
        check_fields(self)
        return self


@dataclass
class PredictConfig:
    model: str = opt("lstm", "score with models:/stocklab-<model>@champion")
    data: str = opt("sample", "bars to score: 'sample', a CSV folder or a file")
    date_format: str = opt("", "how the files' text dates are written when they cannot be told ('' detects)")
    decimal: str = opt(".", "decimal mark of numbers written as text", (".", ","))
    output: str = opt("predictions.csv", "where to write (date, ticker, prediction): .csv or .parquet")
    model_uri: str = opt("", "any model URI instead of the champion")
    cache_dir: str = opt(CACHE_DIR, "parsed-panel cache folder ('' = no cache)")
    eval_batch_size: int = opt(EVAL_BATCH_SIZE, "batch size of the scoring pass", ge=1)

    def validate(self):
        check_fields(self)
        if Path(self.output).suffix.lower() not in (".csv", ".parquet"):
            raise StockLabError(f"output: '{self.output}' must end in .csv or .parquet")
        return self


@dataclass
class PromoteConfig:
    model: str = opt("lstm", "promote among the versions of stocklab-<model>")
    metric: str = opt(
        "valid_rank_ic", "a validation metric of the versions' runs (test data never decides; rank IC compares labels)"
    )
    direction: str = opt("auto", "auto: lower is better for *loss*/*mse* metrics", ("auto", "minimize", "maximize"))
    force: bool = opt(False, "compare versions trained on different data or label definitions anyway")

    experiment: str = opt("", "MLflow experiment (default: stocklab-registry)")

    def validate(self):
        check_fields(self)
        return self


@dataclass
class BenchmarkConfig:
    suite: str = opt(
        "speed",
        "speed: pipeline vs source; models: every model and baseline; recovery: a planted signal's recovery",
        ("speed", "models", "recovery"),
    )
    data: str = opt("", "speed, models: the bars (a folder of CSVs, a file, or 'sample'); recovery: unused")
    n_tickers: int = opt(20, "tickers for (a) and (b): the naive loop is slow", ge=1)
    seq_len: int = opt(96, "window length", ge=1)
    batch_size: int = opt(1024, "the project's training batch in (b), (c)", ge=1)
    train_steps: int = opt(60, "timed steps per pipeline in (b)", ge=1)
    seed000_steps: int = opt(40, "timed steps in (c) on CPU (a full epoch on GPU)", ge=1)
    seed000_tickers: int = opt(514, "tickers of the synthetic seed000 panel", ge=1)
    seed000_days: int = opt(3500, "days of the synthetic seed000 panel", ge=1)
    device: str = opt("auto", "where to run", DEVICES)
    study_trials: int = opt(4, "speed (d): trials of the short lstm study on `data`", ge=1)
    study_tickers: int = opt(40, "speed (d): tickers of that study (first N by name)", ge=1)
    study_jobs: int = opt(4, "speed (d): worker processes compared with one", ge=1)
    output: str = opt("speed.json", "speed: where to write the results")
    # suite=models: every preset, every catalogue model at its defaults and every baseline
    models: str = opt(
        "",
        "models: comma-separated entries (e.g. lstm:cs,factor:momentum_12_1); default: every catalogue model "
        "on every recipe and every baseline; 'all' adds the source-study presets",
    )
    model_tickers: int = opt(0, "models: tickers (first N by name; 0 = all)")
    epochs: int = opt(
        0, "models, recovery: maximum epochs per fit, presets' capped to it (0: models 15, recovery 30)", ge=0
    )
    seeds: int = opt(0, "models, recovery: seeds per trained model, baselines once (0: models 2, recovery 1)", ge=0)
    folds: int = opt(2, "models: walk-forward folds", ge=1)
    walk: str = opt("expanding", "models: walk-forward training span", WALKS)
    split: str = opt("0.45,0.15,0.4", "models: initial train,valid fractions and the out-of-sample fraction")
    horizons: str = opt(
        "20,5", "models: label horizons in days, every entry at each; the first's report is `report`, "
        "another's <report>_h<h>.md (a preset keeps its own, at the first)"
    )  # fmt: skip
    report: str = opt("", "models, recovery: the report, its plots beside it (default reports/<suite>.md)")
    tear_sheet: bool = opt(False, "models: log each fit's model, plots and alphalens tear sheet (slower)")
    # suite=models: how every trained entry is fitted
    recipes: str = opt("raw,cs", "models: training recipes of the catalogue models: raw (MSE on the return), cs")
    train_every: int = opt(10, "models: only every k-th end day enters training (see train --train_every)", ge=1)
    patience: int = opt(2, "models, recovery: early-stopping patience of every fit (see train --patience)", ge=1)
    resume: bool = opt(True, "models: read back the fits an earlier run of the same configuration finished")
    # suite=recovery: a synthetic market with a planted cross-sectional signal (benchmarks/recovery.py)
    tickers: int = opt(200, "recovery: tickers of the planted market", ge=0)
    days: int = opt(1260, "recovery: trading days of the planted market (1260: five years)", ge=0)
    market: str = opt(
        "single",
        "recovery: the planted market: single (each ticker's own score) or group (hidden groups' trend: "
        "the cross-stock model's test)",
        ("single", "group"),
    )

    experiment: str = opt("", "MLflow experiment (default: stocklab-benchmark)")

    # recovery: a cap early stopping reaches first (patience 2: the fits stop after 3-8 epochs)
    SUITE_DEFAULTS = {"models": {"epochs": 15, "seeds": 2}, "recovery": {"epochs": 30, "seeds": 1}}

    def validate(self):
        check_fields(self)
        if self.suite == "speed" and Path(self.output).is_dir():
            raise StockLabError(
                f"output: '{self.output}' is a folder; the speed suite writes one JSON file (speed.json)"
            )
        if self.suite != "recovery" and not self.data:
            # no default: the committed reports are about real bars that cannot ship inside the repository,
            # and the built-in sample would silently overwrite them with a toy market's report
            raise StockLabError(
                f"data: the {self.suite} benchmark needs daily bars of many stocks: pass -P data=<folder> (the "
                "committed reports use ../shared/data/sp500_5yr, one CSV per ticker of the S&P 500 5-year set) "
                "or -P data=sample (the built-in sample, a quick look)"
            )
        if self.suite != "recovery" and self.data != "sample" and not Path(self.data).expanduser().exists():
            raise StockLabError(
                f"data: '{self.data}' does not exist (looked for '{Path(self.data).expanduser().resolve()}'); the "
                f"{self.suite} benchmark reads daily bars of many stocks, e.g. one CSV per ticker of the S&P 500 "
                "5-year set (date, open, high, low, close, volume, Name): pass -P data=<folder>"
            )
        parse_horizons(self.horizons)
        unknown = [r for r in self.recipe_names() if r not in RECIPES]
        if unknown or not self.recipe_names():
            raise StockLabError(f"recipes: {self.recipes!r} must name recipes among {', '.join(RECIPES)}")
        if self.suite == "recovery" and (self.tickers < 10 or self.days < 200):
            raise StockLabError(f"tickers/days: {self.tickers} x {self.days} is too small a market (>= 10 x 200)")
        return self

    def recipe_names(self) -> list[str]:
        return [r.strip() for r in self.recipes.split(",") if r.strip()]

    def suite_value(self, name: str):
        """epochs, seeds or report with 0/'' replaced by the suite's default."""
        value = getattr(self, name)
        if name == "report":
            group = "_group" if self.suite == "recovery" and self.market == "group" else ""
            return value or f"reports/{self.suite}{group}.md"
        return value or self.SUITE_DEFAULTS.get(self.suite, {}).get(name, 1)

    def resolved(self) -> BenchmarkConfig:
        """A copy with the suite's default epochs, seeds and report where they were left 0 / ''."""
        return dataclasses.replace(self, **{k: self.suite_value(k) for k in ("epochs", "seeds", "report")})

    def section(self):
        """The suite's own config (sections.SUITES), the only one its runner reads."""
        return SUITES[self.suite].of(self)


JOB_CONFIGS = {
    "train": TrainConfig,
    "tune": TuneConfig,
    "evaluate": EvaluateConfig,
    "predict": PredictConfig,
    "promote": PromoteConfig,
    "benchmark": BenchmarkConfig,
}


def split_params(values: dict, cls=TrainConfig) -> tuple[dict, dict]:
    """A flat mapping of parameters (a preset, a logged config.json, a trial's draw) as
    (the fields of `cls`, the rest: model hyper-parameters)."""
    own = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in own}, {k: v for k, v in values.items() if k not in own}
