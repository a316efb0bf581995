"""Shared fixtures: synthetic OHLCV panels written in the supported file formats, and an
isolated MLflow tracking store per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "sp500_5yr"


def synthetic_bars(n_tickers: int = 6, n_days: int = 300, seed: int = 0, signal: float = 0.0) -> pd.DataFrame:
    """Long OHLCV frame of geometric random walks on business days.

    With `signal` > 0 the next day's return is `signal` times today's return plus noise, so a
    window that ends today predicts tomorrow (a learnable, planted effect).
    """
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-01", periods=n_days)
    frames = []
    for i in range(n_tickers):
        eps = rng.normal(0, 0.01, n_days)
        r = np.zeros(n_days)
        for d in range(1, n_days):
            r[d] = signal * r[d - 1] + eps[d]
        close = 50 * (1 + i) * np.exp(np.cumsum(r))
        spread = np.abs(rng.normal(0, 0.005, n_days)) * close
        open_ = close * np.exp(rng.normal(0, 0.003, n_days))
        high = np.maximum(open_, close) + spread
        low = np.minimum(open_, close) - spread
        vol = rng.integers(1_000, 100_000, n_days)
        frames.append(
            pd.DataFrame(
                {
                    "date": dates.strftime("%Y-%m-%d"),
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": vol,
                    "Name": f"T{i:02d}",
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_ticker_csvs(df: pd.DataFrame, folder: Path, style: str = "data") -> Path:
    """One CSV per ticker: style 'data' -> T00_data.csv (date, Name columns);
    style 'us' -> T00.US_D1.csv (datetime column, ticker only in the file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, g in df.groupby("Name"):
        if style == "data":
            g.to_csv(folder / f"{name}_data.csv", index=False)
        else:
            g.drop(columns="Name").rename(columns={"date": "datetime"}).to_csv(
                folder / f"{name}.US_D1.csv", index=False
            )
    return folder


@pytest.fixture
def bars() -> pd.DataFrame:
    return synthetic_bars()


@pytest.fixture
def csv_dir(tmp_path, bars) -> Path:
    return write_ticker_csvs(bars, tmp_path / "csvs")


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """A private sqlite tracking store (and artifact root) per test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
