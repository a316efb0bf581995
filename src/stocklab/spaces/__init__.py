"""Optuna search spaces: one YAML per trainable model, shipped in this package.

Each key is a `train` parameter or a model hyper-parameter; each value says how Optuna samples it::

    hidden_size: {type: int, low: 8, high: 64, log: true}              # trial.suggest_int
    lr:          {type: float, low: 1.0e-4, high: 1.0e-2, log: true}   # trial.suggest_float
    batch_norm:  {type: categorical, choices: [false, true]}           # trial.suggest_categorical
    dropout:     {type: float, low: 0.0, high: 0.5, when: {num_layers: [2, 3]}}

`recipe: [label, batching, loss, select]` takes those dimensions of the training recipe from
`_recipe.yaml` (written once for every built-in space), at that place in the sampling order.

`when` makes a dimension conditional: it is sampled only when every named parameter (sampled
earlier in the file, or fixed for the study, `metric` included) has one of the listed values;
otherwise the parameter keeps the study's value. `tune -P space=path.yaml` replaces the
built-in file.

The training target and loss (`label`, `loss`) change what the validation loss measures, so a
study may search them only when it compares trials on validation rank IC: the built-in
spaces search them `when: {metric: valid_rank_ic}`, and `check_comparable` refuses a space
that would search them under a loss objective.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import optuna
import yaml

from stocklab.config import TUNE_METRICS, StockLabError, TrainConfig, convert, field_types
from stocklab.errors import one_line

TYPES = ("int", "float", "categorical")


def builtin_models() -> list[str]:
    """Models with a built-in search space."""
    files = resources.files(__package__).iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml") and not p.name.startswith("_"))


RECIPE_FILE = "_recipe.yaml"


def _with_recipe(space: dict, where: str) -> dict:
    """`space` with its `recipe: [names]` entry replaced, in place, by those dimensions of
    _recipe.yaml."""
    if "recipe" not in space:
        return space
    shared = yaml.safe_load((resources.files(__package__) / RECIPE_FILE).read_text())
    names = space["recipe"]
    if not isinstance(names, list) or not names or any(n not in shared for n in names):
        raise StockLabError(f"space: {where}: recipe must list dimensions among {', '.join(shared)}")
    out = {}
    for key, spec in space.items():
        if key == "recipe":
            out |= {n: shared[n] for n in names if n not in space}
        else:
            out[key] = spec
    return out


def _read(model: str, path: str) -> tuple[dict, str]:
    if path:
        src = Path(path)
        if not src.is_file():
            raise StockLabError(f"space: search-space file '{path}' not found")
        text, where = src.read_text(), str(src)
    else:
        res = resources.files(__package__) / f"{model}.yaml"
        if not res.is_file():
            raise StockLabError(
                f"space: no built-in search space for model '{model}' (built in: {', '.join(builtin_models())}); "
                "pass -P space=path.yaml"
            )
        text, where = res.read_text(), f"built-in {model}.yaml"
    try:
        space = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise StockLabError(f"space: {where} is not valid YAML ({one_line(e)})") from None
    if not isinstance(space, dict):
        raise StockLabError(f"space: {where} must map parameter names to specs")
    return _with_recipe(space, where), where


def load_space(model: str, model_cfg, path: str = "", fixed=frozenset()) -> dict:
    """The validated search space of `model` (`model_cfg`: its default config dataclass).
    Dimensions named in `fixed` (given explicitly by the user) are left out and keep their value."""
    space, where = _read(model, path)
    types = {**field_types(TrainConfig), **field_types(type(model_cfg))}
    conditions = {**types, "metric": str}  # a dimension may depend on the study's objective
    seen: list[str] = []
    for name, spec in space.items():
        if name not in types:
            raise StockLabError(f"space: {where}: '{name}' is neither a train nor a {model} parameter")
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise StockLabError(f"space: {where}: '{name}' needs type int, float or categorical")
        typ = types[name]
        try:
            if spec["type"] == "categorical":
                if not spec.get("choices"):
                    raise StockLabError(f"{name}: categorical needs a non-empty list of choices")
                spec["choices"] = [convert(c, typ, name) for c in spec["choices"]]
            else:
                for key in ("low", "high"):
                    if typ is int and isinstance(spec[key], float) and not spec[key].is_integer():
                        raise StockLabError(f"{name}: {key} {spec[key]} is not a whole number (an int dimension)")
                    spec[key] = convert(spec[key], typ, name)
                if not spec["low"] <= spec["high"]:
                    raise StockLabError(f"{name}: low {spec['low']} > high {spec['high']}")
                if spec.get("log") and not spec["low"] > 0:  # Optuna's log scale: low > 0
                    raise StockLabError(f"{name}: log: true needs low > 0 (low is {spec['low']})")
        except KeyError as e:
            raise StockLabError(f"space: {where}: '{name}' needs '{e.args[0]}'") from None
        except StockLabError as e:
            raise StockLabError(f"space: {where}: {e}") from None
        for other, values in (spec.get("when") or {}).items():
            if other not in seen and other not in conditions:
                raise StockLabError(f"space: {where}: '{name}' depends on unknown parameter '{other}'")
            if other in seen:
                allowed = values if isinstance(values, list) else [values]
                spec["when"][other] = [convert(v, types[other], other) for v in allowed]
        seen.append(name)
    pinned = sorted(set(space) & set(fixed))
    if pinned:
        print(f"not searched (given explicitly): {', '.join(pinned)}")
    return {k: v for k, v in space.items() if k not in pinned}


TARGET_DIMENSIONS = ("label", "loss")  # what the validation loss is measured on


def check_comparable(space: dict, metric: str) -> None:
    """Refuse a space whose trials would differ in what their validation loss measures while
    the study compares validation losses (a rank IC objective compares the same thing)."""
    if "valid_loss" not in TUNE_METRICS[metric]:
        return
    for name in TARGET_DIMENSIONS:
        when = (space.get(name) or {}).get("when") or {}
        allowed = when.get("metric")
        active = name in space and (allowed is None or metric in (allowed if isinstance(allowed, list) else [allowed]))
        if active:
            raise StockLabError(
                f"space: '{name}' is searched but metric={metric} compares validation losses, which differ in "
                f"meaning across {name} values; use metric=valid_rank_ic or add when: {{metric: valid_rank_ic}}"
            )


def suggest(trial: optuna.Trial, space: dict, context: dict | None = None) -> dict:
    """One configuration sampled from `space`; `context` holds the study's values of the
    parameters that are not searched (for `when` conditions on them)."""
    out: dict = {}
    context = context or {}
    for name, spec in space.items():
        cond = spec.get("when") or {}
        if any(out.get(k, context.get(k)) not in (v if isinstance(v, list) else [v]) for k, v in cond.items()):
            continue  # condition not met: the parameter keeps the study's value
        if spec["type"] == "int":
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "float":
            out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            out[name] = trial.suggest_categorical(name, spec["choices"])
    return out
