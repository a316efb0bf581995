"""Load daily bars from any supported source, validate them, and cache the clean panel.

Sources (one `data` string, auto-detected):
  * ``sample``                  the 20 real S&P 500 daily closes that ship inside skfolio;
  * a directory of CSV files    one ticker per file (``AAPL_data.csv``, ``AAPL.US_D1.csv``, ...);
  * a CSV or Parquet file       long format with a ticker column.

Cleaning rules (each counted in the data report logged to every run):
  * duplicated (ticker, date) rows: the last one is kept;
  * a missing or non-positive price (open/high/low/close present in the file): row dropped;
  * an infinite value, or one beyond 1e6 x (or below 1e-6 x) the ticker's median: row dropped;
  * ``high < low``: row dropped (which side is wrong cannot be told, so nothing is invented);
  * open or close outside [low, high]: high/low widened to include them (repaired);
  * missing or negative volume: row dropped (zero volume is kept: a real halted day).
A ticker losing more than 5% of its rows is named in a warning with the rules that dropped them.
Errors (one line, naming the file): no files, a missing date/close/ticker column,
unparseable, ambiguous (d/m vs m/d) or out-of-range dates, intraday timestamps, values that are
not numbers (decimal commas, currency signs), a per-ticker file holding several tickers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stocklab import user_columns
from stocklab.config import CACHE_DIR, StockLabError
from stocklab.errors import one_line
from stocklab.text_values import numbers as _numbers
from stocklab.text_values import parse_dates as _parse_dates

PRICE_COLS = ("open", "high", "low", "close")
VALUE_COLS = ("open", "high", "low", "close", "volume", "vwap")
DATE_NAMES = ("date", "datetime", "timestamp", "time")
TICKER_NAMES = ("name", "ticker", "symbol")
CACHE_VERSION = "2"  # bump when cleaning rules change so old caches are not reused


@dataclass(frozen=True)
class ReadOptions:
    """How to read what cannot be detected (TrainConfig's `date_format`, `decimal`, `max_drop`),
    and which of the user's own columns to keep (`extra`)."""

    date_format: str = ""  # strftime format of text dates ("%d/%m/%Y"); "" detects it per file
    decimal: str = "."  # the decimal mark of numbers written as text; "," also drops "." and " " separators
    max_drop: float = 0.05  # warn about a ticker that loses more than this share of its rows
    extra: str = ""  # the user's columns: "pe_ratio,short_interest", "all" (every numeric non-bar column) or ""

    @classmethod
    def of(cls, cfg) -> ReadOptions:
        """The options of a TrainConfig (or any config with these fields; absent ones default)."""
        d = cls()
        return cls(*(getattr(cfg, f, getattr(d, f)) for f in ("date_format", "decimal", "max_drop", "extra")))

    def key(self) -> str:
        """What the cache and fingerprint add for these options ('' for the defaults)."""
        if self == ReadOptions():
            return ""
        return f"{self.date_format}|{self.decimal}|{self.max_drop!r}" + (f"|extra={self.extra}" if self.extra else "")

    def extra_names(self) -> list[str]:
        """The named extra columns ([] for none or for "all")."""
        return [] if self.extra in ("", "all") else [c.strip() for c in self.extra.split(",") if c.strip()]


@dataclass
class DataReport:
    """What was read, what was dropped or repaired and why; logged as data_report.json."""

    source: str
    fingerprint: str = ""
    files: int = 0
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict = field(default_factory=dict)
    repaired: dict = field(default_factory=dict)
    tickers: int = 0
    date_min: str = ""
    date_max: str = ""
    columns: list = field(default_factory=list)
    heavy_losses: dict = field(default_factory=dict)  # ticker -> rule -> rows, tickers losing > max_drop
    extra: list = field(default_factory=list)  # the user's columns kept beside the bars (ReadOptions.extra)
    extra_missing: dict = field(default_factory=dict)  # extra column -> files without it (NaN there)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def ticker_from_filename(path: Path) -> str:
    """`AAPL_data.csv`, `AAPL.US_D1.csv` and `AAPL.csv` all give `AAPL`."""
    stem = path.name
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"_data$", "", stem, flags=re.IGNORECASE)
    stem = re.sub(r"\.[A-Z]{2}_[A-Z]\d+$", "", stem)  # `.US_D1` exchange/timeframe suffix
    return stem


