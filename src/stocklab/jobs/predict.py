"""The `predict` job: score the latest window of every ticker with the champion model.

    mlflow run . -e predict --env-manager local -P model=lstm -P data=path/to/csvs -P output=preds.csv

Loads `models:/stocklab-<model>@champion` (or `model_uri`) with its Bundle and builds its inputs
through the same `pipeline.inputs.prepare` as training (features, column order, train-fitted scaler;
no labels needed), then writes (date, ticker, prediction) for the latest date on which each
ticker has a complete window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stocklab.config import PredictConfig, StockLabError
from stocklab.errors import one_line
from stocklab.pipeline.inputs import latest_windows, prepare
from stocklab.pipeline.logged import load_model_bundle
from stocklab.pipeline.scoring import predict_windows
from stocklab.registry import champion_uri


def run_predict(cfg: PredictConfig) -> pd.DataFrame:
    cfg.validate()
    out = Path(cfg.output)
    if out.is_dir():  # checked before the model is loaded and the data scored
        raise StockLabError(f"output: '{out.resolve()}' is a folder; name a .csv or .parquet file")
    uri = cfg.model_uri or champion_uri(cfg.model)
    try:
        model, bundle = load_model_bundle(uri)
    except StockLabError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing model/alias
        raise StockLabError(f"model: cannot load '{uri}' ({one_line(e, 200)})") from None
    tcfg = bundle.train_config(data=cfg.data, cache_dir=cfg.cache_dir, max_tickers=0)
    prep = prepare(tcfg, "cpu", bundle, labels=False)
    n, t = latest_windows(prep)
    pred = predict_windows(model, prep.ws.gather(n, t), cfg.eval_batch_size)  # (B,)
    df = pd.DataFrame(
        {
            "date": prep.panel.dates[t.numpy()],
            "ticker": np.asarray(prep.panel.tickers)[n.numpy()],
            "prediction": pred,
        }
    ).sort_values(["date", "ticker"], kind="stable")
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
