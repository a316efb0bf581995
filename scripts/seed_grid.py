"""Train a few configurations over several seeds with the `train` job and tabulate them: the
validation and test rank IC (mean +- std over seeds), the Newey-West s.e. of the test mean, time
per epoch and parameters. Each configuration is one `stocklab train` run per seed in the
experiment `stocklab-seed-grid` (or --experiment); finished runs are read back when the same
command runs again (a JSON file beside the report), so an interrupted grid resumes.

    python scripts/seed_grid.py --data ../shared/data/sp500_5yr --seeds 0,1,2 \
        --common "epochs=4 train_every=5" --report reports/cross.md \
        --entry "cross: model=cross" --entry "lstm: model=lstm" --entry "transformer: model=transformer"

An entry is `name: field=value ...` with any `train` parameter or model hyper-parameter; the
common values go under every entry. Choose on validation: the findings name the entry with the
best validation rank IC, and the test columns are reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
import torch

from stocklab.benchmarks.models import machine
from stocklab.config import TrainConfig, split_params
from stocklab.factor_eval import daily_ic, newey_west_se
from stocklab.fields import convert, field_types
from stocklab.jobs.train import run_train


def parse_entry(text: str, common: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    values = {}
    for token in shlex.split(common) + shlex.split(rest):
        key, eq, value = token.partition("=")
        if not eq:
            sys.exit(f"--entry {text!r}: {token!r} is not field=value")
        values[key.strip()] = value
    return name.strip(), values


def train_one(values: dict, seed: int, data: str, experiment: str) -> dict:
    train, model_args = split_params({**values, "data": data, "seed": seed, "experiment": experiment})
    types = field_types(TrainConfig)
    cfg = TrainConfig(**{k: convert(v, types[k], k) for k, v in train.items()})
    result = run_train(cfg, model_args or None)
    path = mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="predictions.parquet")
    pred = pd.read_parquet(path)
    daily = daily_ic(pred)["rank_ic"].dropna()
    return {
        "seed": seed,
        "run_id": result["run_id"],
        "valid_rank_ic": result["valid_rank_ic"],
        "test_rank_ic": result["test_rank_ic"],
        "test_nw_se": newey_west_se(daily.to_numpy(), cfg.horizon - 1),
        "daily": {str(k.date()): float(v) for k, v in daily.items()},
        "epochs_run": result["train_epochs_run"],
        "s_per_epoch": result["train_time_s"] / max(result["train_epochs_run"], 1),
        "n_params": result["n_params"],
        "horizon": cfg.horizon,
    }


def summarise(name: str, runs: list[dict]) -> dict:
    frame = pd.DataFrame(runs)
    # the seeds' mean forecast quality per day: its NW s.e. is the noise of the reported test mean
    daily = pd.DataFrame([r["daily"] for r in runs]).mean()
    return {
        "entry": name,
        "seeds": len(runs),
        "valid rank IC": f"{frame['valid_rank_ic'].mean():+.4f} ± {frame['valid_rank_ic'].std(ddof=1):.4f}",
        "test rank IC": f"{frame['test_rank_ic'].mean():+.4f} ± {frame['test_rank_ic'].std(ddof=1):.4f}",
        "NW s.e. (test mean)": f"{newey_west_se(daily.to_numpy(), int(frame['horizon'].iloc[0]) - 1):.4f}",
        "epochs run": f"{frame['epochs_run'].mean():.1f}",
        "s / epoch": f"{frame['s_per_epoch'].mean():.1f}",
        "params": f"{int(frame['n_params'].iloc[0]):,}",
        "_valid": frame["valid_rank_ic"].mean(),
    }


def markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--common", default="", help="field=value pairs under every entry")
    p.add_argument("--entry", action="append", required=True, help="'name: field=value ...'")
    p.add_argument("--report", required=True, help="the markdown report (its runs in <report>.json)")
    p.add_argument("--experiment", default="stocklab-seed-grid")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    report = Path(args.report)
    store = report.with_suffix(".json")
    done = json.loads(store.read_text()) if store.exists() else {}
    started = time.perf_counter()
    rows = []
    for text in args.entry:
        name, values = parse_entry(text, args.common)
        runs = []
        for seed in seeds:
            key = json.dumps({"data": args.data, "seed": seed, **values}, sort_keys=True)
            if key not in done:
                print(f"[{datetime.now(UTC):%H:%M:%S}] {name} seed {seed}", flush=True)
                done[key] = train_one(values, seed, args.data, args.experiment)
                store.write_text(json.dumps(done, indent=1))
            runs.append(done[key])
        rows.append(summarise(name, runs))
    table = pd.DataFrame(rows)
    best = table.loc[table["_valid"].idxmax(), "entry"]
    command = "python scripts/seed_grid.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    device = torch.device("cpu")
    lines = [
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; this invocation {(time.perf_counter() - started) / 60:.1f} "
        f"min (runs of an earlier invocation are read back)  ",
        f"Machine: {machine(device)}",
        "",
        markdown(table.drop(columns="_valid")),
        "",
        f"Best on validation (mean over seeds): **{best}**. Test columns are reported, never used to choose.",
        "rank IC: mean daily Spearman IC of the split, mean ± std over seeds. NW s.e.: Newey-West s.e. "
        "(horizon - 1 lags) of the mean of the seeds' average daily test rank IC. s / epoch: training time "
        "over epochs run, mean over seeds.",
    ]
    report.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if report.exists() and "<!-- grid -->" in report.read_text():
        head = report.read_text().split("<!-- grid -->")[0]
        text = head + "<!-- grid -->\n" + text
    report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
