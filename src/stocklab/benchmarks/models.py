"""The models suite of the `benchmark` job: every preset, catalogue model and baseline through
the same walk-forward harness, several seeds each, written up as reports/models.md.

    mlflow run . -e benchmark --env-manager local -P suite=models -P data=../shared/data/sp500_5yr
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from stocklab import factor_eval, portfolio
from stocklab.benchmarks import report as model_report
from stocklab.config import RECIPES, BenchmarkConfig, BookOptions, StockLabError, TrainConfig, split_params, with_values
from stocklab.data import load_panel
from stocklab.errors import describe
from stocklab.models import BASELINES, MODELS, recipe_values
from stocklab.models.factors import FACTORS
from stocklab.pipeline.artifacts import log_predictions
from stocklab.pipeline.fitting import train_in_run
from stocklab.pipeline.inputs import InputCache
from stocklab.pipeline.scoring import panel_close, rank_ic_of
from stocklab.presets import PRESETS
from stocklab.sections import ModelsSuite
from stocklab.tracking import job_run, log_params_once, system_metrics
from stocklab.training import configure_cpu_threads, resolve_device

SETUP_ONLY = ("resume", "report", "experiment")  # change nothing that is fitted: not in the resume key
KEY_TAG, FIT_TAG = "stocklab.benchmark_key", "stocklab.benchmark_fit"
ALPHA158_BASELINES = ("lgbm", "linear")  # the cs recipe on alpha158 (reports/features_sp500.md)


@dataclass(frozen=True)
class Entry:
    name: str  # "lstm:cs", "preset:seed000-deep", "factor:momentum_12_1", ...
    kind: str  # "model", "preset", "baseline"
    values: dict  # TrainConfig values
    overrides: dict  # model hyper-parameters
    deterministic: bool = False  # one run, not one per seed


def model_entries(recipes: list[str], presets: bool = True) -> list[Entry]:
    """Every catalogue model and baseline under every recipe (config.RECIPES), lgbm and linear on
    alpha158, the naive forecasts and the classic factors; the source-study presets first if
    `presets`."""
    out: list[Entry] = []
    if presets:
        for name, values in PRESETS.items():
            train, model_args = split_params(values)
            out.append(Entry(f"preset:{name}", "preset", {**train, "preset": name}, model_args))
    for name in MODELS:
        if name not in ("naive", "factor"):
            kind = "baseline" if name in BASELINES else "model"
            for recipe in recipes:
                out.append(Entry(f"{name}:{recipe}", kind, {"model": name, **recipe_values(name, recipe)}, {}))
    for name in ALPHA158_BASELINES:  # Qlib's yardsticks: alpha158 on the latest day's row, robust-scaled
        values = {"model": name, **recipe_values(name, "cs"), "features": "alpha158", "seq_len": 1, "scaler": "robust"}
        out.append(Entry(f"{name}:alpha158", "baseline", values, {}))
    out.append(Entry("naive:zero", "baseline", {"model": "naive"}, {"mode": "zero"}, True))
    out.append(Entry("naive:mean", "baseline", {"model": "naive"}, {"mode": "mean"}))
    for factor in FACTORS:
        out.append(Entry(f"factor:{factor}", "baseline", {"model": "factor"}, {"factor": factor}, True))
    return out


def _selected(cfg: ModelsSuite) -> list[Entry]:
    """The default set (no presets), 'all', or the named entries; a name without its ':' part
    (lstm, factor, preset) stands for all of its entries."""
    if cfg.models in ("", "all"):
        return model_entries(cfg.recipe_names(), presets=cfg.models == "all")
    entries = model_entries(cfg.recipe_names())
    wanted = [m.strip() for m in cfg.models.split(",") if m.strip()]
    chosen = [e for e in entries if any(e.name == w or e.name.startswith(w + ":") for w in wanted)]
    for w in wanted:
        if not any(e.name == w or e.name.startswith(w + ":") for e in entries):
            names = ", ".join(e.name for e in entries)
            raise StockLabError(f"models: unknown entry {w!r} (choose from {names})")
    return chosen


def command(cfg) -> str:
    """The `mlflow run` command that reproduces a suite's run (its non-default values only)."""
    default = BenchmarkConfig(suite=cfg.suite).section()
    parts = [f"mlflow run . -e benchmark --env-manager local -P suite={cfg.suite}"]
    for f in fields(cfg):
        if f.name not in ("suite", "experiment") and getattr(cfg, f.name) != getattr(default, f.name):
            parts.append(f"-P {f.name}={getattr(cfg, f.name)}")
    return " ".join(parts)


