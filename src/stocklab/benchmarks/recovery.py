"""The recovery suite of the `benchmark` job: can a model find a signal known to be there?

A synthetic market shaped like the real data (a few hundred tickers, five years of daily OHLCV)
carries a planted cross-sectional signal of known strength, and every catalogue model (and the
linear baseline) is trained on it twice: with the raw recipe (the model's defaults: raw-return
MSE on shuffled windows) and with the cross-sectional recipe (config.RECIPES). The report
lists each fit's out-of-sample rank IC as a fraction of the oracle's (the planted score's own
rank IC on the same test windows): its recovery ratio.

    mlflow run . -e benchmark --env-manager local -P suite=recovery
    stocklab benchmark --suite recovery --tickers 100 --days 800 --epochs 2    # smaller, faster

The market (`planted_market`): daily log returns r[i, t] = beta_i m_t + a g[i, t-1] + s_i e[i, t]
with a common market factor m (2% a day: it dominates raw-return variance, ~70%), betas in
[0.5, 1.5], ticker volatilities s_i around 1.2% and standard normal noise e. The planted score
g[i, t] = tanh(z) tanh(2 log(v / median v)) is a non-linear function of the ticker's own last
20 returns: z is their trend's t-statistic and v their volatility (so trends continue in
volatile names and revert in quiet ones). It is known at day t's close and lifts the next
day's return; at the default strength its rank IC with the 20-day forward return is ~0.10.

`-P market=group` (`group_market`) is the test of the cross-stock model: hidden groups of 10
tickers share a factor and its volume shocks, and the planted score is the group's 20-day
trend; a per-ticker model sees it only through its own noisy path, a model that finds its peers
by what moved with it and pools them can do better (reports/recovery_group.md).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from stocklab.benchmarks.models import command, machine  # noqa: E402
from stocklab.config import CACHE_DIR, StockLabError, TrainConfig, with_values  # noqa: E402
from stocklab.errors import describe  # noqa: E402
from stocklab.models import BASELINES, MODELS, recipe_values  # noqa: E402
from stocklab.pipeline.fitting import train_in_run  # noqa: E402
from stocklab.pipeline.scoring import rank_ic_of  # noqa: E402
from stocklab.sections import RecoverySuite  # noqa: E402
from stocklab.tracking import job_run, log_params_once  # noqa: E402
from stocklab.training import configure_cpu_threads, resolve_device  # noqa: E402

LOOKBACK = 20  # days behind the planted score
STRENGTH = 0.0018  # a: the score's lift of the next day's log return (oracle rank IC ~0.10 at h=20)


@dataclass
class Planted:
    bars: pd.DataFrame  # long OHLCV bars: date, ticker, open, high, low, close, volume
    oracle: pd.DataFrame  # date, ticker, score: the planted score known at that day's close


def planted_market(tickers: int, days: int, seed: int = 0, strength: float = STRENGTH) -> Planted:
    """The synthetic market (module docstring); the same arguments give the same bars."""
    rng = np.random.default_rng(seed)
    n, d = tickers, days
    beta = rng.uniform(0.5, 1.5, n)
    sigma = 0.012 * np.exp(rng.normal(0.0, 0.3, n))
    market = rng.normal(0.0003, 0.02, d)
    noise = rng.standard_normal((n, d))
    r = np.zeros((n, d))  # daily log returns
    g = np.zeros((n, d))  # the planted score at each day's close
    r[:, :LOOKBACK] = beta[:, None] * market[:LOOKBACK] + sigma[:, None] * noise[:, :LOOKBACK]
    for t in range(LOOKBACK, d):
        past = r[:, t - LOOKBACK : t]  # (n, 20): the last 20 returns up to day t-1's close
        vol = past.std(axis=1) + 1e-12
        z = past.sum(axis=1) / (vol * np.sqrt(LOOKBACK))
        g[:, t - 1] = np.tanh(z) * np.tanh(2.0 * np.log(vol / np.median(vol)))
        r[:, t] = beta * market[t] + strength * g[:, t - 1] + sigma * noise[:, t]
    close = 50.0 * np.exp(rng.normal(0.0, 0.5, n))[:, None] * np.exp(np.cumsum(r, axis=1))  # (n, d)
    prev = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    open_ = prev * np.exp(rng.normal(0.0, 0.003, (n, d)))
    span = np.abs(rng.normal(0.0, 0.006, (n, d)))
    high = np.maximum(open_, close) * np.exp(span)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.006, (n, d))))
    volume = np.round(1e6 * np.exp(rng.normal(0.0, 0.4, (n, 1)) + rng.normal(0.0, 0.3, (n, d)) + 20 * np.abs(r)))
    dates = pd.bdate_range("2013-01-02", periods=d)
    names = [f"S{i:03d}" for i in range(n)]
    index = pd.MultiIndex.from_product([names, dates], names=["ticker", "date"])
    bars = pd.DataFrame(
        {"open": open_.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
         "volume": volume.ravel()},
        index=index,
    ).reset_index()  # fmt: skip
    oracle = pd.DataFrame({"score": g.ravel()}, index=index).reset_index()
    return Planted(bars, oracle)


GROUP_SIZE = 10  # tickers per hidden group of the group market


def group_market(
    tickers: int, days: int, seed: int = 0, strength: float = STRENGTH, noise: float = 2.0, volume_shock: float = 0.5
) -> Planted:
    """A market a per-ticker model can only half see: hidden groups of GROUP_SIZE tickers share
    a group factor, and the planted score is the group's 20-day trend (the sum of its factor's
    last 20 returns, squashed), lifting every member's next-day return. A ticker's own window
    shows that trend only through its own idiosyncratic noise (`noise` x the factor's volatility:
    twice as large by default, so its own 20-day return has a correlation of ~0.45 with the
    trend). Who the peers are shows in trading activity: a group's news days lift every
    member's volume (`volume_shock`, the sd of the group's daily log-volume shock, against 0.3
    of its own), which carries no return signal. A model that finds the peers whose volume moves
    with its own can average their noise away (~0.8 with the group known exactly)."""
    rng = np.random.default_rng(seed)
    n, d = tickers, days
    group = np.arange(n) % max(1, n // GROUP_SIZE)  # (n,) hidden membership
    factor = rng.normal(0.0, 0.01, (group.max() + 1, d))  # (G, d) group factors
    beta = rng.uniform(0.5, 1.5, n)
    market = rng.normal(0.0003, 0.01, d)
    trend = np.zeros_like(factor)  # (G, d): the planted score at each day's close
    for t in range(LOOKBACK, d):
        trend[:, t - 1] = np.tanh(factor[:, t - LOOKBACK : t].sum(axis=1) / (0.01 * np.sqrt(LOOKBACK)))
    lift = np.concatenate([np.zeros((n, 1)), trend[group, :-1]], axis=1)  # day t's return gets t-1's score
    idio = noise * 0.01 * rng.standard_normal((n, d))  # (n, d): `noise` x the group factor's volatility
    r = beta[:, None] * market + factor[group] + idio + strength * lift
    close = 50.0 * np.exp(rng.normal(0.0, 0.5, n))[:, None] * np.exp(np.cumsum(r, axis=1))  # (n, d)
    prev = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    open_ = prev * np.exp(rng.normal(0.0, 0.003, (n, d)))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.006, (n, d))))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.006, (n, d))))
    news = rng.normal(0.0, volume_shock, (group.max() + 1, d))  # (G, d): a group's log-volume shocks
    volume = np.round(1e6 * np.exp(rng.normal(0.0, 0.4, (n, 1)) + news[group] + rng.normal(0.0, 0.3, (n, d))))
    dates = pd.bdate_range("2013-01-02", periods=d)
    index = pd.MultiIndex.from_product([[f"S{i:03d}" for i in range(n)], dates], names=["ticker", "date"])
    bars = pd.DataFrame(
        {"open": open_.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
         "volume": volume.ravel()},
        index=index,
    ).reset_index()  # fmt: skip
    return Planted(bars, pd.DataFrame({"score": trend[group].ravel()}, index=index).reset_index())


GROUP_STRENGTH = 0.003  # the group market's lift of the next day's return per unit of the group score
# the recovery suite's planted markets (BenchmarkConfig.market): (builder, strength, description)
MARKETS = {
    "single": (planted_market, STRENGTH,
               "a common market factor (~70% of raw-return variance), ticker betas and volatilities, and a planted "
               "score (20-day trend t-statistic x relative volatility, non-linear) lifting the next day's return"),
    "group": (group_market, GROUP_STRENGTH,
              f"hidden groups of {GROUP_SIZE} tickers sharing a group factor and the group's volume shocks, a market "
              "factor, idiosyncratic noise twice the group factor's, and a planted score, the group's 20-day "
              "trend, lifting every member's next-day return: a ticker's own window shows it only through its "
              "own noise, its peers are the tickers whose volume moves with its own"),
}  # fmt: skip


def recipes(model: str) -> dict[str, dict]:
    """The two recipes every model is trained with (config.RECIPES)."""
    return {name: recipe_values(model, name) for name in ("raw", "cs")}


def catalogue() -> list[str]:
    """Every trainable catalogue model, then the linear and LightGBM baselines."""
    return [m for m in MODELS if m not in BASELINES] + ["linear", "lgbm"]


def agreement(oracle: pd.DataFrame, test: pd.DataFrame) -> float:
    """The mean daily rank correlation of a fit's test predictions with the planted score (1 =
    the signal learned exactly; unlike the rank IC it carries no market noise)."""
    frame = test[["date", "ticker", "prediction"]].merge(oracle, on=["date", "ticker"], how="inner")
    return rank_ic_of(frame.rename(columns={"score": "label"}))


def run_recovery_suite(cfg: RecoverySuite) -> dict:
    """Build the planted market, fit every (model, recipe, seed) as a nested MLflow run under
    one `benchmark recovery` run, and write the recovery report and its plot."""
    models = [m.strip() for m in cfg.models.split(",") if m.strip()] or catalogue()
    unknown = [m for m in models if m not in catalogue()]
    if unknown:
        choices = ", ".join(catalogue())
        raise StockLabError(f"models: unknown model {unknown[0]!r} for the recovery suite (choose from {choices})")
    configure_cpu_threads()
    device = resolve_device(cfg.device)
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    build, strength, _ = MARKETS[cfg.market]
    market = build(cfg.tickers, cfg.days, strength=strength)
    folder = Path(CACHE_DIR) / "recovery"
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"planted-{cfg.market}-{cfg.tickers}x{cfg.days}.parquet"
    market.bars.to_parquet(data)  # the runs read it as any data file (and log it as their dataset)
    # no tear sheets: a synthetic market's say nothing the recovery ratio does not
    base = TrainConfig(data=str(data), device=cfg.device, epochs=cfg.epochs, patience=cfg.patience, tear_sheet=False,
                       cache_dir="")  # fmt: skip
    jobs = [(m, name, values, seed) for m in models for name, values in recipes(m).items() for seed in range(cfg.seeds)]
    rows, oracle_ic = [], float("nan")
    experiment = cfg.experiment or "stocklab-benchmark-recovery"
    with job_run(experiment, bool(cfg.experiment), run_name="benchmark recovery") as parent:
        log_params_once({f"benchmark_{k}": v for k, v in vars(cfg).items() if k not in ("output",)})
        for model, recipe, values, seed in tqdm(jobs, desc="benchmark recovery", unit="fit"):
            tcfg = with_values(base, {"model": model, **values, "seed": seed})
            tags = {"stocklab.benchmark_entry": model, "stocklab.recipe": recipe, "stocklab.role": "benchmark"}
            name = f"{model} {recipe} s{seed}"
            run = mlflow.start_run(nested=True, run_name=name, tags=tags, experiment_id=parent.info.experiment_id)
            try:
                res = train_in_run(tcfg)
            except Exception as e:  # noqa: BLE001 - one failing model must not lose the others
                mlflow.set_tag("stocklab.error", describe(e))
                mlflow.end_run("FAILED")
                rows.append({"model": model, "recipe": recipe, "seed": seed, "error": describe(e)})
                print(f"{model} {recipe} seed {seed} failed: {describe(e)}")
                continue
            local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions.parquet")
            # the oracle on this fit's own test windows (a model's window length decides which exist)
            oracle = oracle_rank_ic(market.oracle, pd.read_parquet(local, columns=["date", "ticker", "label"]))
            oracle_ic = oracle if not np.isfinite(oracle_ic) else oracle_ic  # the report's: the first fit's
            test = pd.read_parquet(local)
            ratio, agree = res["test_rank_ic"] / oracle, agreement(market.oracle, test)
            mlflow.log_metrics({"test_oracle_rank_ic": oracle, "test_recovery_ratio": ratio, "test_agreement": agree})
            mlflow.end_run("FINISHED")
            rows.append({"model": model, "recipe": recipe, "seed": seed, "rank_ic": res["test_rank_ic"],
                         "valid_rank_ic": res["valid_rank_ic"], "recovery": ratio, "agreement": agree,
                         "train_s": res["train_time_s"], "epochs": res["train_epochs_run"]})  # fmt: skip
        elapsed = time.perf_counter() - t0
        out = write_recovery_report(cfg, pd.DataFrame(rows), oracle_ic, device, started, elapsed)
        for path in (out["report"], Path(out["report"]).with_suffix(".png")):  # the report, not its folder
            mlflow.log_artifact(str(path), "report")
        mlflow.log_metrics({"wall_time_s": elapsed, "test_oracle_rank_ic": oracle_ic})
    return out


def oracle_rank_ic(oracle: pd.DataFrame, test: pd.DataFrame) -> float:
    """The planted score's mean daily rank IC on the test windows of a fit (their raw labels)."""
    frame = test[["date", "ticker", "label"]].merge(oracle, on=["date", "ticker"], how="left")
    return rank_ic_of(frame.rename(columns={"score": "prediction"}))


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per model: rank IC mean (and std over seeds) and recovery ratio per recipe."""
    ok = runs.dropna(subset=["rank_ic"]) if "rank_ic" in runs else runs.iloc[:0]
    table = ok.groupby(["model", "recipe"], sort=False).agg(
        rank_ic=("rank_ic", "mean"), rank_ic_std=("rank_ic", "std"), recovery=("recovery", "mean"),
        agreement=("agreement", "mean"),
        valid_rank_ic=("valid_rank_ic", "mean"), train_s=("train_s", "mean"), epochs=("epochs", "mean"),
    )  # fmt: skip
    return table.unstack("recipe")


def write_recovery_report(cfg: RecoverySuite, runs: pd.DataFrame, oracle_ic: float, device, started,
                          elapsed: float) -> dict:  # fmt: skip
    """reports/recovery.md and recovery.png (recovery ratio per model and recipe)."""
    path = Path(cfg.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = summary(runs)

    lines = _results_table(table, cfg.seeds, oracle_ic)
    png = path.with_suffix(".png")
    _plot(table, png)
    failed = runs[runs["error"].notna()] if "error" in runs else runs.iloc[:0]
    findings = _findings(table)
    text = [
        f"# Recovery of a planted cross-sectional signal ({cfg.market} market)",
        "",
        f"Command: `{command(cfg)}`  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC; wall time {elapsed / 60:.1f} min  ",
        f"Machine: {machine(device)}  ",
        f"Market: `{cfg.market}`, {cfg.tickers} synthetic tickers x {cfg.days} trading days of OHLCV "
        f"(benchmarks/recovery.py): {MARKETS[cfg.market][2]}. "
        f"Each model at its defaults (horizon 20, seq_len 20, default 0.6/0.2/0.2 split with the embargo), early "
        f"stopping with patience {cfg.patience} within a cap of {cfg.epochs} epochs, {cfg.seeds} seed(s). "
        "raw = recipe=raw, the source studies' (raw-return loss, shuffled windows, kept epoch by validation "
        "loss, features by the data); cs = recipe=cs, the default (label=cs_rank, batching=daily, "
        "select=rank_ic, features=relative; cnn_ta keeps its indicator image).",
        "",
        "Recovery = the fit's test rank IC / the oracle's rank IC on the same test windows "
        f"(oracle: {oracle_ic:+.4f}). Agreement = the mean daily rank correlation of the test predictions "
        "with the planted score itself (1 = learned exactly; no market noise).",
        "",
        "## Findings (computed from the runs)",
        "",
        *[f"- {f}" for f in findings],
        "",
        "## Results",
        "",
        *lines,
        "",
        f"![recovery ratio per model and recipe]({png.name})",
    ]
    if len(failed):
        text += ["", "## Failed runs", ""]
        text += [f"- {r.model} {r.recipe} seed {r.seed}: {r.error}" for r in failed.itertuples()]
    path.write_text("\n".join(text) + "\n")
    print(f"wrote {path}, {png}")
    return {"report": str(path), "table": table, "runs": runs, "oracle_rank_ic": oracle_ic}


def _results_table(table: pd.DataFrame, seeds: int, oracle_ic: float) -> list[str]:
    """The report's results table: one row per model, both recipes side by side."""

    def cell(model: str, what: str, recipe: str, fmt: str) -> str:
        try:
            value = table.loc[model, (what, recipe)]
        except KeyError:
            return "failed"
        return "-" if not np.isfinite(value) else format(value, fmt)

    header = ("| model | raw rank IC | raw recovery | raw agreement | cs rank IC | cs recovery | cs agreement "
              "| raw valid rank IC | cs valid rank IC | raw / cs epochs | raw / cs train s |")  # fmt: skip
    lines = [header, "|" + "---|" * 11]
    for model in table.index:
        ic = {r: f"{cell(model, 'rank_ic', r, '+.4f')} ± {cell(model, 'rank_ic_std', r, '.4f')}" for r in ("raw", "cs")}
        if seeds == 1:
            ic = {r: cell(model, "rank_ic", r, "+.4f") for r in ("raw", "cs")}
        lines.append(
            f"| {model} | {ic['raw']} | {cell(model, 'recovery', 'raw', '.2f')} | "
            f"{cell(model, 'agreement', 'raw', '.2f')} | {ic['cs']} | {cell(model, 'recovery', 'cs', '.2f')} | "
            f"{cell(model, 'agreement', 'cs', '.2f')} | {cell(model, 'valid_rank_ic', 'raw', '+.4f')} | "
            f"{cell(model, 'valid_rank_ic', 'cs', '+.4f')} | {cell(model, 'epochs', 'raw', '.1f')} / "
            f"{cell(model, 'epochs', 'cs', '.1f')} | {cell(model, 'train_s', 'raw', '.0f')} / "
            f"{cell(model, 'train_s', 'cs', '.0f')} |"
        )
    lines.append(
        f"| oracle (the planted score) | {oracle_ic:+.4f} | 1.00 | 1.00 | {oracle_ic:+.4f} | 1.00 | 1.00 | | | | |"
    )
    return lines


