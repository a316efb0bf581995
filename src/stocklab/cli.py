"""Command line: `stocklab <job> --param value ...` (the MLproject entry points call this).

    stocklab train --data sample --model lstm --epochs 5
    python -m stocklab.cli train --model cnn2d --variant deep

Arguments are generated from the config dataclasses, so a default lives in exactly one place.
Model hyper-parameters (e.g. --hidden_size, --variant) come from the chosen model's config.
User errors print one line (`stocklab: error: <param or file>: <problem>`) and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from stocklab.config import StockLabError, TrainConfig, update
from stocklab.models import MODELS


def _add_fields(parser: argparse.ArgumentParser, cfg, seen: set[str]) -> None:
    for f in dataclasses.fields(cfg):
        if f.name in seen:
            continue
        seen.add(f.name)
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = getattr(cfg, f.name)
        helptext = f.metadata.get("help", "")
        parser.add_argument(*names, dest=f.name, default=None, help=f"{helptext} (default: {default})")


def _split_model_args(args: dict, model: str) -> dict:
    """Check that model-config values belong to the chosen model."""
    if model not in MODELS:
        raise StockLabError(f"model: unknown model '{model}' (choose from {', '.join(MODELS)})")
    own = {f.name for f in dataclasses.fields(MODELS[model][1])}
    for key in args:
        if key not in own:
            raise StockLabError(f"{key}: not a parameter of model '{model}' (it has: {', '.join(sorted(own))})")
    return args


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stocklab train", description="Train one model (one MLflow run).")
    seen: set[str] = set()
    _add_fields(p, TrainConfig(), seen)
    for _, default_cfg in MODELS.values():
        _add_fields(p, default_cfg, seen)
    return p


def _train_config(values: dict) -> tuple[TrainConfig, dict]:
    """TrainConfig and model overrides from parsed CLI values, with a preset applied underneath:
    a value that differs from its built-in default always wins over the preset."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = update(TrainConfig(), {k: v for k, v in values.items() if k in train_fields})
    model_args = {k: v for k, v in values.items() if k not in train_fields and v is not None}
    if given.preset:
        from stocklab.presets import preset_values

        default = TrainConfig()
        preset = preset_values(given.preset)
        explicit = {k for k in train_fields if getattr(given, k) != getattr(default, k)}
        given = update(given, {k: v for k, v in preset.items() if k in train_fields and k not in explicit})
        if given.model == preset.get("model"):
            model_args = {**{k: v for k, v in preset.items() if k not in train_fields}, **model_args}
    return given, _split_model_args(model_args, given.model)


def cmd_train(argv: list[str]) -> int:
    args, unknown = _train_parser().parse_known_args(argv)
    if unknown:
        raise StockLabError(f"{unknown[0].lstrip('-')}: unknown parameter for train")
    cfg, model_args = _train_config(vars(args))
    from stocklab.train import run_train  # heavy imports (torch, mlflow) only when needed

    result = run_train(cfg, model_args)
    print(
        f"run {result['run_id']}: test_mse={result['test_mse']:.6g} naive_mse={result['naive_mse']:.6g} "
        f"mse_skill={result['mse_skill']:.4f} best_epoch={result['best_epoch']} "
        f"train_time_s={result['train_time_s']:.1f}"
    )
    return 0


def _parse(prog: str, cfg_cls, argv: list[str]):
    """Parse `--field value` pairs for one config dataclass into a validated instance."""
    p = argparse.ArgumentParser(prog=f"stocklab {prog}")
    _add_fields(p, cfg_cls(), set())
    args, unknown = p.parse_known_args(argv)
    if unknown:
        raise StockLabError(f"{unknown[0].lstrip('-')}: unknown parameter for {prog}")
    return update(cfg_cls(), vars(args))


def cmd_evaluate(argv: list[str]) -> int:
    from stocklab.evaluate import EvaluateConfig, run_evaluate

    res = run_evaluate(_parse("evaluate", EvaluateConfig, argv))
    shown = {k: v for k, v in res.items() if isinstance(v, float)}
    print(f"run {res['run_id']} (source {res['source_run_id']}): " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    return 0


def cmd_tune(argv: list[str]) -> int:
    from stocklab.tune import TuneConfig, run_tune

    res = run_tune(_parse("tune", TuneConfig, argv))
    print(f"study done: best value {res['best_value']} (trial {res.get('best_trial')}), trials {res['states']}")
    return 0


def cmd_promote(argv: list[str]) -> int:
    import mlflow

    from stocklab.promote import PromoteConfig, run_promote

    cfg = _parse("promote", PromoteConfig, argv)
    with mlflow.start_run():  # an audit trail of what changed
        res = run_promote(cfg)
        mlflow.set_tag("stocklab.promote", res["action"][:5000])
    return 0


def cmd_predict(argv: list[str]) -> int:
    from stocklab.predict import PredictConfig, run_predict

    run_predict(_parse("predict", PredictConfig, argv))
    return 0


def cmd_benchmark(argv: list[str]) -> int:
    from stocklab.benchmark import BenchmarkConfig, run_benchmark

    run_benchmark(_parse("benchmark", BenchmarkConfig, argv))
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "tune": cmd_tune,
    "promote": cmd_promote,
    "predict": cmd_predict,
    "benchmark": cmd_benchmark,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: stocklab {{{','.join(COMMANDS)}}} [--param value ...]", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    try:
        return COMMANDS[argv[0]](argv[1:])
    except StockLabError as e:
        print(f"stocklab: error: {e}", file=sys.stderr)
        return 2
    except MlflowException as e:  # e.g. an unusable MLFLOW_TRACKING_URI: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"stocklab: error: MLflow: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