def _normalise(df: pd.DataFrame, where: str, ticker: str | None, options: ReadOptions = ReadOptions()) -> pd.DataFrame:
    """Map columns case-insensitively to date, ticker, open..vwap; parse and check dates."""
    lower = {str(c).strip().lower(): c for c in df.columns}
    date_col = next((lower[n] for n in DATE_NAMES if n in lower), None)
    if date_col is None:
        raise StockLabError(f"{where}: missing date column (expected one of {DATE_NAMES})")
    if "close" not in lower and "adj close" not in lower:
        raise StockLabError(f"{where}: missing required column 'close'")
    out = pd.DataFrame(index=df.index)
    dates = _parse_dates(df[date_col], where, date_col, options.date_format)
    if (dates != dates.dt.normalize()).any():
        example = dates[dates != dates.dt.normalize()].iloc[0]
        raise StockLabError(
            f"{where}: intraday timestamps (e.g. {example}); daily bars are required, resample to one row per day first"
        )
    out["date"] = dates.astype("datetime64[ns]")
    if ticker is None:
        tcol = next((lower[n] for n in TICKER_NAMES if n in lower), None)
        if tcol is None:
            raise StockLabError(f"{where}: missing ticker column (expected one of {TICKER_NAMES})")
        blank = _blank(df[tcol])
        if blank.any():
            raise StockLabError(
                f"{where}: column '{tcol}' is blank in {int(blank.sum())} row(s) (e.g. row {int(blank.argmax()) + 2}); "
                "every row of a long-format table names its ticker"
            )
        out["ticker"] = df[tcol].astype(str).str.strip()
    else:
        # a Name column inside a per-ticker file wins over the file name; it holds one ticker
        tcol = next((lower[n] for n in TICKER_NAMES if n in lower), None)
        names = df[tcol][~_blank(df[tcol])].astype(str).str.strip().unique() if tcol is not None else []
        if len(names) > 1:
            raise StockLabError(
                f"{where}: column '{tcol}' holds {len(names)} tickers ({', '.join(names[:3])}); a per-ticker "
                "file holds one (split it, or pass the file itself as a long-format table)"
            )
        # the file's one ticker on every row, blank cells included (its name, else the file's)
        out["ticker"] = names[0] if len(names) else ticker
    for col in VALUE_COLS:
        src = lower.get(col)
        if col == "close" and src is None:
            src = lower["adj close"]
        if src is not None:
            out[col] = _numbers(df[src], where, src, options.decimal)
    for name, src in user_columns.in_frame(df, lower, options).items():
        out[name] = _numbers(df[src], where, src, options.decimal).astype(np.float64)
    return out[out["date"].notna()]


def _blank(names: pd.Series) -> np.ndarray:
    """Cells of a ticker column that hold no name (missing, or only spaces)."""
    return (names.isna() | (names.astype(str).str.strip() == "")).to_numpy()


