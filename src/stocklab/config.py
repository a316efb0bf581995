"""Configuration dataclasses: the single home of every default.

MLproject params -> argparse (built from these fields in `cli.py`) -> dataclass -> mlflow.log_params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


class StockLabError(ValueError):
    """A user-facing error: the CLI prints its one-line message and exits non-zero."""


FEATURE_SETS = ("auto", "ohlcv", "returns", "relative", "technical")
SCALERS = ("standard", "minmax", "standard_ticker", "minmax_ticker", "none")


@dataclass
class TrainConfig:
    """Everything one `train` run needs except the model's own hyper-parameters."""

    data: str = field(default="sample", metadata={"help": "'sample', a CSV folder or a file"})
    model: str = field(default="lstm", metadata={"help": "a name from stocklab.models.MODELS"})
    preset: str = field(default="", metadata={"help": "a source study's configuration (see presets.py)"})
    features: str = field(default="auto", metadata={"help": "auto|ohlcv|returns|relative|technical"})
    horizon: int = field(default=20, metadata={"help": "label = forward return over N days"})
    seq_len: int = field(default=20, metadata={"help": "steps per input window"})
    window_stride: int = field(default=1, metadata={"help": "days between window steps (21: monthly)"})
    return_period: int = field(default=1, metadata={"help": "look-back of `returns` features in days"})
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    patience: int = field(default=3, metadata={"help": "early-stopping patience (epochs)"})
    seed: int = 0
    label_scale: float = field(default=1.0, metadata={"help": "multiplies the label"})
    split: str = field(default="0.6,0.2,0.2", metadata={"help": "train,valid,test fractions"})
    scaler: str = field(default="standard", metadata={"help": "|".join(SCALERS)})
    weight_decay: float = 0.0
    max_tickers: int = field(default=0, metadata={"help": "use the first N tickers (0 = all)"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model for training"})
    eval_batch_size: int = 8192
    cache_dir: str = field(default=".stocklab_cache", metadata={"help": "parsed-panel cache"})

    def split_fractions(self) -> tuple[float, float, float]:
        try:
            parts = tuple(float(p) for p in self.split.split(","))
        except ValueError:
            raise StockLabError(f"split: '{self.split}' is not three comma-separated numbers") from None
        if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
            raise StockLabError(f"split: fractions '{self.split}' must be three non-negative numbers summing to 1")
        if min(parts) == 0:
            raise StockLabError(f"split: every fraction in '{self.split}' must be > 0")
        return parts  # type: ignore[return-value]

    def validate(self) -> TrainConfig:
        """Raise StockLabError naming the first bad parameter."""
        checks = [
            (self.horizon >= 1, "horizon", "must be >= 1"),
            (self.seq_len >= 1, "seq_len", "must be >= 1"),
            (self.window_stride >= 1, "window_stride", "must be >= 1"),
            (self.return_period >= 1, "return_period", "must be >= 1"),
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.patience >= 1, "patience", "must be >= 1"),
            (self.label_scale > 0, "label_scale", "must be > 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.max_tickers >= 0, "max_tickers", "must be >= 0"),
            (self.features in FEATURE_SETS, "features", f"must be one of {FEATURE_SETS}"),
            (self.scaler in SCALERS, "scaler", f"must be one of {SCALERS}"),
            (self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise StockLabError(f"{name}: {getattr(self, name)!r} {problem}")
        self.split_fractions()
        return self


def coerce(value, typ, name: str):
    """Convert a CLI/MLproject string to a dataclass field type, with a one-line error."""
    if typ in (bool, "bool"):
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise StockLabError(f"{name}: {value!r} is not a boolean (true/false)")
    conv = {"int": int, "float": float, "str": str}.get(typ, typ) if isinstance(typ, str) else typ
    try:
        return conv(value)
    except (TypeError, ValueError):
        raise StockLabError(f"{name}: {value!r} is not a valid {getattr(conv, '__name__', conv)}") from None


def update(cfg, values: dict, strict: bool = True):
    """Return a copy of dataclass `cfg` with `values` (strings allowed) applied by field type."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    out = {}
    for key, val in values.items():
        if val is None:
            continue
        if key not in fields:
            if strict:
                raise StockLabError(f"{key}: unknown parameter for {type(cfg).__name__}")
            continue
        out[key] = coerce(val, fields[key].type, key)
    return dataclasses.replace(cfg, **out)
