"""Typed configuration fields: the machinery every config dataclass (the jobs' and the models')
is built with. A field's type, default, help text and allowed values are declared once with
`opt`; `add_arguments` turns them into argparse flags, `with_values` / `convert` into typed
values with one-line errors, `check_fields` checks choices, bounds and finite numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import typing
from dataclasses import field

from stocklab.errors import StockLabError


def opt(
    default,
    help: str = "",  # noqa: A002
    choices: tuple | None = None,
    role: str | None = None,
    setup: bool = False,
    *,
    ge=None,
    gt=None,
    le=None,
    lt=None,
    why: str = "",
):
    """A dataclass field with its CLI help text and, optionally, its allowed values, its bounds
    (`ge`/`gt` below, `le`/`lt` above; `why` is added to the error), its input role
    (INPUT_ROLES), and `setup=True` for how a job runs, not what it fits or scores (where it
    runs, caches, batch sizes of scoring passes, artifacts to skip): logged as `setup.<name>`
    params so the compare page groups them apart from what differs between models."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if bounds:
        meta["bounds"] = bounds
        meta["why"] = why
    if role is not None:
        meta["role"] = role
    if setup:
        meta["setup"] = True
    return field(default=default, metadata=meta)


# --- typed values: one converter per field type, used by argparse and by programmatic updates ---


@functools.cache
def field_types(cls) -> dict[str, type]:
    """{field name: real type} (the annotations are strings under `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def convert(value, typ: type, name: str):
    """A CLI/MLproject/YAML value as `typ`, or a one-line StockLabError naming the parameter."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise StockLabError(f"{name}: {value!r} is not a boolean (true/false)")
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    try:
        return typ(value)
    except (TypeError, ValueError):
        raise StockLabError(f"{name}: {value!r} is not a valid {typ.__name__}") from None


def _number(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def bounds_text(bounds: dict) -> str:
    """'>= 1', '> 0', 'in [0, 1)', 'in (0, 1e+06]': the rule of a field's declared bounds."""
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"


def within(value, bounds: dict) -> bool:
    return (
        value >= bounds.get("ge", value)
        and value <= bounds.get("le", value)
        and ("gt" not in bounds or value > bounds["gt"])
        and ("lt" not in bounds or value < bounds["lt"])
    )


def check_fields(cfg) -> None:
    """Every field of dataclass `cfg` against what its declaration allows: one of its choices,
    within its bounds, and a finite number where it is a float (a nan or inf learning rate,
    alpha or timeout has no meaning, and would fail later under another parameter's name).
    The one place single-field rules are checked; a config's `validate` adds the rules that
    relate fields."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        allowed = f.metadata.get("choices")
        if allowed and value not in allowed:
            raise StockLabError(f"{f.name}: {value!r} must be one of {', '.join(map(str, allowed))}")
        if isinstance(value, float) and not math.isfinite(value):
            raise StockLabError(f"{f.name}: {value!r} must be a finite number")
        bounds = f.metadata.get("bounds")
        if bounds and not within(value, bounds):
            why = f" {f.metadata['why']}" if f.metadata.get("why") else ""
            raise StockLabError(f"{f.name}: {value!r} must be {bounds_text(bounds)}{why}")


def with_values(cfg, values: dict, what: str | None = None):
    """A copy of dataclass `cfg` with `values` converted to each field's type; an unknown key is
    a StockLabError naming it (`what` says whose parameter it is not)."""
    types = field_types(type(cfg))
    out = {}
    for key, val in values.items():
        if key not in types:
            raise StockLabError(f"{key}: not a parameter of {what or type(cfg).__name__}")
        out[key] = convert(val, types[key], key)
    return dataclasses.replace(cfg, **out)


# --- argparse generated from the dataclasses ---


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are StockLabErrors ("lr: 'abc' is not a valid float"), so every bad
    parameter gives the CLI's one-line error instead of argparse's usage dump. No abbreviations:
    a model parameter that is the prefix of another (`--mode` of naive, `--model`) would be
    read as that other one before the model's own parameters are known."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        m = re.match(r"argument --([\w-]+)(?:/--[\w-]+)*: (.*)", message)
        if m:
            raise StockLabError(f"{m.group(1).replace('-', '_')}: {m.group(2)}")
        raise StockLabError(message)


def _arg_type(typ: type, name: str):
    def parse(text: str):
        try:
            return convert(text, typ, name)
        except StockLabError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None

    parse.__name__ = typ.__name__  # argparse names the type in its own messages
    return parse


def add_arguments(parser: argparse.ArgumentParser, cfg, seen: set[str] | None = None, title: str | None = None):
    """One `--name` flag per field of dataclass instance `cfg` (its values are the shown defaults).

    Flags default to "not given" (argparse.SUPPRESS), so the parsed namespace holds exactly the
    values the user passed: presets and jobs can tell an explicit value from a default.
    """
    seen = set() if seen is None else seen
    group = parser.add_argument_group(title) if title else parser
    types = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        if f.name in seen:
            continue
        seen.add(f.name)
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = getattr(cfg, f.name)
        shown = repr(default) if default == "" else default
        helptext = f.metadata.get("help", "")
        group.add_argument(
            *names,
            dest=f.name,
            type=_arg_type(types[f.name], f.name),
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            metavar=None if f.metadata.get("choices") else types[f.name].__name__.upper(),
            # argparse %-formats help texts: a literal % (a strftime example) is written %%
            help=(f"{helptext} (default: {shown})" if helptext else f"(default: {shown})").replace("%", "%%"),
        )
    return seen