def machine(device) -> str:
    try:
        import psutil

        ram = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:  # pragma: no cover - psutil comes with mlflow
        ram = ""
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none (CPU)"
    threads = torch.get_num_threads()
    cores = f"{os.cpu_count()} CPU cores{ram}"
    return f"{platform.platform()}, {cores}; device: {gpu}; torch {torch.__version__} ({threads} threads)"


def _digest(values) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def benchmark_key(cfg: ModelsSuite) -> str:
    """What identifies a benchmark for resuming: every setting that changes what is fitted."""
    return _digest({k: v for k, v in asdict(cfg).items() if k not in SETUP_ONLY})


def fit_key(tcfg: TrainConfig, overrides: dict) -> str:
    """What identifies one fit: its whole training configuration and model hyper-parameters."""
    return _digest({"train": asdict(tcfg), "model": overrides})


def _earlier_parent(key: str, experiment: str) -> str | None:
    """The latest `benchmark models` run with this configuration, in the job's experiment or
    the one `mlflow run` launched in."""
    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in [client.get_experiment_by_name(experiment)] if e is not None]
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        ids.append(os.environ["MLFLOW_EXPERIMENT_ID"])
    if not ids:
        return None
    runs = client.search_runs(sorted(set(ids)), f"tags.`{KEY_TAG}` = '{key}'", max_results=1,
                              order_by=["attributes.start_time DESC"])  # fmt: skip
    return runs[0].info.run_id if runs else None


def _finished_children(parent) -> dict[str, mlflow.entities.Run]:
    """{fit key: run} of the parent's FINISHED fits; fits an earlier session left RUNNING (a
    killed process) are marked KILLED, so the parent never shows a run that will not end."""
    client = mlflow.MlflowClient()
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                              max_results=50_000)  # fmt: skip
    for r in runs:
        if r.info.status == "RUNNING" and r.info.run_id != parent.info.run_id:
            client.set_terminated(r.info.run_id, "KILLED")
    return {r.data.tags[FIT_TAG]: r for r in runs if r.info.status == "FINISHED" and FIT_TAG in r.data.tags}


