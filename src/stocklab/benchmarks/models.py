"""The models suite of the `benchmark` job: every preset, catalogue model and baseline through
the same walk-forward harness, several seeds each, written up as reports/models.md.

    mlflow run . -e benchmark --env-manager local -P suite=models
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import mlflow
import pandas as pd
import torch
from tqdm.auto import tqdm

from stocklab.benchmarks import report as model_report
from stocklab.config import BenchmarkConfig, StockLabError, TrainConfig, split_params, with_values
from stocklab.data import load_panel
from stocklab.errors import describe
from stocklab.models import BASELINES, MODELS
from stocklab.models.factors import FACTORS
from stocklab.pipeline.fitting import train_in_run
from stocklab.presets import PRESETS
from stocklab.tracking import job_run, log_params_once
from stocklab.trainer import configure_cpu_threads, resolve_device

RECOVERY_ONLY = ("tickers", "days")
Entry = tuple[str, str, dict, dict, bool]  # (name, kind, train values, model overrides, deterministic)


def model_entries() -> list[Entry]:
    """Every source-study preset, every catalogue model at its defaults, and every baseline."""
    out: list[Entry] = []
    for name, values in PRESETS.items():
        train, model_args = split_params(values)
        out.append((f"preset:{name}", "preset", {**train, "preset": name}, model_args, False))
    for name in MODELS:
        if name not in ("naive", "factor"):
            out.append((name, "baseline" if name in BASELINES else "model", {"model": name}, {}, False))
    out.append(("naive:zero", "baseline", {"model": "naive"}, {"mode": "zero"}, True))
    out.append(("naive:mean", "baseline", {"model": "naive"}, {"mode": "mean"}, False))
    for factor in FACTORS:
        out.append((f"factor:{factor}", "baseline", {"model": "factor"}, {"factor": factor}, True))
    return out


def _selected(cfg: BenchmarkConfig) -> list[Entry]:
    entries = model_entries()
    if not cfg.models:
        return entries
    wanted = [m.strip() for m in cfg.models.split(",") if m.strip()]
    names = [e[0] for e in entries]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise StockLabError(f"models: unknown entry {unknown[0]!r} (choose from {', '.join(names)})")
    return [e for e in entries if e[0] in wanted]


def resolved(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """cfg with its suite's default epochs, seeds and report where they were left 0 / ''."""
    return replace(cfg, **{k: cfg.suite_value(k) for k in ("epochs", "seeds", "report")})


def command(cfg: BenchmarkConfig) -> str:
    """The `mlflow run` command that reproduces this benchmark (non-default values only)."""
    default = resolved(BenchmarkConfig(suite=cfg.suite))
    parts = [f"mlflow run . -e benchmark --env-manager local -P suite={cfg.suite}"]
    for f in fields(cfg):
        if f.name not in ("suite", "experiment") and getattr(cfg, f.name) != getattr(default, f.name):
            if f.name in RECOVERY_ONLY and cfg.suite != "recovery":
                continue
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


