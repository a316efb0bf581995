"""Model registry: every model maps a name to (class, default config dataclass).

A new model family is one module here (its `StockModel` subclass and config dataclass, see
models/base.py for the contract), one line in MODELS and, to be tunable, one search space in
stocklab/spaces/<name>.yaml. Nothing in the trainer or the pipeline names a model.

A family can also live in another package, without a fork: an entry point of the group
`stocklab.models` (`name = "package.module:FAMILY"`, FAMILY being `(ModelClass, ConfigDataclass())`)
adds it to MODELS when stocklab is imported (`load_plugins`); `tune -P space=...` gives it a
search space.
"""

from __future__ import annotations

import dataclasses
from importlib import metadata

from stocklab.config import RECIPES, StockLabError, TrainConfig, check_fields, with_values
from stocklab.losses import objective
from stocklab.models.attention import Attention, AttentionConfig
from stocklab.models.base import StockModel
from stocklab.models.baselines import Linear, LinearConfig, Naive, NaiveConfig
from stocklab.models.cnn1d import CNN1D, CNN1DConfig
from stocklab.models.cnn2d import CNN2D, VARIANTS, CNN2DConfig
from stocklab.models.cnn_ta import CNNTA, CNNTAConfig
from stocklab.models.cross import Cross, CrossConfig
from stocklab.models.factors import Factor, FactorConfig
from stocklab.models.lgbm import LGBM, LGBMConfig
from stocklab.models.lstm import GRU, LSTM, LSTMConfig
from stocklab.models.rnn import RNN, RNNConfig
from stocklab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from stocklab.models.transformer import Transformer, TransformerConfig

MODELS: dict[str, tuple[type[StockModel], object]] = {
    "rnn": (RNN, RNNConfig()),
    "lstm": (LSTM, LSTMConfig()),
    "gru": (GRU, LSTMConfig()),
    "seq2seq": (Seq2Seq, Seq2SeqConfig()),
    "cnn1d": (CNN1D, CNN1DConfig()),
    "cnn2d": (CNN2D, CNN2DConfig()),
    "cnn_ta": (CNNTA, CNNTAConfig()),
    "attention": (Attention, AttentionConfig()),
    "transformer": (Transformer, TransformerConfig()),
    "cross": (Cross, CrossConfig()),
    "linear": (Linear, LinearConfig()),
    "naive": (Naive, NaiveConfig()),
    "factor": (Factor, FactorConfig()),
    "lgbm": (LGBM, LGBMConfig()),
}
PLUGIN_GROUP = "stocklab.models"


def load_plugins(entry_points, models: dict) -> dict:
    """Add the families of other packages' `stocklab.models` entry points to `models`; a name
    that is taken, or an entry that is not (StockModel subclass, config dataclass), is an error
    naming the entry point."""
    for ep in entry_points:
        where = f"entry point {ep.name} = {ep.value} ({PLUGIN_GROUP})"
        if ep.name in models:
            raise StockLabError(f"model: {where}: the name {ep.name!r} is already a model")
        family = ep.load()
        ok = isinstance(family, tuple) and len(family) == 2 and isinstance(family[0], type)
        if not ok or not issubclass(family[0], StockModel) or not dataclasses.is_dataclass(family[1]):
            raise StockLabError(f"model: {where} must be (a StockModel subclass, an instance of its config dataclass)")
        models[ep.name] = family
    return models


load_plugins(metadata.entry_points(group=PLUGIN_GROUP), MODELS)

# hyper-parameters added to a family after models were logged, with the value those models have
# (a logged model's Bundle without the key is built with it, not with today's default)
LEGACY_MODEL_VALUES = {"cnn1d": {"hidden": 0}}
# the yardsticks: not networks of the source studies (the models report's "best deep model"
# is chosen among the others)
BASELINES = ("linear", "naive", "factor", "lgbm")

assert set(VARIANTS) == set(dataclasses.fields(CNN2DConfig)[0].metadata["choices"])


def check_model(name: str) -> None:
    if name not in MODELS:
        raise StockLabError(f"model: unknown model '{name}' (choose from {', '.join(MODELS)})")


