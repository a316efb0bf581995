"""The model-comparison report (`benchmark -P suite=models`): one table and two plots.

Input: one record per finished run (entry name, kind, seed, run metrics, the per-fold rank ICs
read back from MLflow, the out-of-sample predictions). Everything the report shows is computed
from the runs' own logged numbers, so it says what the MLflow UI says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stocklab.factor_eval import daily_ic, newey_west_se  # noqa: E402


@dataclass
class RunRecord:
    entry: str  # "lstm", "preset seed000-deep", "factor momentum_12_1", ...
    kind: str  # "preset", "model", "baseline"
    seed: int
    run_id: str
    metrics: dict
    fold_rank_ic: list[float] = field(default_factory=list)
    fold_best_epoch: list[float] = field(default_factory=list)
    fold_starts: list = field(default_factory=list)  # first test day of each walk-forward fold
    predictions: pd.DataFrame | None = None  # date, ticker, prediction, label (out of sample)
    error: str = ""


def daily_rank_ic(runs: list[RunRecord]) -> pd.Series:
    """An entry's daily out-of-sample rank IC, averaged over its seeds (by date)."""
    series = [daily_ic(r.predictions)["rank_ic"] for r in runs if r.predictions is not None and len(r.predictions)]
    return pd.concat(series, axis=1).mean(axis=1).dropna() if series else pd.Series(dtype=float)


# the portfolio columns: the concatenated out-of-sample book's (walk-forward) or the test split's
PORTFOLIO = ("ls_sharpe_net", "ls_return_ann_net", "ls_max_drawdown", "ls_turnover", "ls_beta", "ls_alpha_ann",
             "topk_excess_ann_net", "topk_ir", "topk_max_drawdown", "topk_turnover")  # fmt: skip


