"""The command-line interface is a contract: every job's parameters (name, type, choices,
default) for every model, and every MLproject entry point, as committed in interface.json.
A change to it is deliberate: regenerate the file and the diff shows it in review.

    python tests/test_interface.py      # rewrite tests/interface.json from the code
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).with_name("interface.json")


def _parameters(parser: argparse.ArgumentParser) -> dict:
    out = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        default = action.default
        out[action.option_strings[0]] = {
            "type": getattr(action.type, "__name__", None),
            "choices": list(action.choices) if action.choices else None,
            "help": action.help,  # its default is written in the help text
            "default": None if default is argparse.SUPPRESS else default,
        }
    return out


def interface() -> dict:
    """Each job's own parameters, each model's hyper-parameters (train and tune add them), and
    the MLproject entry points."""
    from stocklab.cli import job_parser
    from stocklab.config import JOB_CONFIGS, ArgumentParser, add_arguments
    from stocklab.models import MODELS

    jobs = {job: _parameters(job_parser(job, cls)) for job, cls in JOB_CONFIGS.items()}
    models = {}
    for name, (_, defaults) in MODELS.items():
        parser = ArgumentParser(add_help=False)
        add_arguments(parser, defaults)
        models[name] = _parameters(parser)
    project = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    return {"jobs": jobs, "models": models, "mlproject": project}


def test_the_interface_is_the_committed_one():
    now, committed = interface(), json.loads(SNAPSHOT.read_text())
    assert now["mlproject"] == committed["mlproject"], "MLproject changed: python tests/test_interface.py"
    for part in ("jobs", "models"):
        assert set(now[part]) == set(committed[part])
        for name, params in committed[part].items():
            assert now[part][name] == params, f"{part}: {name} changed: python tests/test_interface.py rewrites it"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    SNAPSHOT.write_text(json.dumps(interface(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