def _history(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _record(run, entry: str, kind: str, seed: int, extra: dict) -> model_report.RunRecord:
    """A finished run read back from MLflow: the same path for a fresh fit and a resumed one."""
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    metrics = {**run.data.metrics, **extra}
    if "n_params" in run.data.params:
        metrics["n_params"] = float(run.data.params["n_params"])
    rec = model_report.RunRecord(entry, kind, seed, run_id, metrics)
    rec.fold_rank_ic = _history(client, run_id, "fold/test_rank_ic") or [metrics.get("test_rank_ic", float("nan"))]
    best_epochs = _history(client, run_id, "fold/train_best_epoch")
    rec.fold_best_epoch = best_epochs or [metrics.get("train_best_epoch", float("nan"))]
    rec.fold_starts = [datetime.date.fromordinal(int(v)) for v in _history(client, run_id, "fold/test_start_ordinal")]
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet")
    rec.predictions = pd.read_parquet(local)
    return rec


def _fit(entry: Entry, seed: int, tcfg: TrainConfig, key: str, parent, cfg, cache) -> mlflow.entities.Run | str:
    """One fit as a nested run of the benchmark; its finished run, or the error that ended it."""
    tags = {"stocklab.benchmark_entry": entry.name, "stocklab.benchmark_kind": entry.kind,
            "stocklab.role": "benchmark", FIT_TAG: key}  # fmt: skip
    run = mlflow.start_run(nested=True, run_name=f"{entry.name} s{seed}", tags=tags,
                           experiment_id=parent.info.experiment_id, log_system_metrics=system_metrics())  # fmt: skip
    try:
        train_in_run(tcfg, entry.overrides, full=cfg.tear_sheet, cache=cache)
    except Exception as e:  # noqa: BLE001 - one failing model must not lose the others
        mlflow.set_tag("stocklab.error", describe(e))
        mlflow.end_run("FAILED")
        print(f"{entry.name} seed {seed} failed: {describe(e)}")
        return describe(e)
    mlflow.end_run("FINISHED")
    return mlflow.get_run(run.info.run_id)


def _ensemble(members: list[model_report.RunRecord], tcfg: TrainConfig, cache, parent, done: dict):
    """The seeds' mean out-of-sample prediction, scored like a run (the factor metrics, each
    fold's rank IC and the long-short book) and logged as one more nested run (read back when
    an earlier session logged it for the same member runs)."""
    name = f"{members[0].entry} (ensemble)"
    key = _digest(sorted(m.run_id for m in members))
    if key in done:
        return _record(done[key], name, "ensemble", -1, {"horizon": tcfg.horizon})
    frame = pd.concat([m.predictions for m in members]).groupby(["date", "ticker"], as_index=False)
    frame = frame[["prediction", "label"]].mean()  # (date, ticker) rows: the seeds' mean
    metrics, skipped = factor_eval.factor_metrics(frame, tcfg.label_scale)
    logged = {f"oos_{k}": v for k, v in metrics.items() if k in ("rank_ic", "icir", "ic_tstat")}
    logged.update({f"test_{k}": v for k, v in metrics.items() if k in ("rank_ic", "hit_rate", "spread_q5_q1")})
    if not skipped:
        panel = cache.inputs(tcfg).panel
        book = BookOptions.of(tcfg).daily(frame, panel_close(panel))
        logged.update(portfolio.portfolio_metrics(book, prefix="oos_"))
    starts = pd.to_datetime(pd.Series(members[0].fold_starts or [frame["date"].min()]))
    fold = starts.searchsorted(pd.to_datetime(frame["date"]), side="right")  # 1-based fold of each date
    fold_ic = [rank_ic_of(frame[fold == k]) for k in range(1, len(starts) + 1)]
    tags = {"stocklab.benchmark_entry": name, "stocklab.benchmark_kind": "ensemble", "stocklab.role": "benchmark",
            FIT_TAG: key, "stocklab.benchmark_members": ",".join(m.run_id for m in members)}  # fmt: skip
    with mlflow.start_run(nested=True, run_name=name, tags=tags, experiment_id=parent.info.experiment_id) as run:
        mlflow.log_metrics({k: v for k, v in logged.items() if np.isfinite(v)})
        for k, ic in enumerate(fold_ic, start=1):
            mlflow.log_metric("fold/test_rank_ic", ic, step=k)
        log_predictions(frame, skipped)
    rec = model_report.RunRecord(name, "ensemble", -1, run.info.run_id, {**logged, "horizon": tcfg.horizon})
    rec.fold_rank_ic, rec.predictions = fold_ic, frame
    return rec


def run_models_suite(cfg: ModelsSuite) -> dict:
    """Fit every entry with `seeds` seeds on walk-forward folds, each fit an MLflow run nested
    under one `benchmark models` run, add a seed-ensemble per trained entry, then write the
    report and its plots. With `resume` (the default) the latest earlier run of the same
    configuration is reopened and its FINISHED fits are read back instead of refitted, so an
    interrupted benchmark is completed by running the same command again."""
    entries = _selected(cfg)
    configure_cpu_threads()
    device = resolve_device(cfg.device)
    base = TrainConfig(data=cfg.data, max_tickers=cfg.model_tickers, folds=cfg.folds, walk=cfg.walk, split=cfg.split,
                       device=cfg.device, epochs=cfg.epochs, tear_sheet=cfg.tear_sheet, train_every=cfg.train_every,
                       patience=cfg.patience)  # fmt: skip
    base.validate()
    t0 = time.perf_counter()
    horizons = cfg.horizon_list()
    # every entry at every horizon; a preset that fixes its own horizon runs once, at the first
    jobs = [(h, e, seed) for h in horizons for e in entries if h == horizons[0] or "horizon" not in e.values
            for seed in range(1 if e.deterministic else cfg.seeds)]  # fmt: skip
    experiment = cfg.experiment or "stocklab-benchmark-models"
    key = benchmark_key(cfg)
    earlier = _earlier_parent(key, experiment) if cfg.resume else None
    cache = InputCache()  # seeds and recipes of one model share the loaded panel and folds
    records: dict[int, list[model_report.RunRecord]] = {h: [] for h in horizons}  # per horizon: one report each
    with job_run(experiment, bool(cfg.experiment), run_name="benchmark models", run_id=earlier) as parent:
        mlflow.set_tag(KEY_TAG, key)
        log_params_once({f"benchmark_{k}": v for k, v in asdict(cfg).items() if k not in ("output",)})
        done = _finished_children(parent) if earlier else {}
        client = mlflow.MlflowClient()
        sessions = _history(client, parent.info.run_id, "session_wall_time_s")
        reused = 0
        try:
            for horizon, entry, seed in tqdm(jobs, desc="benchmark models", unit="fit"):
                epochs = min(int(entry.values.get("epochs", cfg.epochs)), cfg.epochs)
                tcfg = with_values(base, {"horizon": horizon, **entry.values, "seed": seed, "epochs": epochs})
                fkey = fit_key(tcfg, entry.overrides)
                run = done.get(fkey)
                reused += run is not None
                run = run or _fit(entry, seed, tcfg, fkey, parent, cfg, cache)
                recs = records[horizon]
                if isinstance(run, str):
                    recs.append(model_report.RunRecord(entry.name, entry.kind, seed, "", {}, error=run))
                    continue
                recs.append(_record(run, entry.name, entry.kind, seed, {"horizon": tcfg.horizon, "epoch_cap": epochs}))
                members = [r for r in recs if r.entry == entry.name and not r.error]
                if seed == cfg.seeds - 1 and len(members) == cfg.seeds > 1:  # the entry's last seed
                    recs.append(_ensemble(members, tcfg, cache, parent, done))
        finally:  # an interrupted session's time counts too: the report adds up every session
            sessions.append(time.perf_counter() - t0)
            # by id: when a fit is interrupted its nested run, not the parent, is the active one
            client.log_metric(parent.info.run_id, "session_wall_time_s", sessions[-1], step=len(sessions))
        mlflow.log_metric("wall_time_s", sum(sessions))
        mlflow.log_metric("fits_reused", reused)
        started = datetime.datetime.fromtimestamp(parent.info.start_time / 1000, datetime.timezone.utc)
        resumed = Resumed(sessions=sessions, reused=reused, fits=len(jobs))
        outs = [write_models_report(cfg, records[h], device, started, resumed, h) for h in horizons]
        for out in outs:
            for path in (out["report"], *out["plots"]):  # the reports and their plots, not their folder
                mlflow.log_artifact(str(path), "report")
    return {**outs[0], "reports": {h: out["report"] for h, out in zip(horizons, outs)}}


@dataclass
class Resumed:
    """How the report's runs came about: wall time of every session, fits read back."""

    sessions: list[float]
    reused: int
    fits: int

    def describe(self) -> str:
        total = sum(self.sessions) / 60
        if len(self.sessions) == 1 and not self.reused:
            return f"wall time {total:.1f} min"
        parts = " + ".join(f"{s / 60:.1f}" for s in self.sessions)
        return (
            f"wall time {total:.1f} min in {len(self.sessions)} sessions ({parts} min; resumed: "
            f"{self.reused} of {self.fits} fits read back from the earlier session(s), the rest fitted)"
        )


# the report's fixed text: what each column means
LEGEND = (
    "Entries: <model>:raw and <model>:cs are one model under the two recipes; an '(ensemble)' row scores "
    "the mean out-of-sample prediction of its entry's seeds (it has no validation, MSE or epoch columns). "
    "rank IC: mean daily Spearman IC of each fold's test period, mean ± std over every (seed, fold). "
    "NW s.e.: the standard error of the mean of the seeds' average daily rank IC over the out-of-sample days, "
    "Newey-West with h - 1 lags (neighbouring days' h-day labels overlap). vs best factor: the mean daily "
    "rank IC minus that of the classic factor with the highest rank IC, on their common days, ± its "
    "Newey-West standard error. net Sharpe, net ann. ret, max DD, turnover: the long-short book of the "
    "out-of-sample predictions (top minus bottom fifth, daily tranches held h days, 10 bp per unit traded; "
    "mean over seeds; portfolio.py). "
    "ICIR and t-stat: of the daily Pearson IC over the concatenated out-of-sample days (mean over seeds). "
    "hit rate: share of same-sign forecasts. q5-q1: mean daily spread of the label (forward return over "
    "the horizon) between the top and bottom fifth. MSE/zero and MSE/mean: test MSE over the MSE of the zero "
    "forecast and of the training-label mean (below 1 = better than that forecast). valid rank IC: on each "
    "fold's validation span. best epoch: the kept epoch, mean over folds and seeds. train s: fitting time "
    "summed over folds, mean over seeds. Each entry is judged on its own label horizon (column h). "
    "-: not applicable (a factor is a score, not a return forecast: no MSE; the naive forecasts rank "
    "nothing: no IC)."
)
LONG_SHORT_NOTE = (
    "Long-short: the book of every run's metrics (portfolio.py): each day a tranche long the top fifth and "
    "short the bottom fifth by prediction, held for the label horizon, next-day close-to-close returns, "
    "net of the trading cost; `cum. L/S` and the plot are that net book, averaged over seeds."
)


def _long_short_curves(cfg: ModelsSuite, table: pd.DataFrame, records, horizons: dict) -> dict[str, pd.Series]:
    """Each entry's daily net long-short return (its seeds' books averaged): the same book
    (portfolio.daily_portfolio, costs included) as the table's net columns."""
    raw, _ = load_panel(cfg.data)
    close = raw.pivot(index="date", columns="ticker", values="close").sort_index()
    curves = {}
    for entry in table["entry"]:
        preds = [r.predictions for r in records if r.entry == entry and r.predictions is not None]
        if preds:
            horizon = horizons.get(entry)
            hold = int(horizon) if horizon and np.isfinite(horizon) else TrainConfig().horizon
            book = BookOptions.of(TrainConfig(horizon=hold))
            daily = [book.daily(p, close)["net"] for p in preds]
            curves[entry] = pd.concat(daily, axis=1).mean(axis=1)  # the seeds' books, averaged
    return curves


def write_models_report(cfg: ModelsSuite, records, device, started, resumed: Resumed, horizon: int) -> dict:
    """reports/models.md + models_rank_ic.png + models_long_short.png from the runs' records at
    one label horizon (another horizon's report: models_h<h>.md and its plots)."""
    path = Path(cfg.report_for(horizon))
    path.parent.mkdir(parents=True, exist_ok=True)
    table = model_report.summary_table(records)
    horizons = {r.entry: r.metrics.get("horizon") for r in records if r.metrics}
    table.insert(2, "horizon", [horizons.get(e, float("nan")) for e in table["entry"]])
    curves = _long_short_curves(cfg, table, records, horizons)
    stem = path.with_suffix("")
    ic_png, ls_png = Path(f"{stem}_rank_ic.png"), Path(f"{stem}_long_short.png")
    model_report.plot_rank_ic(table, ic_png)
    model_report.plot_long_short(curves, ls_png)
    cumulative = {e: float((1 + c).prod() - 1) for e, c in curves.items()}
    table["cum_long_short"] = [cumulative.get(e, float("nan")) for e in table["entry"]]
    failed = [r for r in records if r.error]
    recipes = ", ".join(f"{r} ({', '.join(f'{k}={v}' for k, v in RECIPES[r].items()) or 'the model defaults'})"
                        for r in cfg.recipe_names())  # fmt: skip
    lines = [
        "# Model comparison: walk-forward out-of-sample results",
        "",
        f"Command: `{command(cfg)}`  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC; {resumed.describe()}  ",
        f"Machine: {machine(device)}  ",
        f"Data: `{cfg.data}`, {f'first {cfg.model_tickers}' if cfg.model_tickers else 'all'} tickers; split "
        f"{cfg.split} (initial train, valid, out-of-sample); label horizon {horizon} days (this run's horizons: "
        f"{cfg.horizons}, one report each); {cfg.folds} {cfg.walk} walk-forward folds over the "
        "out-of-sample span with the horizon embargo, a refit and a train-only scaler per fold; every "
        f"{cfg.train_every}th end day enters training (every day is scored); at most {cfg.epochs} epochs per "
        f"fit (presets' own counts capped to it), early stopping after {cfg.patience} epochs without a better "
        f"validation score decides; recipes {recipes}; {cfg.seeds} seeds per trained entry and their "
        "seed-ensemble (the mean prediction), one run for deterministic baselines (zero forecast, factors).",
        "",
        *["## What this design can tell apart", "", *model_report.detectable(table), ""],
        *["## Findings (computed from the runs)", "", *[f"- {f}" for f in model_report.findings(table, records)]],
        "",
        "## The entry chosen on validation against the best classic factor",
        "",
        *model_report.head_to_head(table),
        "",
        "## Results",
        "",
        model_report.markdown_table(table),
        "",
        LEGEND,
        "",
        f"![rank IC per model]({ic_png.name})",
        "",
        f"![cumulative long-short return]({ls_png.name})",
        "",
        LONG_SHORT_NOTE,
    ]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r.entry} seed {r.seed}: {r.error}" for r in failed]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}, {ic_png}, {ls_png}")
    return {"report": str(path), "plots": [str(ic_png), str(ls_png)], "table": table, "records": records}
