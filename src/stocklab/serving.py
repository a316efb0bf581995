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

import json
import logging
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from stocklab.config import EVAL_BATCH_SIZE, StockLabError
from stocklab.data import VALUE_COLS, ReadOptions, clean_bars, read_bars
from stocklab.models import build_model, model_config
from stocklab.pipeline.inputs import Bundle, latest_windows, prepare
from stocklab.pipeline.scoring import predict_windows
from stocklab.windows import TooShort, window_span

log = logging.getLogger("stocklab.serving")

STATE = "state"  # artifacts/ of the logged model: StockModel.save_state's files
BUNDLE = "preprocess.json"
ENTRY = Path(__file__).with_name("pyfunc_model.py")
REQUIRED = ("date", "ticker", "close")
OUTPUT = ("date", "ticker", "prediction")
EXAMPLE_TICKERS, EXAMPLE_WARMUP = 3, 250  # the input example: 3 tickers' last window span + 250 bars


def signature() -> ModelSignature:
    """Named columns in, named columns out; the same for every version of every model. Inputs
    are typed `Any`: data.py parses them as it parses a file (dates as strings, yyyymmdd or
    datetimes; numbers of any int or float dtype), where MLflow's own `double` would refuse
    int64 volumes ("cannot safely convert") and its datetime would read 07/02 month-first."""
    values = [ColSpec(AnyType(), c, required=c in REQUIRED) for c in VALUE_COLS]
    inputs = Schema([ColSpec(AnyType(), "date"), ColSpec(DataType.string, "ticker"), *values])
    outputs = Schema(
        [ColSpec(DataType.datetime, "date"), ColSpec(DataType.string, "ticker"), ColSpec(DataType.double, "prediction")]
    )
    params = ParamSchema(
        [
            ParamSpec("all_dates", DataType.boolean, False),
            ParamSpec("align", DataType.boolean, False),
            ParamSpec("batch_size", DataType.long, EVAL_BATCH_SIZE),  # windows per forward pass
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def network_from_files(state: str | Path, bundle: str | Path) -> tuple[torch.nn.Module, Bundle]:
    """The plain network (eval mode, CPU) and its Bundle from a logged model's two artifacts."""
    b = Bundle.from_dict(json.loads(Path(bundle).read_text()))
    network = build_model(b.model, len(b.feature_names), b.seq_len, model_config(b.model, b.model_config))
    network.load_state(Path(state))
    return network.eval(), b


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
        pred = predict_windows(network, prep.ws.gather(n, t), batch_size).astype(np.float64)  # (B,)
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
        try:
            return score_bars(
                self.network, self.bundle, model_input, all_dates=bool(params.get("all_dates")),
                align=bool(params.get("align")), batch_size=int(params.get("batch_size", EVAL_BATCH_SIZE)),
            )  # fmt: skip
        except StockLabError as e:  # a bad request: MLflow's server answers 400 with this line
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


def example_bars(raw: pd.DataFrame, tickers: list[str], seq_len: int, stride: int = 1) -> pd.DataFrame:
    """The input example: the last bars of a few of the model's tickers, as a client sends them."""
    keep = raw[raw["ticker"].isin(tickers[:EXAMPLE_TICKERS])]
    days = window_span(seq_len, stride) + EXAMPLE_WARMUP
    example = keep.groupby("ticker", sort=True).tail(days).reset_index(drop=True)
    return example.assign(date=example["date"].dt.strftime("%Y-%m-%d"))


def requirements() -> list[str]:
    """The serving environment: this package's own runtime dependencies (its source travels
    with the model as code), pinned to torch and MLflow as installed."""
    pins = {"torch": torch.__version__.split("+")[0], "mlflow": mlflow.__version__}
    try:
        reqs = [r for r in metadata.requires("stocklab") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:  # run from a source tree (PYTHONPATH=src)
        reqs = ["numpy", "pandas", "pyarrow", "scipy"]
    names = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower(): r for r in reqs}
    names |= {k: f"{k}=={v}" for k, v in pins.items()}
    return sorted(v.split(";")[0].strip() for v in names.values())


def log_scoring_model(network: torch.nn.Module, bundle: dict, example: pd.DataFrame):
    """Log `network` with its Bundle as the active run's `model` (the raw-bar pyfunc)."""
    with tempfile.TemporaryDirectory() as tmp:
        state, bundle_file = Path(tmp) / STATE, Path(tmp) / BUNDLE
        state.mkdir()
        network.save_state(state)
        bundle_file.write_text(json.dumps(bundle))
        code = Path(tmp) / "code" / "stocklab"  # the package's source, without bytecode caches
        shutil.copytree(Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={"state": str(state), "bundle": str(bundle_file)},
            code_paths=[str(code)],
            signature=signature(),
            input_example=example,
            pip_requirements=requirements(),  # explicit: skips MLflow's slow requirement inference
        )
    mlflow.set_tags({"stocklab.model_uri": info.model_uri, "model_serialization": "pyfunc"})
    return info
