"""The logged model's files: its layout, signature and environment, and how a run logs it.

Every logged model is the raw-bar pyfunc (serving.py) as MLflow "models from code": the entry
script `pyfunc_model.py`, the network's fitted state (`artifacts/state/`), its Bundle
(`artifacts/preprocess.json`) and, as the model's code, this package's source.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from stocklab.config import EVAL_BATCH_SIZE
from stocklab.data import VALUE_COLS
from stocklab.models import build_model, model_config
from stocklab.pipeline.inputs import Bundle
from stocklab.windows import window_span

PACKAGE = Path(__file__).resolve().parents[1]  # src/stocklab
STATE = "state"  # artifacts/ of the logged model: StockModel.save_state's files
BUNDLE = "preprocess.json"
ENTRY = PACKAGE / "pyfunc_model.py"
REQUIRED = ("date", "ticker", "close")
NOT_SHIPPED = ("benchmarks",)  # package folders a logged model's code leaves out (tools, not scoring)
OUTPUT = ("date", "ticker", "prediction")
EXAMPLE_TICKERS, EXAMPLE_WARMUP = 3, 250  # the input example: 3 tickers' last window span + 250 bars


def signature(extra: tuple[str, ...] = ()) -> ModelSignature:
    """Named columns in, named columns out; the same for every version of every model. Inputs
    are typed `Any`: data.py parses them as it parses a file (dates as strings, yyyymmdd or
    datetimes; numbers of any int or float dtype), where MLflow's own `double` would refuse
    int64 volumes ("cannot safely convert") and its datetime would read 07/02 month-first.
    A model trained with the user's `extra` columns requires them too."""
    values = [ColSpec(AnyType(), c, required=c in REQUIRED) for c in VALUE_COLS]
    values += [ColSpec(AnyType(), c, required=True) for c in extra]
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
        # the package's source, without bytecode caches and without the benchmark suites: MLflow
        # puts a model's code first on sys.path of the process that loads it (and of the
        # processes it spawns, e.g. tune workers), so a copy with only the scoring modules would
        # hide the rest of stocklab from that process. The suites run only as their own job,
        # which imports them before it could load a model (jobs/benchmark.py)
        code = Path(tmp) / "code" / "stocklab"
        shutil.copytree(PACKAGE, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *NOT_SHIPPED))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={"state": str(state), "bundle": str(bundle_file)},
            code_paths=[str(code)],
            signature=signature(tuple(c for c in bundle["inputs"].get("extra", "").split(",") if c)),
            input_example=example,
            pip_requirements=requirements(),  # explicit: skips MLflow's slow requirement inference
        )
    mlflow.set_tags({"stocklab.model_uri": info.model_uri, "model_serialization": "pyfunc"})
    return info
