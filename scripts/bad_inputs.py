"""Hostile inputs, scripted: every case runs the real CLI and is judged on what a user sees.

    python scripts/bad_inputs.py            # prints a Markdown table and a summary line

Each case runs `python -m stocklab.cli ...` in a fresh folder with its own SQLite tracking
store, on small synthetic bars written in the dirty form the case needs. A case passes when
its exit status is what it should be (non-zero for an error, 0 for dirt that is cleaned and
counted), no Python traceback is printed, and no MLflow run is left RUNNING. Exit status 1 if
any case fails.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

FAST = ["--epochs", "1", "--seq_len", "5", "--horizon", "1", "--cache_dir", "", "--tear_sheet", "false"]


def bars(n_tickers: int = 6, n_days: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-01", periods=n_days)
    out = []
    for i in range(n_tickers):
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n_days)))
        open_ = close * (1 + rng.normal(0, 0.003, n_days))
        high, low = np.maximum(open_, close) * 1.01, np.minimum(open_, close) * 0.99
        vol = rng.integers(10_000, 100_000, n_days)
        out.append(pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "open": open_, "high": high, "low": low,
                                 "close": close, "volume": vol, "Name": f"T{i}"}))  # fmt: skip
    return pd.concat(out, ignore_index=True)


def folder(root: Path, frame: pd.DataFrame, name: str = "csvs") -> Path:
    d = root / name
    d.mkdir(exist_ok=True)
    for t, g in frame.groupby("Name"):
        # the file's name from the ticker when it can be one (its Name column says the real one)
        stem = t if t.isalnum() and len(t) < 50 else f"F{abs(hash(t)) % 10**8}"
        g.to_csv(d / f"{stem}_data.csv", index=False)
    return d


def _data(root: Path, make) -> str:
    return str(make(root))


# each case: (name, expect "error" | "ok", argv builder(root) -> list, env extra)
def cases() -> list[tuple[str, str, object, dict]]:
    def train(make, *extra):
        return lambda root: ["train", "--data", _data(root, make), *FAST, *extra]

    good = lambda r: folder(r, bars())  # noqa: E731

    def mod(fn):  # fn edits the frame in place, or returns a new one
        def make(root):
            frame = bars()
            edited = fn(frame)
            frame = frame if edited is None else edited
            return folder(root, frame)

        return make

    def per_file(fn):  # change one ticker's file text
        def make(root):
            d = folder(root, bars())
            p = d / "T0_data.csv"
            p.write_text(fn(p.read_text()))
            return d

        return make

    def dmy(frame):  # day-first dates
        frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%d/%m/%Y")

    def ambiguous(frame):  # only days <= 12: d/m or m/d cannot be told
        frame = frame[pd.to_datetime(frame["date"]).dt.day <= 12].copy()
        frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%d/%m/%Y")
        return frame

    def huge_volume(frame):
        frame["volume"] = frame["volume"].astype(float)
        frame.loc[5, "volume"] = 1e30

    def far_dates(frame):
        frame.loc[frame.index[:3], "date"] = "2300-01-01"

    def offsets(frame):
        d = pd.to_datetime(frame["date"])
        frame["date"] = [f"{x:%Y-%m-%d} 00:00:00{'-05:00' if x.month in (1, 2, 11, 12) else '-04:00'}" for x in d]

    def high_low(frame):
        frame.loc[frame.index[:4], "high"] = frame.loc[frame.index[:4], "low"] * 0.9

    def neg_volume(frame):
        frame.loc[frame.index[:3], "volume"] = -5

    def all_bad(frame):
        frame["close"] = -1.0

    def intraday(frame):
        frame["date"] = frame["date"] + " 10:30:00"

    def mixed_name(text):
        lines = text.splitlines()
        return "\n".join(lines[:50] + [line.replace(",T0", ",T9") for line in lines[50:]]) + "\n"

    def closes(rewrite):  # rewrite the close field of every row
        def edit(text):
            lines = text.splitlines()
            out = [lines[0]]
            for line in lines[1:]:
                parts = line.split(",")
                parts[4] = rewrite(parts[4])
                out.append(",".join(parts))
            return "\n".join(out) + "\n"

        return edit

    decimal_comma = closes(lambda c: '"' + c.replace(".", ",") + '"')  # "67,7142"
    dollars = closes(lambda c: "$" + c)

    def parquet_int_dates(root):
        frame = bars().rename(columns={"Name": "ticker"})
        frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%Y%m%d").astype(int)
        p = root / "long.parquet"
        frame.to_parquet(p)
        return p

    def truncated_parquet(root):
        p = root / "long.parquet"
        bars().rename(columns={"Name": "ticker"}).to_parquet(p)
        p.write_bytes(p.read_bytes()[:200])
        return p

    def truncated_gzip(root):
        d = folder(root, bars())
        raw = gzip.compress((d / "T0_data.csv").read_bytes())
        (d / "T0_data.csv").unlink()
        (d / "T0_data.csv.gz").write_bytes(raw[: len(raw) // 2])
        return d

    def empty_dir(root):
        (root / "empty").mkdir()
        return root / "empty"

    def drop_col(col):
        return mod(lambda frame: frame.drop(columns=col))

    def dangling(root):
        d = folder(root, bars())
        (d / "GONE_data.csv").symlink_to(root / "nothing.csv")
        return d

    def space(text):
        def build(root):
            p = root / "space.yaml"
            p.write_text(text)
            return str(p)

        return build

    def tune(*extra, space_text=None, data=good):
        def argv(root):
            out = ["tune", "--data", _data(root, data), "--n_trials", "1", "--model", "linear", *FAST,
                   "--storage", str(root / "j.log")]  # fmt: skip
            if space_text:
                out += ["--space", space(space_text)(root)]
            return out + list(extra)

        return argv

    def tune_twice(root):
        first = tune("--study_name", "s", "--metric", "valid_loss")(root)
        subprocess.run([sys.executable, "-m", "stocklab.cli", *first], cwd=root, capture_output=True, env=_env(root))
        return tune("--study_name", "s", "--metric", "valid_rank_ic")(root)

    def two_digit_years(frame):
        frame["date"] = pd.to_datetime(frame["date"]).dt.strftime("%d/%m/%y")

    def half_iso(frame):
        d = pd.to_datetime(frame["date"])
        frame["date"] = [x.strftime("%Y-%m-%d") if i % 120 < 60 else x.strftime("%d/%m/%Y") for i, x in enumerate(d)]

    def renamed(name):  # one ticker under a name that is no file name
        def fn(frame):
            frame.loc[frame["Name"] == "T0", "Name"] = name

        return fn

    def blank_names(text):  # two blank Name cells in a per-ticker file
        lines = text.splitlines()
        for i in (3, 10):
            lines[i] = lines[i].rsplit(",", 1)[0] + ","
        return "\n".join(lines) + "\n"

    def long_blank(root):
        frame = bars()
        frame.loc[[3, 10], "Name"] = None
        frame.to_csv(root / "long.csv", index=False)
        return root / "long.csv"

    def two_tickers(root):
        return folder(root, bars(n_tickers=2))

    def tune_again(*second, first=()):  # a study, then the same study resumed with `second`
        def argv(root):
            base = tune("--study_name", "s", *first)(root)
            subprocess.run([sys.executable, "-m", "stocklab.cli", *base], cwd=root, capture_output=True, env=_env(root))
            later = [a(root) if callable(a) else a for a in second]
            return tune("--study_name", "s", "--n_trials", "2", *later)(root)

        return argv

    def other_data(root):
        return str(folder(root, bars(seed=1), "other"))

    def damaged_journal(damage: bytes):
        def argv(root):
            base = tune("--study_name", "s")(root)
            subprocess.run([sys.executable, "-m", "stocklab.cli", *base], cwd=root, capture_output=True, env=_env(root))
            with open(root / "j.log", "ab") as f:
                f.write(damage)
            return tune("--study_name", "s", "--n_trials", "2")(root)

        return argv

    def predict_folder(root):
        (root / "out").mkdir()
        return ["predict", "--model", "lstm", "--data", _data(root, good), "--output", str(root / "out")]

    return [
        ("dd/mm/yyyy dates in every file", "ok", train(mod(dmy)), {}),
        ("d/m vs m/d cannot be told (every day <= 12)", "error", train(mod(ambiguous)), {}),
        ("decimal commas in a comma-separated file", "error", train(per_file(decimal_comma)), {}),
        ("a $ before the closes", "error", train(per_file(dollars)), {}),
        ("one volume of 1e30", "ok", train(mod(huge_volume)), {}),
        ("a Name column mixing two tickers in one file", "error", train(per_file(mixed_name)), {}),
        ("mixed -05:00/-04:00 offsets", "ok", train(mod(offsets)), {}),
        ("dates after 2262", "error", train(mod(far_dates)), {}),
        ("intraday timestamps", "error", train(mod(intraday)), {}),
        ("high below low in four rows", "ok", train(mod(high_low)), {}),
        ("negative volumes", "ok", train(mod(neg_volume)), {}),
        ("no valid row after cleaning", "error", train(mod(all_bad)), {}),
        ("missing close column", "error", train(drop_col("close")), {}),
        ("missing date column", "error", train(drop_col("date")), {}),
        ("Parquet dates as int yyyymmdd", "ok", train(parquet_int_dates), {}),
        ("a truncated Parquet file", "error", train(truncated_parquet), {}),
        ("a truncated gzip CSV", "error", train(truncated_gzip), {}),
        ("an empty folder", "error", train(empty_dir), {}),
        ("a dangling symlink among the files", "ok", train(dangling), {}),
        ("a path that does not exist", "error", lambda r: ["train", "--data", str(r / "nope"), *FAST], {}),
        ("--split nan,nan,nan", "error", train(good, "--split", "nan,nan,nan"), {}),
        ("--split 0.6,0.4,nan", "error", train(good, "--split", "0.6,0.4,nan"), {}),
        ("--seed -1", "error", train(good, "--seed", "-1"), {}),
        ("--seed 2**32", "error", train(good, "--seed", str(2**32)), {}),
        ("--label_scale inf", "error", train(good, "--label_scale", "inf"), {}),
        ("--weight_decay inf", "error", train(good, "--weight_decay", "inf"), {}),
        ("--lr abc", "error", train(good, "--lr", "abc"), {}),
        ("--seq_len 0", "error", lambda r: ["train", "--data", _data(r, good), "--seq_len", "0"], {}),
        ("--dropout 1.5", "error", train(good, "--dropout", "1.5"), {}),
        ("--model nosuch", "error", train(good, "--model", "nosuch"), {}),
        ("cnn1d --kernel 100 with seq_len 5", "error", train(good, "--model", "cnn1d", "--kernel", "100"), {}),
        ("--cache_dir /dev/null", "error", lambda r: ["train", "--data", _data(r, good), "--cache_dir", "/dev/null"],
         {}),  # fmt: skip
        ("--epochs 0", "error", train(good, "--epochs", "0"), {}),
        ("--bogus 1", "error", train(good, "--bogus", "1"), {}),
        ("--features ohlcv on close-only data", "error", lambda r: ["train", "--data", "sample", "--features", "ohlcv"],
         {}),  # fmt: skip
        ("lgbm with --loss ic", "error", train(good, "--model", "lgbm", "--loss", "ic", "--batching", "daily"), {}),
        ("naive --mode mean (a parameter that prefixes --model)", "ok", train(good, "--model", "naive", "--mode",
                                                                               "mean"), {}),  # fmt: skip
        ("tune --timeout nan", "error", tune("--timeout", "nan"), {}),
        ("tune --seed -1", "error", tune("--seed", "-1"), {}),
        ("tune: a space with log: true and low: 0", "error", tune(space_text=LOG_ZERO), {}),
        ("tune: every trial fails", "error", tune(space_text="alpha: {type: float, low: -2, high: -1}\n"), {}),
        ("tune: resume with another metric", "error", tune_twice, {}),
        ("predict --output onto a folder", "error", predict_folder, {}),
        ("predict with no champion registered", "error",
         lambda r: ["predict", "--model", "lstm", "--data", _data(r, good), "--output", str(r / "p.csv")], {}),
        ("evaluate --run_id nosuch", "error", lambda r: ["evaluate", "--run_id", "nosuch"], {}),
        ("promote with no registered version", "error", lambda r: ["promote", "--model", "gru"], {}),
        ("a tracking server that does not answer", "error", train(good),
         {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9/?password=hunter2"}),
        # the fourth round (issue 46)
        ("dd/mm/yy dates (two-digit years)", "error", train(mod(two_digit_years)), {}),
        ("one file half ISO, half dd/mm/yyyy", "error", train(mod(half_iso)), {}),
        ("--quantiles 1000 on 6 tickers", "error", train(good, "--quantiles", "1000"), {}),
        ("tune: resume with another --model", "error", tune_again("--model", "rnn"), {}),
        ("tune: resume on other --data", "error", tune_again("--data", other_data), {}),
        ("tune: int bounds 0.5..4.5", "error", tune(space_text="seq_len: {type: int, low: 0.5, high: 4.5}\n"), {}),
        ("a ticker named ../ZZESC", "ok", train(mod(renamed("../ZZESC"))), {}),
        ("a ticker named a/ZZSLASH", "ok", train(mod(renamed("a/ZZSLASH"))), {}),
        ("a ticker name of 300 characters", "ok", train(mod(renamed("Z" * 300))), {}),
        ("a ticker named X$^$", "ok", train(mod(renamed("X$^$"))), {}),
        ("blank Name cells in a per-ticker file", "ok", train(per_file(blank_names)), {}),
        ("blank Name cells in a long-format file", "error", train(long_blank), {}),
        ("lgbm --num_leaves 1", "error", train(good, "--model", "lgbm", "--num_leaves", "1"), {}),
        ("benchmark --batch_size 0", "error", lambda r: ["benchmark", "--data", "sample", "--batch_size", "0"], {}),
        ("benchmark --seq_len 0", "error", lambda r: ["benchmark", "--data", "sample", "--seq_len", "0"], {}),
        ("benchmark --train_steps 0", "error", lambda r: ["benchmark", "--data", "sample", "--train_steps", "0"], {}),
        ("benchmark --output onto a folder", "error", lambda r: ["benchmark", "--data", "sample", "--output", str(r)],
         {}),
        ("predict --eval_batch_size 0", "error",
         lambda r: ["predict", "--data", _data(r, good), "--eval_batch_size", "0", "--output", str(r / "p.csv")], {}),
        ("evaluate --eval_batch_size -1", "error", lambda r: ["evaluate", "--run_id", "x", "--eval_batch_size", "-1"],
         {}),
        ("an Optuna journal with a garbage line appended", "ok", damaged_journal(b"garbage\n"), {}),
        ("an Optuna journal whose last line is cut off", "ok", damaged_journal(b'{"op_code": 5, "worker'), {}),
        ("label=cs_rank (the default) on 2 tickers", "error", train(two_tickers), {}),
        ("--label_scale 1e30", "error", train(good, "--label_scale", "1e30"), {}),
        ("promote --model \"lstm' OR name LIKE '%\"", "error",
         lambda r: ["promote", "--model", "lstm' OR name LIKE '%"], {}),
        ("a SQLite store in a folder that does not exist", "error", train(good),
         {"MLFLOW_TRACKING_URI": "sqlite:////nonexistent/folder/mlflow.db"}),
        ("a PostgreSQL store that is down", "error", train(good),
         {"MLFLOW_TRACKING_URI": "postgresql://u:hunter2@127.0.0.1:9/db"}),
    ]  # fmt: skip


LOG_ZERO = "alpha: {type: float, low: 0, high: 1, log: true}\n"


def _env(root: Path, extra: dict | None = None) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    return {**env, **(extra or {})}


def running_runs(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def main() -> int:
    """`python scripts/bad_inputs.py [FIRST[:LAST]]`: every case, or cases FIRST..LAST (1-based)."""
    rows, failures = [], 0
    base = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    first, _, last = (sys.argv[1] if len(sys.argv) > 1 else "1:").partition(":")
    chosen = range(int(first) - 1, int(last) if last else len(cases()))
    for i, (name, expect, argv_of, extra) in enumerate(cases()):
        if i not in chosen:
            continue
        root = base / f"case{i:02d}"
        root.mkdir()
        argv = argv_of(root)
        r = subprocess.run([sys.executable, "-m", "stocklab.cli", *argv], cwd=root, capture_output=True, text=True,
                           env=_env(root, extra), timeout=600)  # fmt: skip
        text = r.stdout + r.stderr
        traceback = "Traceback" in text
        stuck = running_runs(root / "mlflow.db")
        errors = [line for line in r.stderr.splitlines() if line.startswith("stocklab: error:")]
        warnings = [line for line in r.stderr.splitlines() if line.startswith("stocklab: warning:")]
        ok = (r.returncode != 0) == (expect == "error") and not traceback and not stuck
        ok = ok and (expect != "error" or len(errors) == 1) and "hunter2" not in text
        failures += not ok
        said = (errors or warnings or [""])[0].replace("|", "\\|")[:220]
        rows.append(f"| {i + 1} | {name} | {expect} | {r.returncode} | {'yes' if traceback else 'no'} | {stuck} | "
                    f"{'pass' if ok else '**FAIL**'} | {said} |")  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)  # progress: the table comes again at the end
    print("| # | case | expected | exit | traceback | runs left RUNNING | verdict | what the user reads |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(json.dumps({"cases": len(rows), "failures": failures}))
    shutil.rmtree(base, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
