"""The raw-bar scoring model: what every logged model is, and what `predict`, `mlflow models
serve`, `mlflow models predict` and `mlflow.pyfunc.spark_udf` call.

    model = mlflow.pyfunc.load_model("models:/stocklab-lstm@champion")
    model.predict(bars)                              # the latest complete window of each ticker
    model.predict(bars, params={"all_dates": True})  # every date that ends a complete window
    model.predict(bars, params={"align": True})      # one row per input row (Spark UDFs)

`bars` is a long DataFrame of daily bars: `date`, `ticker`, `close` and, as the model was
trained, `open`, `high`, `low`, `volume` (`vwap` optional); prices and volumes of any int or
float dtype, dates as ISO strings, yyyymmdd integers or datetimes. The bars are read and cleaned
like a data file (data.clean_bars), then rebuilt into the model's inputs through the training
pipeline's own `prepare` with the model's Bundle (feature recipe, column order, train-fitted
scaler, ticker ids), so any version of `stocklab-<model>` takes the same frame whatever its
`seq_len`, features or scaler. The answer is a DataFrame (`date`, `ticker`, `prediction`). A
ticker whose bars are too few (or too dirty) for one window gets no row and a logged warning
saying why; the batch never fails for it.

Logged as MLflow "models from code" (pyfunc_model.py is the entry script) with this package's
source as the model's code, the network's fitted state (`artifacts/state/`: `state_dict.pt`
read with `torch.load(weights_only=True)`, or a LightGBM booster's own text file) and its
Bundle (`artifacts/preprocess.json`). Loading runs our code and reads tensors, text and JSON:
nothing is unpickled, unlike a pickled PythonModel, and the plain model stays available for
research (`pipeline.logged.load_network`).
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, Schema

from stocklab.config import EVAL_BATCH_SIZE, StockLabError
from stocklab.data import ReadOptions, clean_bars, read_bars
from stocklab.pipeline.inputs import Bundle, latest_windows, prepare
from stocklab.pipeline.packaging import network_from_files
from stocklab.pipeline.scoring import predict_windows
from stocklab.windows import TooShort, window_span

log = logging.getLogger("stocklab.serving")


def score_bars(
    network: torch.nn.Module,
    bundle: Bundle,
    bars: pd.DataFrame,
    *,
    all_dates: bool = False,
    align: bool = False,
    batch_size: int = EVAL_BATCH_SIZE,
) -> pd.DataFrame:
    """Predictions (date, ticker, prediction) of `network` on raw `bars`: each ticker's latest
    complete window, every complete window (`all_dates`), or one row per input row in input
    order, NaN where a row ends no complete window (`align`)."""
    cfg = bundle.train_config(data="", cache_dir="", max_tickers=0)
    clean, report = clean_bars(bars, "model input", ReadOptions.of(cfg))  # read as the training data was
    skipped = {}
    if bundle.scaler.per_ticker:  # its rows are the training tickers' own statistics
        unknown = sorted(set(clean["ticker"]) - set(bundle.tickers))
        skipped |= {t: "not among the model's training tickers (per-ticker scaler)" for t in unknown}
        clean = clean[~clean["ticker"].isin(unknown)]
    span = window_span(cfg.seq_len, cfg.window_stride)
    try:
        prep = prepare(cfg, "cpu", bundle, labels=False, bars=(clean, report)) if len(clean) else None
        n, t = _windows(prep, all_dates or align) if prep is not None else (None, None)
    except TooShort:
        prep = n = t = None
    scored = set() if prep is None else {prep.panel.tickers[i] for i in n.tolist()}
    rows = clean.groupby("ticker").size()
    for ticker in sorted(set(rows.index) - scored - set(skipped)):
        skipped[ticker] = f"{rows[ticker]} clean bars hold no complete window of {span} days (seq_len {cfg.seq_len})"
    _warn_skipped(skipped)
    if prep is None:
        out = pd.DataFrame({"date": pd.DatetimeIndex([]), "ticker": pd.Series([], dtype=str), "prediction": []})
    else:
        pred = predict_windows(network, prep.ws.gather(n, t), batch_size, days=t).astype(np.float64)  # (B,)
        tickers = np.asarray(prep.panel.tickers)[n.numpy()]
        out = pd.DataFrame({"date": prep.panel.dates[t.numpy()], "ticker": tickers, "prediction": pred})
        out = out.sort_values(["date", "ticker"], kind="stable", ignore_index=True)
    if align:
        keys = read_bars(bars.reset_index(drop=True), "model input", ReadOptions.of(cfg))[["date", "ticker"]]
        res = keys.merge(out, on=["date", "ticker"], how="left").set_axis(keys.index)
        return res.reindex(range(len(bars))).set_axis(bars.index)
    return out


def _windows(prep, every: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ticker index, end day) of every complete window, or of each ticker's latest."""
    if not every:
        return latest_windows(prep)
    n, t = np.nonzero(prep.ws.window_ok)  # (N, D) -> ticker-major order
    return torch.from_numpy(n), torch.from_numpy(t)


def _warn_skipped(skipped: dict) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{t}: {why}" for t, why in list(skipped.items())[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    log.warning("stocklab: %d ticker(s) not scored - %s%s", len(skipped), shown, more)


def read_any_columns_of_csv_as_text() -> None:
    """MLflow's CSV reader (`mlflow models serve` with text/csv, `mlflow models predict -t csv`)
    asks the signature for one pandas dtype per column and fails on `Any` columns (MLflow
    3.17-3.18). This model's `Any` columns are read as text (object), which data.py parses as
    it parses a CSV file; a schema without `Any` columns is answered as before. Called by the
    entry script, i.e. only in a process that loads a stocklab model."""
    original = Schema.pandas_types
    if getattr(original, "stocklab_any_as_text", False):
        return

    def pandas_types(self) -> list[np.dtype]:
        if self.is_tensor_spec() or not any(isinstance(c.type, AnyType) for c in self.inputs):
            return original(self)
        return [np.dtype(object) if isinstance(c.type, AnyType) else c.type.to_pandas() for c in self.inputs]

    pandas_types.stocklab_any_as_text = True
    Schema.pandas_types = pandas_types


class RawBarModel(mlflow.pyfunc.PythonModel):
    """The pyfunc every logged stocklab model is: raw bars in, (date, ticker, prediction) out."""

    def load_context(self, context) -> None:
        self.network, self.bundle = network_from_files(context.artifacts["state"], context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        if int(params.get("batch_size", EVAL_BATCH_SIZE)) < 1:  # a bad request: one line, HTTP 400
            raise MlflowException(
                f"batch_size: {params['batch_size']} must be >= 1", error_code=INVALID_PARAMETER_VALUE
            )
        try:
            return score_bars(
                self.network, self.bundle, model_input, all_dates=bool(params.get("all_dates")),
                align=bool(params.get("align")), batch_size=int(params.get("batch_size", EVAL_BATCH_SIZE)),
            )  # fmt: skip
        except StockLabError as e:  # a bad request: MLflow's server answers 400 with this line
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