def _clean(df: pd.DataFrame, report: DataReport, max_drop: float = 0.05) -> pd.DataFrame:
    """Apply the documented cleaning rules, counting every dropped or repaired row."""
    dropped, repaired = report.dropped, report.repaired
    rows_read = df["ticker"].value_counts()
    lost: dict[str, dict[str, int]] = {}  # ticker -> rule -> rows

    def drop(mask: pd.Series, reason: str) -> pd.DataFrame:
        n = int(mask.sum())
        if n:
            dropped[reason] = dropped.get(reason, 0) + n
            for ticker, k in df.loc[mask, "ticker"].value_counts().items():
                lost.setdefault(ticker, {})[reason] = int(k)
        return df[~mask]

    df = df.sort_values(["ticker", "date"], kind="stable")
    df = drop(df.duplicated(["ticker", "date"], keep="last"), "duplicate_ticker_date")
    prices = [c for c in PRICE_COLS if c in df.columns]
    values = [c for c in VALUE_COLS if c in df.columns]
    df = drop(np.isinf(df[values]).any(axis=1), "infinite_value")
    extra = [c for c in df.columns if c not in ("date", "ticker", *VALUE_COLS)]
    if extra and np.isinf(df[extra]).to_numpy().any():  # a user's column: unknown that day, the row kept
        repaired["extra_infinite_to_nan"] = int(np.isinf(df[extra]).to_numpy().sum())
        df = df.assign(**{c: df[c].where(np.isfinite(df[c])) for c in extra})
    df = drop(df[prices].isna().any(axis=1), "missing_price")
    df = drop((df[prices] <= 0).any(axis=1), "nonpositive_price")
    df = drop(_outliers(df, values), "outlier")
    if "high" in df.columns and "low" in df.columns:
        df = drop(df["high"] < df["low"], "high_below_low")
        body = [c for c in ("open", "close") if c in df.columns]
        hi, lo = df[body].max(axis=1), df[body].min(axis=1)
        fix = (hi > df["high"]) | (lo < df["low"])
        if fix.any():
            repaired["open_close_outside_high_low"] = int(fix.sum())
            df = df.assign(high=np.maximum(df["high"], hi), low=np.minimum(df["low"], lo))
    if "volume" in df.columns:
        df = drop(df["volume"].isna() | (df["volume"] < 0), "bad_volume")
    if "vwap" in df.columns:
        df = drop(df["vwap"].isna() | (df["vwap"] <= 0), "bad_vwap")
    _warn_heavy_losses(lost, rows_read, report, max_drop)
    return df.reset_index(drop=True)


OUTLIER_FACTOR = 1e6  # a value this many times its ticker's median (or below 1/this of it) is a typo


