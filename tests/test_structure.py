"""The package's shape (scripts/structure.py) and its one extension point (model plug-ins)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from torch import nn

from stocklab.config import StockLabError
from stocklab.models import MODELS, load_plugins
from stocklab.models.lstm import LSTM, LSTMConfig

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_circle_no_module_over_450_lines_no_function_over_60():
    r = subprocess.run([sys.executable, str(ROOT / "scripts/structure.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


class Tiny(LSTM):
    """A family another package adds (here: an LSTM under another name)."""


PLUGIN_FAMILY = (Tiny, LSTMConfig(hidden_size=4))
NOT_A_FAMILY = (nn.Linear, LSTMConfig())


def _entry(name: str, attr: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{attr}", group="stocklab.models")


def test_a_package_adds_a_family_through_an_entry_point():
    models = load_plugins([_entry("tiny", "PLUGIN_FAMILY")], dict(MODELS))
    assert models["tiny"] == PLUGIN_FAMILY and "tiny" not in MODELS  # the registry given, not the global one
    cls, cfg = models["tiny"]
    assert cls(3, 5, cfg).rnn.hidden_size == 4 and issubclass(cls, LSTM)
    with pytest.raises(StockLabError, match="the name 'lstm' is already a model"):
        load_plugins([_entry("lstm", "PLUGIN_FAMILY")], dict(MODELS))
    with pytest.raises(StockLabError, match="must be \\(a StockModel subclass, an instance of its config dataclass\\)"):
        load_plugins([_entry("bad", "NOT_A_FAMILY")], dict(MODELS))