def run_models_suite(cfg: BenchmarkConfig) -> dict:
    """Fit every entry with `seeds` seeds on walk-forward folds, each fit an MLflow run nested
    under one `benchmark models` run, then write the report and its plots."""
    cfg = resolved(cfg)
    entries = _selected(cfg)
    configure_cpu_threads()
    device = resolve_device(cfg.device)
    base = TrainConfig(data=cfg.data, max_tickers=cfg.model_tickers, folds=cfg.folds, walk=cfg.walk, split=cfg.split,
                       device=cfg.device, epochs=cfg.epochs, tear_sheet=cfg.tear_sheet, label=cfg.label,
                       loss=cfg.loss, batching=cfg.batching, select=cfg.select)  # fmt: skip
    base.validate()
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    records: list[model_report.RunRecord] = []
    client = mlflow.MlflowClient()
    jobs = [(e, seed) for e in entries for seed in range(1 if e[4] else cfg.seeds)]
    experiment = cfg.experiment or "stocklab-benchmark-models"
    with job_run(experiment, bool(cfg.experiment), run_name="benchmark models") as parent:
        log_params_once({f"benchmark_{k}": v for k, v in asdict(cfg).items() if k not in ("output",)})
        for (entry, kind, values, overrides, _), seed in tqdm(jobs, desc="benchmark models", unit="fit"):
            epochs = min(int(values.get("epochs", cfg.epochs)), cfg.epochs)
            tcfg = with_values(base, {**values, "seed": seed, "epochs": epochs})
            tags = {"stocklab.benchmark_entry": entry, "stocklab.benchmark_kind": kind, "stocklab.role": "benchmark"}
            run = mlflow.start_run(nested=True, run_name=f"{entry} s{seed}", tags=tags,
                                   experiment_id=parent.info.experiment_id)  # fmt: skip
            rec = model_report.RunRecord(entry, kind, seed, run.info.run_id, {})
            try:
                res = train_in_run(tcfg, overrides)
            except Exception as e:  # noqa: BLE001 - one failing model must not lose the others
                rec.error = describe(e)
                mlflow.set_tag("stocklab.error", rec.error)
                mlflow.end_run("FAILED")
                print(f"{entry} seed {seed} failed: {rec.error}")
                records.append(rec)
                continue
            mlflow.end_run("FINISHED")
            rec.metrics = {k: v for k, v in res.items() if isinstance(v, (int, float))}
            rec.metrics["horizon"] = tcfg.horizon
            history = client.get_metric_history(run.info.run_id, "fold/rank_ic")
            rec.fold_rank_ic = [m.value for m in sorted(history, key=lambda m: m.step)] or [res.get("rank_ic")]
            local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions.parquet")
            rec.predictions = pd.read_parquet(local)
            records.append(rec)
        elapsed = time.perf_counter() - t0
        out = write_models_report(cfg, records, device, started, elapsed)
        mlflow.log_artifacts(str(Path(cfg.report).parent), "report")
        mlflow.log_metric("wall_time_s", elapsed)
    return out


# the report's fixed text: what each column means
LEGEND = (
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
    "Long-short: every day, long the top fifth and short the bottom fifth by prediction, equal weights, "
    "next-day close-to-close returns, averaged over seeds; no costs."
)


def write_models_report(cfg: BenchmarkConfig, records, device, started, elapsed: float) -> dict:
    """reports/models.md + models_rank_ic.png + models_long_short.png from the runs' records."""
    path = Path(cfg.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = model_report.summary_table(records)
    horizons = {r.entry: r.metrics.get("horizon") for r in records if r.metrics}
    table.insert(2, "horizon", [horizons.get(e, float("nan")) for e in table["entry"]])
    raw, _ = load_panel(cfg.data)
    close = raw.pivot(index="date", columns="ticker", values="close").sort_index()
    curves = {}
    for entry in table["entry"]:
        preds = [r.predictions for r in records if r.entry == entry and r.predictions is not None]
        if preds:
            daily = [model_report.long_short_returns(p, close) for p in preds]
            curves[entry] = pd.concat(daily, axis=1).mean(axis=1)  # the seeds' portfolios, averaged
    stem = path.with_suffix("")
    ic_png, ls_png = Path(f"{stem}_rank_ic.png"), Path(f"{stem}_long_short.png")
    model_report.plot_rank_ic(table, ic_png)
    model_report.plot_long_short(curves, ls_png)
    cumulative = {e: float((1 + c).prod() - 1) for e, c in curves.items()}
    table["cum_long_short"] = [cumulative.get(e, float("nan")) for e in table["entry"]]
    failed = [r for r in records if r.error]
    lines = [
        "# Model comparison: walk-forward out-of-sample results",
        "",
        f"Command: `{command(cfg)}`  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC; wall time {elapsed / 60:.1f} min  ",
        f"Machine: {machine(device)}  ",
        f"Data: `{cfg.data}`, first {cfg.model_tickers or 'all'} tickers by name; split {cfg.split} "
        f"(initial train, valid, out-of-sample), {cfg.folds} {cfg.walk} walk-forward folds with the horizon "
        f"embargo, a refit and a train-only scaler per fold; at most {cfg.epochs} epochs per fit (presets' "
        f"own epoch counts are capped to it); {cfg.seeds} seeds per trained model, one run for deterministic "
        "baselines (zero forecast, factors).",
        "",
        "## Findings (computed from the runs)",
        "",
        *[f"- {f}" for f in model_report.findings(table, records)],
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
    return {"report": str(path), "table": table, "records": records}
