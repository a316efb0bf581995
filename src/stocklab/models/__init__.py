"""Model registry: every model maps a name to (nn.Module class, default config dataclass).

Every model is built as ``cls(n_features, seq_len, cfg)`` and maps x (B, T, F) -> (B,).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from stocklab.config import StockLabError, update
from stocklab.models.cnn2d import CNN2D, VARIANTS, CNN2DConfig
from stocklab.models.lstm import LSTM, LSTMConfig

MODELS: dict[str, tuple[type[nn.Module], object]] = {
    "lstm": (LSTM, LSTMConfig()),
    "cnn2d": (CNN2D, CNN2DConfig()),
}


def model_config(name: str, overrides: dict | None = None):
    """The model's default config with `overrides` applied and checked."""
    if name not in MODELS:
        raise StockLabError(f"model: unknown model '{name}' (choose from {', '.join(MODELS)})")
    cfg = update(MODELS[name][1], overrides or {}, strict=True)
    values = dataclasses.asdict(cfg)
    if "dropout" in values and not 0.0 <= values["dropout"] < 1.0:
        raise StockLabError(f"dropout: {values['dropout']!r} must be in [0, 1)")
    for key in ("hidden_size", "num_layers", "kernel"):
        if key in values and values[key] < 1:
            raise StockLabError(f"{key}: {values[key]!r} must be >= 1")
    for key in ("channels1", "channels2"):
        if key in values and values[key] < 0:
            raise StockLabError(f"{key}: {values[key]!r} must be >= 0 (0 = from variant)")
    if "variant" in values and values["variant"] not in VARIANTS:
        raise StockLabError(f"variant: {values['variant']!r} must be one of {', '.join(VARIANTS)}")
    return cfg


def build_model(name: str, n_features: int, seq_len: int, cfg) -> nn.Module:
    cls, _ = MODELS[name]
    return cls(n_features, seq_len, cfg)