def model_config(name: str, overrides: dict | None = None):
    """The model's default config with `overrides` applied and checked."""
    check_model(name)
    cfg = with_values(MODELS[name][1], overrides or {}, what=f"model '{name}'")
    check_fields(cfg)  # choices and bounds declared on the fields
    cross_field_rules = getattr(cfg, "validate", None)  # optional: rules that relate fields
    if cross_field_rules is not None:
        cross_field_rules()
    return cfg


def model_defaults(name: str) -> dict:
    """The model's default hyper-parameters ({} for an unknown name: its error comes later)."""
    return dataclasses.asdict(MODELS[name][1]) if name in MODELS else {}


def effective_config(cfg: TrainConfig, mcfg) -> TrainConfig:
    """`cfg` with the values the model's definition fixes (`StockModel.fixed_inputs`); a loss
    the model's output cannot be trained with is an error here, before any data is read."""
    cls = MODELS[cfg.model][0]
    objective(cls.output, cfg.loss)
    if cls.whole_days and cfg.batching != "daily":
        raise StockLabError(
            f"batching: {cfg.model} scores each date's tickers together and trains on whole dates: "
            f"it needs batching=daily (is '{cfg.batching}')"
        )
    if cls.trained_by == "boosting" and cfg.loss != "mse":
        raise StockLabError(
            f"loss: '{cfg.loss}' is a network loss; {cfg.model} trains -P objective=regression|lambdarank"
        )
    return dataclasses.replace(cfg, **cls.fixed_inputs(mcfg))


def recipe_values(name: str, recipe: str) -> dict:
    """The TrainConfig values of training recipe `recipe` (config.RECIPES) for model `name`:
    `features=auto` then means the model's own set (cnn_ta's indicator image) or the recipe's."""
    return {"recipe": recipe, **recipe_for(name, recipe), "features": "auto"}


def recipe_for(name: str, recipe: str) -> dict:
    """RECIPES[recipe] as model `name` trains under it: a whole-day model (StockModel.whole_days)
    keeps batching=daily under every recipe (raw: its label and loss, on whole dates)."""
    values = dict(RECIPES[recipe])
    if name in MODELS and MODELS[name][0].whole_days:
        values["batching"] = "daily"
    return values


def fixed_values(name: str, values: dict) -> dict:
    """The TrainConfig values model `name` fixes with the hyper-parameters among `values`, for
    naming a run before it starts ({} for an unknown model or invalid values: their error comes
    in the run)."""
    own = model_defaults(name)
    try:
        return MODELS[name][0].fixed_inputs(model_config(name, {k: v for k, v in values.items() if k in own}))
    except (KeyError, StockLabError):
        return {}


# short names of the hyper-parameters that tell runs apart in the UI's run list
_SHORT = {"variant": "", "hidden_size": "h", "d_model": "d", "num_layers": "L", "channels": "c", "cell": "",
          "objective": "", "num_leaves": "nl"}  # fmt: skip


def run_name(model: str, model_params: dict, seq_len: int, lr: float, prefix: str = "") -> str:
    """A readable run name: model, its key sizes, window length, learning rate
    (e.g. `lstm h32 L2 T20 lr1e-03`, `cnn2d deep T96 lr1e-05`, `cnn_ta T1 lr1e-03`): the window
    length the model trains on, which its definition may fix (fixed_values); a tree
    model's own learning rate (`lgbm regression nl31 T20 lr5e-02`)."""
    seq_len = fixed_values(model, model_params).get("seq_len", seq_len)
    lr = model_params.get("learning_rate", lr)
    parts = [model]
    for key, short in _SHORT.items():
        if key in model_params:
            parts.append(f"{short}{model_params[key]}")
    if model_params.get("channels1") and model_params.get("channels2"):
        parts.append(f"c{model_params['channels1']}x{model_params['channels2']}")
    parts += [f"T{seq_len}", f"lr{float(lr):.0e}"]
    return " ".join(([prefix] if prefix else []) + parts)


def build_model(name: str, n_features: int, seq_len: int, cfg) -> StockModel:
    cls, _ = MODELS[name]
    try:
        return cls(n_features, seq_len, cfg)
    except ValueError as e:
        raise StockLabError(f"model: {e}") from None