def _outliers(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Rows with a value beyond OUTLIER_FACTOR x the ticker's own median (one volume of 1e30
    would set the scaler of every ticker). Zero volumes are real (a halted day) and kept."""
    median = df.groupby("ticker")[columns].transform("median")
    ratio = df[columns] / median.where(median > 0)
    high = (ratio > OUTLIER_FACTOR).any(axis=1)
    low = (ratio[[c for c in columns if c != "volume"]] < 1 / OUTLIER_FACTOR).any(axis=1)
    return high | low


def _warn_heavy_losses(lost: dict, rows_read: pd.Series, report: DataReport, max_drop: float) -> None:
    """Name the tickers that lost more than `max_drop` of their rows (and by which rules)."""
    heavy = {t: rules for t, rules in lost.items() if sum(rules.values()) > max_drop * rows_read[t]}
    report.heavy_losses = heavy
    for ticker, rules in list(heavy.items())[:3]:
        why = ", ".join(f"{k}: {v}" for k, v in rules.items())
        print(
            f"stocklab: warning: data: ticker '{ticker}' lost {sum(rules.values())} of {rows_read[ticker]} rows "
            f"in cleaning ({why}); see data_report.json",
            file=sys.stderr,
        )
    if len(heavy) > 3:
        print(
            f"stocklab: warning: data: {len(heavy) - 3} more ticker(s) lost > {max_drop:.0%} of their rows",
            file=sys.stderr,
        )


def _files_fingerprint(paths: list[Path], options: ReadOptions = ReadOptions()) -> str:
    h = hashlib.sha256((CACHE_VERSION + options.key()).encode())
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - truncated gzip (EOFError), corrupt Parquet (ArrowInvalid), ...
        raise StockLabError(f"{path}: cannot be read as a table ({one_line(e)})") from None


def _load_sample() -> tuple[pd.DataFrame, str]:
    import skfolio
    from skfolio.datasets import load_sp500_dataset

    wide = load_sp500_dataset()  # (dates, 20 tickers) of adjusted closes, shipped in the wheel
    long = wide.rename_axis("date").reset_index().melt("date", var_name="ticker", value_name="close")
    long["date"] = pd.to_datetime(long["date"]).astype("datetime64[ns]")
    long = long.dropna(subset=["close"])
    return long, hashlib.sha256(f"skfolio-sp500-{skfolio.__version__}".encode()).hexdigest()


def load_panel(
    data: str, cache_dir: str | None = CACHE_DIR, options: ReadOptions = ReadOptions()
) -> tuple[pd.DataFrame, DataReport]:
    """Return the clean long panel (date, ticker, close[, open, high, low, volume, vwap]) and report.

    The clean panel is cached as Parquet under `cache_dir`, keyed by a fingerprint of the
    input files' bytes, so repeated runs (e.g. trials of one study) parse the CSVs once.
    """
    if data == "sample":
        if options.extra:
            raise StockLabError("extra: the built-in sample holds closes only; extra columns come with your own files")
        raw, fp = _load_sample()
        report = DataReport(source="sample (skfolio load_sp500_dataset)", fingerprint=fp, files=1)
        return _finish(raw, report, options.max_drop), report

    path = Path(data).expanduser()
    files, broken = _input_files(path, data)
    fp = _files_fingerprint(files, options)  # other read options: other clean data
    cache = Path(cache_dir) if cache_dir else None
    if cache is not None:
        cached, meta = cache / f"panel-{fp[:20]}.parquet", cache / f"panel-{fp[:20]}.json"
        if cached.exists() and meta.exists():
            try:
                report = DataReport(**json.loads(meta.read_text()))
                panel = pd.read_parquet(cached)
            except Exception as e:  # noqa: BLE001 - a truncated or corrupt entry: parse the files again
                print(f"stocklab: warning: cache entry '{cached}' is unreadable ({one_line(e, 200)}); rebuilding it",
                      file=sys.stderr)  # fmt: skip
            else:
                # the same bytes may sit at another path: the report names this run's input
                report.source = str(path.resolve())
                return panel, report

    report = DataReport(source=str(path.resolve()), fingerprint=fp, files=len(files))
    if broken:
        report.dropped["broken_link"] = len(broken)
    panel = _finish(_read_files(files, path, data, report, options), report, options.max_drop)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            # concurrent workers may build the same entry: each writes a private file and renames it
            # into place (atomic), the report last, so a reader never sees a half-written panel
            _write_atomic(cached, lambda tmp: panel.to_parquet(tmp))
            _write_atomic(meta, lambda tmp: tmp.write_text(json.dumps(report.to_dict())))
        except OSError as e:
            raise StockLabError(
                f"cache_dir: cannot write the parsed-panel cache in '{cache}' ({e.strerror or one_line(e)}); "
                "choose a writable folder, or --cache_dir '' for none"
            ) from None
    return panel, report


def read_bars(df: pd.DataFrame, where: str = "bars", options: ReadOptions = ReadOptions()) -> pd.DataFrame:
    """A long frame of bars already in memory (a serving request, a Spark batch) read like a
    file: columns matched by name, dates and numbers parsed; its row order and index are kept.
    An optional column with no value at all is absent (a Spark UDF passes every column of the
    model's signature, the ones the caller has not as nulls)."""
    if not isinstance(df, pd.DataFrame):
        raise StockLabError(f"{where}: expected a DataFrame of daily bars, got {type(df).__name__}")
    empty = [c for c in df.columns if str(c).strip().lower() in VALUE_COLS and c != "close" and df[c].isna().all()]
    return _normalise(df.drop(columns=empty), where, None, options)


def clean_bars(
    df: pd.DataFrame, where: str = "bars", options: ReadOptions = ReadOptions()
) -> tuple[pd.DataFrame, DataReport]:
    """`read_bars`, then the cleaning rules a data file gets (counted in the report). A named
    extra column (a model's `extra`) must be in the bars: the model reads it."""
    report = DataReport(source=where, files=1)
    bars = read_bars(df, where, options).reset_index(drop=True)
    missing = [c for c in options.extra_names() if c not in bars.columns]
    if missing:
        raise StockLabError(
            f"{where}: missing column {missing[0]!r}, one of the model's extra columns ({options.extra})"
        )
    report.extra = options.extra_names()
    return _finish(bars, report, options.max_drop), report


def check_source(data: str, options: ReadOptions = ReadOptions()) -> str:
    """Fail at once when `data` names nothing to read (no such file or folder, a folder without
    data files): a study checks it before its trials, which would each fail on it. Returns the
    source's fingerprint (its files' bytes and the read options: what a study's trials saw)."""
    if data == "sample":
        return "sample"
    files, _ = _input_files(Path(data).expanduser(), data)
    return _files_fingerprint(files, options)


def _input_files(path: Path, data: str) -> tuple[list[Path], list[str]]:
    """The CSV/Parquet files behind `data` (a folder's, or the one file), and the names of the
    folder's links to such files that lead nowhere (dangling or looping)."""
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise StockLabError(
            f"data: '{data}' is not 'sample', an existing folder or a file (looked for '{path.resolve()}')"
        )
    tables = [p for p in path.iterdir() if re.search(r"\.(csv|csv\.gz|parquet)$", p.name, re.I)]
    files = sorted(p for p in tables if p.is_file())
    broken = sorted(p.name for p in tables if p.is_symlink() and not p.exists())  # dangling or looping
    if broken:
        print(
            f"stocklab: warning: data: {len(broken)} link(s) in '{data}' lead to no file (e.g. '{broken[0]}'); "
            "skipped and counted as broken_link in data_report.json",
            file=sys.stderr,
        )
    if not files:
        raise StockLabError(f"data: folder '{data}' contains no .csv or .parquet files")
    return files, broken


def _read_files(files: list[Path], path: Path, data: str, report: DataReport, options: ReadOptions) -> pd.DataFrame:
    """Every file normalised into one long frame of the columns all files have."""
    frames, frame_files, source_of = [], [], {}
    for f in files:
        table = _read_table(f)
        if table.empty:
            report.dropped["empty_file"] = report.dropped.get("empty_file", 0) + 1
            continue
        ticker = ticker_from_filename(f) if path.is_dir() else None
        frame = _normalise(table, str(f), ticker, options)
        for name in frame["ticker"].unique():
            # two files with bars of one ticker (a per-ticker file and a long file, at different
            # price scales in the wild) cannot be merged safely: say which files, do not guess
            if name in source_of:
                raise StockLabError(
                    f"data: ticker '{name}' is in both '{source_of[name].name}' and '{f.name}' in '{data}'; "
                    "keep one source per ticker (move one file out of the folder)"
                )
            source_of[name] = f
        frames.append(frame)
        frame_files.append(f)
    if not frames:
        raise StockLabError(f"data: '{data}' has no rows")
    extra = user_columns.in_files(frames, options, data, report)
    frames = [f.reindex(columns=[*(c for c in f.columns if c not in extra), *extra]) for f in frames]
    # files may differ in optional bar columns; keep the columns every file has, and say so
    common = set.intersection(*(set(f.columns) for f in frames)) - set(extra)
    cols = [c for c in ("date", "ticker", *VALUE_COLS) if c in common]
    lost = sorted({c for f in frames for c in f.columns} - common - set(extra), key=list(VALUE_COLS).index)
    if lost:
        short = [f for f, fr in zip(frame_files, frames) if not set(lost) <= set(fr.columns)]
        kept = ", ".join(c for c in cols if c not in ("date", "ticker"))
        print(
            f"stocklab: warning: data: column(s) {', '.join(lost)} missing from {len(short)} file(s) "
            f"(e.g. '{short[0].name}'): every ticker gets only {kept}",
            file=sys.stderr,
        )
        report.repaired["columns_not_in_every_file"] = len(lost)
    return pd.concat([f[cols + extra] for f in frames], ignore_index=True)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _finish(raw: pd.DataFrame, report: DataReport, max_drop: float = 0.05) -> pd.DataFrame:
    report.rows_read = int(len(raw))
    panel = _clean(raw, report, max_drop)
    if panel.empty:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(report.dropped.items(), key=lambda kv: -kv[1]))
        hint = " (prices must be positive numbers)" if "missing_price" in report.dropped else ""
        raise StockLabError(
            f"data: '{report.source}' has no valid rows after cleaning (rows dropped - {why or 'none'}){hint}"
        )
    report.rows_kept = int(len(panel))
    report.tickers = int(panel["ticker"].nunique())
    report.date_min = str(panel["date"].min().date())
    report.date_max = str(panel["date"].max().date())
    report.columns = [c for c in panel.columns if c not in ("date", "ticker")]
    return panel
