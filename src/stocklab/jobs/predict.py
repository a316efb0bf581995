"""The `predict` job: score the latest window of every ticker with the champion model.

    mlflow run . -e predict --env-manager local -P model=lstm -P data=path/to/csvs -P output=preds.csv

Reads `data` like training does (files, cleaning rules, the parsed-panel cache) and hands the
bars to the logged model's raw-bar pyfunc (`models:/stocklab-<model>@champion`, or `model_uri`),
the same scoring model `mlflow models serve` and Spark call (serving.py): it rebuilds the
model's inputs with its Bundle (features, column order, train-fitted scaler) and writes
(date, ticker, prediction) for the latest date on which each ticker has a complete window.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from stocklab.config import PredictConfig, StockLabError
from stocklab.data import ReadOptions, load_panel
from stocklab.errors import one_line
from stocklab.pipeline.logged import load_scoring_model
from stocklab.registry import champion_uri


def run_predict(cfg: PredictConfig) -> pd.DataFrame:
    cfg.validate()
    out = Path(cfg.output)
    if out.is_dir():  # checked before the model is loaded and the data scored
        raise StockLabError(f"output: '{out.resolve()}' is a folder; name a .csv or .parquet file")
    uri = cfg.model_uri or champion_uri(cfg.model)
    try:
        model = load_scoring_model(uri)
    except StockLabError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing model/alias
        raise StockLabError(f"model: cannot load '{uri}' ({one_line(e, 200)})") from None
    # the model's own columns beside the bars (its training run's `extra`) are read too
    extra = model.unwrap_python_model().bundle.inputs.get("extra", "")
    bars, _ = load_panel(cfg.data, cfg.cache_dir, dataclasses.replace(ReadOptions.of(cfg), extra=extra))
    try:
        df = model.predict(bars, params={"batch_size": cfg.eval_batch_size})
    except MlflowException as e:  # the scoring model's own one-line errors (serving.py)
        raise StockLabError(e.message) from None
    if df.empty:
        raise StockLabError(f"data: no ticker in '{cfg.data}' has a complete window for {uri}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".csv":
            df.to_csv(out, index=False)
        else:
            df.to_parquet(out, index=False)
    except OSError as e:  # a read-only mount, a full disk, a file where a folder should be
        raise StockLabError(f"output: cannot write '{out.resolve()}' ({e.strerror or one_line(e)})") from None
    print(f"wrote {len(df)} predictions ({df['date'].min().date()}..{df['date'].max().date()}) to {out}")
    return df
