"""Model registry: every model maps a name to (nn.Module class, default config dataclass).

Every model is built as ``cls(n_features, seq_len, cfg)`` and maps x (B, T, F) -> (B,).
Optional class attribute ``target``: "sequence" (per-step targets through ``forward_steps``) or
"classes" (sell/hold/buy cross-entropy through ``logits``); a ``penalty()`` method adds to the loss.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from stocklab.config import StockLabError, check_choices, with_values
from stocklab.models.attention import Attention, AttentionConfig
from stocklab.models.baselines import Linear, LinearConfig, Naive, NaiveConfig
from stocklab.models.cnn1d import CNN1D, CNN1DConfig
from stocklab.models.cnn2d import CNN2D, VARIANTS, CNN2DConfig
from stocklab.models.cnn_ta import CNNTA, CNNTAConfig
from stocklab.models.factors import Factor, FactorConfig, factor_inputs
from stocklab.models.lstm import GRU, LSTM, LSTMConfig
from stocklab.models.rnn import RNN, RNNConfig
from stocklab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from stocklab.models.transformer import Transformer, TransformerConfig

MODELS: dict[str, tuple[type[nn.Module], object]] = {
    "rnn": (RNN, RNNConfig()),
    "lstm": (LSTM, LSTMConfig()),
    "gru": (GRU, LSTMConfig()),
    "seq2seq": (Seq2Seq, Seq2SeqConfig()),
    "cnn1d": (CNN1D, CNN1DConfig()),
    "cnn2d": (CNN2D, CNN2DConfig()),
    "cnn_ta": (CNNTA, CNNTAConfig()),
    "attention": (Attention, AttentionConfig()),
    "transformer": (Transformer, TransformerConfig()),
    "linear": (Linear, LinearConfig()),
    "naive": (Naive, NaiveConfig()),
    "factor": (Factor, FactorConfig()),
}
BASELINES = ("linear", "naive", "factor")
# models whose formula fixes their inputs: {name: config -> TrainConfig values}
# (cnn_ta reads only the last day's indicator image: a longer window would only cost memory)
FIXED_INPUTS = {"factor": factor_inputs, "cnn_ta": lambda cfg: {"seq_len": 1, "window_stride": 1}}


def fixed_inputs(name: str, cfg) -> dict:
    """TrainConfig values a model's definition fixes (a factor's raw bars and look-back)."""
    return FIXED_INPUTS[name](cfg) if name in FIXED_INPUTS else {}


assert set(VARIANTS) == set(dataclasses.fields(CNN2DConfig)[0].metadata["choices"])


def model_config(name: str, overrides: dict | None = None):
    """The model's default config with `overrides` applied and checked."""
    if name not in MODELS:
        raise StockLabError(f"model: unknown model '{name}' (choose from {', '.join(MODELS)})")
    cfg = with_values(MODELS[name][1], overrides or {}, what=f"model '{name}'")
    values = dataclasses.asdict(cfg)
    if "dropout" in values and not 0.0 <= values["dropout"] < 1.0:
        raise StockLabError(f"dropout: {values['dropout']!r} must be in [0, 1)")
    for key in ("hidden_size", "num_layers", "kernel", "channels", "d_model", "nhead", "dim_feedforward", "dense"):
        if key in values and values[key] < 1:
            raise StockLabError(f"{key}: {values[key]!r} must be >= 1")
    for key in ("channels1", "channels2", "alpha"):
        if key in values and values[key] < 0:
            raise StockLabError(f"{key}: {values[key]!r} must be >= 0")
    check_choices(cfg)
    if "d_model" in values and values["d_model"] % values["nhead"]:
        raise StockLabError(f"d_model: {values['d_model']} must be divisible by nhead={values['nhead']}")
    return cfg


def build_model(name: str, n_features: int, seq_len: int, cfg) -> nn.Module:
    cls, _ = MODELS[name]
    try:
        return cls(n_features, seq_len, cfg)
    except ValueError as e:
        raise StockLabError(f"model: {e}") from None
