"""The `predict` job: score the latest window of every ticker with the champion model.

    mlflow run . -e predict --env-manager local -P model=lstm -P data=path/to/csvs -P output=preds.csv

Loads `models:/stocklab-<model>@champion` (or `model_uri`) with its preprocess bundle, builds the
same features, applies the train-fitted scaler, and writes (date, ticker, prediction) for the
latest date on which each ticker has a complete window. No labels are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stocklab.config import StockLabError
from stocklab.data import load_panel
from stocklab.features import build_panel
from stocklab.tracking import load_bundle
from stocklab.windows import Scaler, gather_windows, valid_window_mask, window_offsets, window_span


@dataclass
class PredictConfig:
    model: str = "lstm"
    data: str = "sample"
    output: str = field(default="predictions.csv", metadata={"help": ".csv or .parquet"})
    model_uri: str = field(default="", metadata={"help": "default models:/stocklab-<model>@champion"})
    cache_dir: str = ".stocklab_cache"


def run_predict(cfg: PredictConfig) -> pd.DataFrame:
    from stocklab.tune import registered_name

    out = Path(cfg.output)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise StockLabError(f"output: '{cfg.output}' must end in .csv or .parquet")
    uri = cfg.model_uri or f"models:/{registered_name(cfg.model)}@champion"
    try:
        model, bundle = load_bundle(uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing model/alias
        raise StockLabError(f"model: cannot load '{uri}' ({str(e).splitlines()[0][:200]})") from None
    raw, _ = load_panel(cfg.data, cfg.cache_dir)
    # the label horizon only shapes labels, which prediction does not use
    panel = build_panel(
        raw, bundle["features"], bundle["horizon"], bundle["label_scale"], bundle.get("return_period", 1)
    )
    cols = [panel.feature_names.index(f) for f in bundle["feature_names"]]  # the training column order
    scaler = Scaler.from_dict(bundle["scaler"])
    keep = np.arange(len(panel.tickers))
    if scaler.shift.shape[0] > 1:  # per-ticker scaler: only tickers the model was fit on
        known = {t: i for i, t in enumerate(bundle["tickers"])}
        keep = np.array([i for i, t in enumerate(panel.tickers) if t in known], dtype=int)
        if keep.size == 0:
            raise StockLabError("data: none of its tickers was in the model's training data (per-ticker scaler)")
        rows = [known[panel.tickers[i]] for i in keep]
        scaler = Scaler(scaler.kind, scaler.shift[rows], scaler.scale[rows])
    X = panel.X[keep][..., cols]
    seq_len, stride = bundle["seq_len"], bundle.get("window_stride", 1)
    span = window_span(seq_len, stride)
    ok = valid_window_mask(X, span) if X.shape[1] >= span else np.zeros(X.shape[:2], bool)
    has = ok.any(axis=1)
    if not has.any():
        raise StockLabError(f"data: no ticker has a complete window of {span} days")
    last = X.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)  # latest complete window per ticker
    n = np.nonzero(has)[0]
    t = last[n]
    Xs = torch.from_numpy(np.nan_to_num(scaler.transform(X), nan=0.0))  # (N, D, F)
    offsets = torch.from_numpy(window_offsets(seq_len, stride))
    rel = (torch.tensor(panel.relative_cols, dtype=torch.long), torch.tensor(panel.relative_ref, dtype=torch.long))
    windows = gather_windows(Xs, torch.from_numpy(n), torch.from_numpy(t), offsets, *rel)  # (B, T, F)
    with torch.no_grad():
        pred = model(windows.float()).float().numpy()
    df = pd.DataFrame(
        {"date": panel.dates[t], "ticker": np.asarray(panel.tickers)[keep][n], "prediction": pred}
    ).sort_values(["date", "ticker"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    print(f"wrote {len(df)} predictions ({df['date'].min().date()}..{df['date'].max().date()}) to {out}")
    return df