def summary_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per entry: means over seeds, rank IC mean/std over every (seed, fold), the
    Newey-West standard error of the seed-mean daily rank IC (lags = horizon - 1: the overlap of
    the labels), and its difference from the best classic factor's daily rank IC."""
    rows, daily = [], {}
    for entry in dict.fromkeys(r.entry for r in records):
        runs = [r for r in records if r.entry == entry and not r.error]
        failed = [r for r in records if r.entry == entry and r.error]
        if not runs:
            rows.append({"entry": entry, "kind": failed[0].kind, "runs": f"0/{len(failed)}"})
            continue
        fold_ic = np.array([ic for r in runs for ic in r.fold_rank_ic], dtype=float)
        m = pd.DataFrame([r.metrics for r in runs])
        # MSE columns only for return forecasts: a factor is a score, a classifier's output a
        # buy-minus-sell probability (it logs no valid_mse_min)
        if entry.startswith("factor:") or "valid_mse_min" not in m:
            m = m.drop(columns=["test_mse_skill", "test_mse_skill_mean"], errors="ignore")
        mean = m.mean(numeric_only=True).to_dict().get
        lags = max(int(mean("horizon", 1) or 1) - 1, 0)
        daily[entry] = (daily_rank_ic(runs), lags)
        book = {k: mean(f"oos_{k}", mean(f"test_{k}", np.nan)) for k in PORTFOLIO}

        rows.append(
            {
                "entry": entry,
                "kind": runs[0].kind,
                "runs": f"{len(runs)}/{len(runs) + len(failed)}",
                "rank_ic": float(fold_ic.mean()) if fold_ic.size else float("nan"),
                "rank_ic_std": float(fold_ic.std(ddof=1)) if fold_ic.size > 1 else float("nan"),
                "rank_ic_se": newey_west_se(daily[entry][0], lags),
                "icir": mean("oos_icir", np.nan),
                "t_stat": mean("oos_ic_tstat", np.nan),
                "hit_rate": mean("test_hit_rate", np.nan),
                "q5_q1": mean("test_spread_q5_q1", np.nan),
                "mse_skill": mean("test_mse_skill", np.nan),
                "mse_skill_mean": mean("test_mse_skill_mean", np.nan),
                "valid_rank_ic": mean("valid_rank_ic", np.nan),
                "best_epoch": mean("train_best_epoch", np.nan),
                "train_s": mean("train_time_s", np.nan),
                "params": int(m["n_params"].iloc[0]) if "n_params" in m else None,  # blank: an ensemble
                **book,
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["daily"] = daily  # each entry's daily out-of-sample rank IC and its NW lags
    factors = table[table["entry"].str.startswith("factor:")].dropna(subset=["rank_ic"]) if len(table) else table
    if len(factors):
        best = factors.sort_values("rank_ic", ascending=False)["entry"].iloc[0]
        table.attrs["best_factor"] = best
        _against(table, daily, best, "vs_factor")
    if MOMENTUM in daily:
        _against(table, daily, MOMENTUM, "vs_momentum")
    return table


MOMENTUM = "factor:momentum_12_1"


def paired(daily: dict, a: str, b: str) -> tuple[float, float]:
    """(mean, Newey-West s.e.) of entry a's daily rank IC minus b's on their common days."""
    (x, lx), (y, ly) = daily[a], daily[b]
    diff = (x - y).dropna()
    return (float(diff.mean()), newey_west_se(diff, max(lx, ly))) if len(diff) > 1 else (np.nan, np.nan)


def detectable(table: pd.DataFrame) -> list[str]:
    """The smallest differences this design could have told from noise, per label horizon:
    2 x the Newey-West s.e. of an entry's mean daily rank IC (against zero) and of a paired
    difference between two entries (against the best factor), medians over the entries; a
    markdown table, one row per horizon."""
    if not len(table) or "rank_ic_se" not in table:
        return []
    lines = ["| horizon | entries | MDE against zero | MDE of a paired difference |", "|---:|---:|---:|---:|"]
    horizons = table["horizon"] if "horizon" in table else pd.Series(np.nan, index=table.index)
    for h in sorted(set(horizons.dropna())) or [np.nan]:
        at = table[horizons == h] if np.isfinite(h) else table
        at = at[at["rank_ic_se"].notna()]  # entries that rank (not the zero forecast)
        zero = 2 * np.nanmedian(at["rank_ic_se"]) if at["rank_ic_se"].notna().any() else np.nan
        pair = 2 * np.nanmedian(at["vs_factor_se"]) if "vs_factor_se" in at and at["vs_factor_se"].notna().any() \
            else np.nan  # fmt: skip
        lines.append(f"| {f'{int(h)} days' if np.isfinite(h) else 'all'} | {len(at)} | {zero:.4f} | {pair:.4f} |")
    return lines + [
        "",
        "Minimal detectable difference (MDE): 2 Newey-West s.e. (median over the entries) of an entry's mean daily "
        "rank IC (against zero) and of the paired difference of two entries' daily rank IC. A smaller difference "
        "in the findings below is not evidence either way.",
    ]


def _against(table: pd.DataFrame, daily: dict, ref_entry: str, column: str) -> None:
    """column: mean daily rank IC minus `ref_entry`'s on their common days; column_se: its
    Newey-West standard error (the larger horizon's lags)."""
    table[column], table[f"{column}_se"] = np.nan, np.nan
    ref, ref_lags = daily[ref_entry]
    for i, entry in table["entry"].items():
        if entry == ref_entry or entry not in daily:
            continue
        own, lags = daily[entry]
        diff = (own - ref).dropna()
        if len(diff) > 1:
            table.loc[i, column] = float(diff.mean())
            table.loc[i, f"{column}_se"] = newey_west_se(diff, max(lags, ref_lags))


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, (int, np.integer)) or (digits == 0 and float(v).is_integer()):
        return f"{int(v):,}"
    return f"{v:.{digits}f}"


COLUMNS = [
    ("entry", "model", 0), ("kind", "kind", 0), ("horizon", "h", 0), ("runs", "runs", 0), ("rank_ic", "rank IC", 4),
    ("rank_ic_std", "± std", 4), ("rank_ic_se", "NW s.e.", 4), ("vs_factor", "vs best factor", 4),
    ("vs_factor_se", "± s.e.", 4), ("icir", "ICIR", 2), ("t_stat", "t-stat", 2), ("hit_rate", "hit rate", 3),
    ("q5_q1", "q5-q1", 4), ("mse_skill", "MSE/zero", 3), ("mse_skill_mean", "MSE/mean", 3),
    ("valid_rank_ic", "valid rank IC", 4), ("best_epoch", "best epoch", 1), ("train_s", "train s", 1),
    ("params", "params", 0), ("cum_long_short", "cum. L/S", 3), ("ls_sharpe_net", "net Sharpe", 2),
    ("ls_return_ann_net", "net ann. ret", 3), ("ls_max_drawdown", "max DD", 3), ("ls_turnover", "turnover", 2),
    ("ls_beta", "L/S beta", 2), ("ls_alpha_ann", "L/S alpha", 3), ("topk_excess_ann_net", "topk excess", 3),
    ("topk_ir", "topk IR", 2), ("topk_max_drawdown", "topk DD", 3), ("topk_turnover", "topk turnover", 2),
]  # fmt: skip


def markdown_table(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"
    lines = [head, sep]
    for _, row in table.iterrows():
        cells = [_fmt(row.get(key), digits) if key in row else "-" for key, _, digits in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(table: pd.DataFrame, records: list[RunRecord]) -> list[str]:
    """Statements computed from the runs (what the models learn beyond the mean, early stops)."""
    ok = [r for r in records if not r.error]
    trained = [r for r in ok if _trained(r.entry, r.kind)]
    out = []
    if trained:
        kept = np.array([e for r in trained for e in r.fold_best_epoch], dtype=float)
        caps = np.array([r.metrics.get("epoch_cap", np.nan) for r in trained for _ in r.fold_best_epoch], dtype=float)
        out.append(
            f"Kept epoch (early stopping on validation) over {kept.size} trained fold fits: median "
            f"{np.nanmedian(kept):.0f}, {int(np.sum(kept <= 1))} kept their first epoch, {int(np.sum(kept >= caps))} "
            f"the last one allowed (the cap of {int(np.nanmax(caps))} epochs)."
        )
    t = table.dropna(subset=["rank_ic"]) if "rank_ic" in table else table
    if len(t):
        beat_mean = t[t["mse_skill_mean"] < 1.0]["entry"].tolist()
        out.append(
            "MSE below the training-mean forecast (MSE/mean < 1): "
            + (", ".join(beat_mean) if beat_mean else "none")
            + ". MSE/zero < 1 alone only says the forecast learned the average return of a rising market."
        )
        sig = t[(t["rank_ic"] > 0) & (t["rank_ic"] > 2 * t["rank_ic_se"])]
        out.append(
            "Positive out-of-sample rank IC more than two Newey-West standard errors above zero: "
            + (", ".join(sig["entry"]) if len(sig) else "none")
            + "."
        )
        out += _recipe_findings(t, table.attrs.get("daily", {}))
        flips = t[(t["valid_rank_ic"] > 0) & (t["rank_ic"] < 0)]["entry"].tolist()
        if flips:
            out.append("Positive validation rank IC but negative out-of-sample rank IC: " + ", ".join(flips) + ".")
        best = t.sort_values("rank_ic", ascending=False).iloc[0]
        out.append(f"Highest mean out-of-sample rank IC: {best['entry']} ({best['rank_ic']:.4f}).")
        factor = table.attrs.get("best_factor")
        if factor:
            beat = t[t["vs_factor"] > 2 * t["vs_factor_se"]]["entry"].tolist()
            out.append(
                f"Rank IC above the best classic factor ({factor}) by more than two Newey-West standard errors: "
                + (", ".join(beat) if beat else "none")
                + "."
            )
    return out


def _recipe_findings(t: pd.DataFrame, daily: dict) -> list[str]:
    """raw against cs for every model fitted under both recipes, on validation and out of sample,
    and how many of the out-of-sample differences clear two Newey-West s.e. of the pair."""
    by = t.set_index("entry")
    pairs = [e[: -len(":raw")] for e in by.index if e.endswith(":raw") and e[: -len(":raw")] + ":cs" in by.index]
    if not pairs:
        return []
    oos = [m for m in pairs if by.loc[f"{m}:cs", "rank_ic"] > by.loc[f"{m}:raw", "rank_ic"]]
    valid = [m for m in pairs if by.loc[f"{m}:cs", "valid_rank_ic"] > by.loc[f"{m}:raw", "valid_rank_ic"]]
    gain = np.mean([by.loc[f"{m}:cs", "rank_ic"] - by.loc[f"{m}:raw", "rank_ic"] for m in pairs])
    tested = [(m, *paired(daily, f"{m}:cs", f"{m}:raw")) for m in pairs if f"{m}:cs" in daily and f"{m}:raw" in daily]
    clear = [m for m, d, se in tested if np.isfinite(se) and abs(d) > 2 * se]
    return [
        f"The cross-sectional recipe (cs) has the higher out-of-sample rank IC for {len(oos)} of {len(pairs)} "
        f"models ({', '.join(oos) or 'none'}; mean difference cs - raw {gain:+.4f}) and the higher validation "
        f"rank IC for {len(valid)} of {len(pairs)}; the paired difference clears two Newey-West s.e. for "
        f"{len(clear)} of {len(tested)} ({', '.join(clear) or 'none'})."
    ]


def _trained(entry: str, kind: str) -> bool:
    """A fitted entry (network, preset, linear model, the mean forecast), not a fixed score."""
    return kind in ("model", "preset") or entry.startswith(("linear", "naive:mean"))


def head_to_head(table: pd.DataFrame) -> list[str]:
    """The trained entry with the best *validation* rank IC (and the best deep one, when another),
    with its seed-ensemble, beside the best classic factor and 12-1 momentum, out of sample; then
    one computed sentence: does the chosen entry's paired difference clear the design's minimal
    detectable difference (2 NW s.e.), and does any trained entry beat the best factor."""
    t = table.set_index("entry")
    factor = table.attrs.get("best_factor")
    fitted = t[[_trained(e, k) for e, k in zip(t.index, t["kind"])]].dropna(subset=["valid_rank_ic"])
    if factor is None or not len(fitted):
        return ["(needs a trained entry and a classic factor)"]
    best = fitted["valid_rank_ic"].idxmax()
    deep = fitted[fitted["kind"].isin(["model", "preset"])]
    chosen = [best] + ([deep["valid_rank_ic"].idxmax()] if len(deep) and deep["valid_rank_ic"].idxmax() != best else [])
    rows = [e for c in chosen for e in (c, f"{c} (ensemble)") if e in t.index]
    rows += [e for e in dict.fromkeys((factor, MOMENTUM)) if e in t.index]
    cols = [("rank_ic", "rank IC", 4), ("rank_ic_se", "NW s.e.", 4), ("vs_factor", "vs best factor", 4),
            ("vs_factor_se", "± s.e.", 4), ("ls_sharpe_net", "L/S net Sharpe", 2), ("ls_beta", "L/S beta", 2),
            ("ls_alpha_ann", "L/S alpha", 3), ("topk_excess_ann_net", "topk excess", 3), ("topk_ir", "topk IR", 2),
            ("topk_turnover", "topk turnover", 2), ("valid_rank_ic", "valid rank IC", 4)]  # fmt: skip
    lines = ["| entry | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for e in rows:
        lines.append(f"| {e} | " + " | ".join(_fmt(t.loc[e].get(k), d) for k, _, d in cols) + " |")
    trained = t[[_trained(e, k) or k == "ensemble" for e, k in zip(t.index, t["kind"])]]
    beat = trained[trained["vs_factor"] > 2 * trained["vs_factor_se"]].index.tolist()
    d, se = t.loc[best, "vs_factor"], t.loc[best, "vs_factor_se"]
    # the sign says which side won: at 5 days the one difference that cleared it was against the model
    verdict = f"clears, {'above' if d > 0 else 'below'} {factor}," if abs(d) > 2 * se else "does not clear"
    intro = (
        f"{best} is the trained entry with the highest validation rank IC"
        + (f" ({chosen[1]} the deep one)" if len(chosen) > 1 else "")
        + f"; chosen on validation, reported out of sample, against the best classic factor out of sample "
        f"({factor}: the strictest yardstick, picked on the test days) and 12-1 momentum. vs best factor: the "
        "mean daily rank IC difference on common days ± its Newey-West s.e."
    )
    sentence = (
        f"The chosen entry's difference to {factor}, {d:+.4f} ± {se:.4f}, {verdict} the minimal detectable "
        f"difference of this design ({2 * se:.4f}); trained entries above {factor} by more than two Newey-West "
        "standard errors: " + (", ".join(beat) if beat else "none") + "."
    )
    return [intro, "", *lines, "", sentence]


def plot_rank_ic(table: pd.DataFrame, path: Path) -> None:
    """Mean out-of-sample rank IC per model with ± one standard deviation over seeds x folds."""
    t = table.dropna(subset=["rank_ic"]).sort_values("rank_ic")
    colors = {"preset": "tab:purple", "model": "tab:blue", "ensemble": "tab:cyan", "baseline": "tab:grey"}
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(t) + 1.5))
    ax.barh(t["entry"], t["rank_ic"], xerr=t["rank_ic_std"].fillna(0), color=[colors[k] for k in t["kind"]],
            capsize=3)  # fmt: skip
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("out-of-sample rank IC (mean ± std over seeds x folds)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_long_short(curves: dict[str, pd.Series], path: Path) -> None:
    """Cumulative net long-short return (portfolio.py's book) of every model out of sample."""
    fig, ax = plt.subplots(figsize=(10, 6))
    cmap = plt.get_cmap("tab20")
    for i, (name, ret) in enumerate(sorted(curves.items(), key=lambda kv: -(1 + kv[1]).prod())):
        style = "--" if name.startswith(("factor", "naive")) else "-"
        ax.plot(ret.index, (1 + ret).cumprod() - 1, style, lw=1.2, color=cmap(i % 20), label=name)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("cumulative long-short return, net of costs (top - bottom fifth)")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