def _findings(table: pd.DataFrame) -> list[str]:
    if table.empty or ("recovery", "cs") not in table or ("recovery", "raw") not in table:
        return ["no model finished under both recipes"]
    rec = table["recovery"][["raw", "cs"]].dropna()
    wins = rec[rec["cs"] > rec["raw"]].index.tolist()
    best = rec.max(axis=1).idxmax()
    return [
        f"the cross-sectional recipe recovers more of the signal for {len(wins)} of {len(rec)} models"
        + (f" ({', '.join(wins)})" if wins else ""),
        f"mean recovery: raw {rec['raw'].mean():.2f}, cs {rec['cs'].mean():.2f}",
        f"best recovery: {best} ({rec.loc[best].max():.2f}, {rec.loc[best].idxmax()} recipe)",
    ]


def _plot(table: pd.DataFrame, png: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(table), 4) + 1.2))
    y = np.arange(len(table))
    for k, (recipe, color) in enumerate((("raw", "tab:gray"), ("cs", "tab:blue"))):
        if ("recovery", recipe) in table:
            ax.barh(y + (k - 0.5) * 0.4, table[("recovery", recipe)].to_numpy(float), height=0.4, color=color,
                    label=f"{recipe} recipe")  # fmt: skip
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.axvline(0.0, color="k", lw=0.5)
    ax.set_yticks(y, table.index)
    ax.invert_yaxis()
    ax.set_xlabel("recovery ratio: test rank IC / the oracle's (1 = the planted signal found in full)")
    ax.legend(loc="lower right")
    ax.set_title("Recovery of a planted cross-sectional signal")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
