"""Command line: `stocklab <job> --param value ...` (the MLproject entry points call this).

    stocklab --help
    stocklab train --data sample --model lstm --epochs 5
    stocklab train --model cnn2d --help        # cnn2d's own hyper-parameters and defaults
    python -m stocklab.cli tune --model gru --n_trials 4

Every flag is generated from the job's config dataclass (config.py) and, for `train`/`tune`,
the chosen model's config, so a default lives in exactly one place. A preset (`--preset`) sets
values underneath: any value given explicitly wins, also when it equals the default.
User errors print one line (`stocklab: error: <param or file>: <problem>`) and exit 2.
"""

from __future__ import annotations

import dataclasses
import sys

from stocklab.config import (
    JOB_CONFIGS,
    RECIPES,
    ArgumentParser,
    PromoteConfig,
    StockLabError,
    TrainConfig,
    add_arguments,
    split_params,
    with_values,
)
from stocklab.errors import one_line

JOBS = {
    "train": ("train one model, one configuration -> one MLflow run", "stocklab train --model gru --epochs 5"),
    "tune": (
        "an Optuna study; every trial is a nested MLflow run; registers the best model",
        "stocklab tune --model lstm --n_trials 8",
    ),
    "evaluate": (
        "re-score a logged model on a split (metrics, tear sheet) into a new run",
        "stocklab evaluate --model_uri models:/stocklab-lstm@champion",
    ),
    "promote": (
        "move the registry alias `champion` to the best version, on a validation metric",
        "stocklab promote --model lstm",
    ),
    "predict": (
        "score each ticker's latest window with the champion model",
        "stocklab predict --model lstm --data path/to/csvs --output preds.csv",
    ),
    "benchmark": (
        "speed (pipeline vs the source code), models (every family and factor, the model report) or recovery "
        "(planted signals)",
        "stocklab benchmark --suite models",
    ),
}


def top_help() -> str:
    width = max(map(len, JOBS))
    lines = [
        "usage: stocklab <job> [--param value ...]   (stocklab <job> --help lists a job's parameters)",
        "",
        "Leak-free deep-learning stock-return research, tracked in MLflow.",
        "",
        "jobs:",
    ]
    for name, (what, example) in JOBS.items():
        lines += [f"  {name:<{width}}  {what}", f"  {'':<{width}}    e.g. {example}"]
    lines += ["", "As MLflow Project entry points: mlflow run . -e <job> --env-manager local -P param=value"]
    return "\n".join(lines)


def _model_fields(model: str) -> set[str]:
    from stocklab.models import MODELS

    return {f.name for f in dataclasses.fields(MODELS[model][1])}


def _model_and_preset(argv: list[str], cls) -> tuple[str, dict]:
    """The model a train/tune command is about (explicit, else the preset's, else the
    default) and the preset's values, read before the full parser is built."""
    from stocklab.models import MODELS
    from stocklab.presets import preset_values

    pre = ArgumentParser(add_help=False)
    pre.add_argument("--model", default=None)
    pre.add_argument("--preset", default="")
    known, _ = pre.parse_known_args(argv)
    preset = preset_values(known.preset) if known.preset else {}
    model = known.model or preset.get("model") or cls().model
    if model not in MODELS:
        raise StockLabError(f"model: unknown model '{model}' (choose from {', '.join(MODELS)})")
    return model, preset


def job_parser(job: str, cls, model: str | None = None) -> ArgumentParser:
    """The job's parser: one flag per config field (+ the model's hyper-parameters)."""
    what, example = JOBS[job]
    p = ArgumentParser(prog=f"stocklab {job}", description=f"{what[0].upper()}{what[1:]}.", epilog=f"e.g. {example}")
    seen = add_arguments(p, cls(), title=f"{job} parameters")
    if model is not None:
        from stocklab.models import MODELS

        title = f"{model} hyper-parameters (another model's: stocklab {job} --model NAME --help; models: "
        add_arguments(p, MODELS[model][1], seen, title=title + ", ".join(MODELS) + ")")
    return p


def _unknown(job: str, arg: str, model: str | None = None) -> StockLabError:
    from stocklab.models import MODELS

    key = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
    if model is not None:
        owners = [m for m in MODELS if key in _model_fields(m)]
        if owners:
            return StockLabError(f"{key}: not a parameter of model '{model}' (it is one of: {', '.join(owners)})")
    return StockLabError(f"{key}: unknown parameter for {job}")


def parse_model_job(job: str, argv: list[str], cls=TrainConfig):
    """(config, model overrides, names given explicitly) for `train`/`tune`.

    Values stack: the config's defaults < the recipe's values (config.RECIPES) < the preset's
    values < explicit flags; the recipe is the explicit one, else the preset's, else the default
    (cs). A preset's model hyper-parameters apply only when the preset's model is the one
    being trained.
    """
    model, preset = _model_and_preset(argv, cls)
    ns, unknown = job_parser(job, cls, model).parse_known_args(argv)
    if unknown:
        raise _unknown(job, unknown[0], model)
    explicit = vars(ns)
    from_preset, preset_model = split_params(preset, cls)
    if preset.get("model", model) != model:
        preset_model = {}  # another model's hyper-parameters
    values, model_args = split_params(explicit, cls)
    recipe = values.get("recipe") or from_preset.get("recipe") or cls().recipe
    if recipe not in RECIPES:
        raise StockLabError(f"recipe: {recipe!r} must be one of {', '.join(RECIPES)}")
    from stocklab.models import recipe_for

    values = {**recipe_for(model, recipe), **from_preset, **values, "model": model, "recipe": recipe}
    cfg, model_args = with_values(cls(), values), {**preset_model, **model_args}
    check_not_fixed(cfg, model_args, set(explicit))
    return cfg, model_args, set(explicit)


def check_not_fixed(cfg: TrainConfig, model_args: dict, explicit: set[str]) -> None:
    """An explicit value that the model's definition replaces (StockModel.fixed_inputs: cnn_ta's
    one-day window, a factor's bars and look-back, lgbm's epochs from its rounds) is an error:
    the run would otherwise train, and log, something other than what was asked for."""
    from stocklab.models import fixed_values

    for key, value in fixed_values(cfg.model, model_args).items():
        if key in explicit and getattr(cfg, key) != value:
            raise StockLabError(
                f"{key}: {cfg.model} fixes {key}={value} from its definition, so {key}={getattr(cfg, key)!r} "
                f"would be ignored; drop it{FIXED_HINTS.get((cfg.model, key), '')}"
            )


# how to ask for what a fixed input would have changed
FIXED_HINTS = {("lgbm", "epochs"): " (lgbm's budget is n_estimators, in epochs of rounds_per_epoch rounds)"}


def parse_job(job: str, argv: list[str]):
    """A validated-type config instance for a job without model hyper-parameters."""
    cls = JOB_CONFIGS[job]
    ns, unknown = job_parser(job, cls).parse_known_args(argv)
    if unknown:
        raise _unknown(job, unknown[0])
    return with_values(cls(), vars(ns))


def cmd_train(argv: list[str]) -> int:
    cfg, model_args, _ = parse_model_job("train", argv)
    from stocklab.jobs.train import run_train  # heavy imports (torch, mlflow) only when needed

    result = run_train(cfg, model_args)
    print(
        f"run {result['run_id']}: test_mse={result['test_mse']:.6g} test_naive_mse={result['test_naive_mse']:.6g} "
        f"test_mse_skill={result['test_mse_skill']:.4f} test_rank_ic={result.get('test_rank_ic', float('nan')):.4f} "
        f"valid_rank_ic={result.get('valid_rank_ic', float('nan')):.4f} valid_loss_min={result['valid_loss_min']:.6g} "
        f"train_best_epoch={result['train_best_epoch']} train_time_s={result['train_time_s']:.1f}"
    )
    return 0


def cmd_tune(argv: list[str]) -> int:
    from stocklab.config import TuneConfig

    cfg, model_args, explicit = parse_model_job("tune", argv, TuneConfig)
    from stocklab.jobs.tune import run_tune

    res = run_tune(cfg, model_args, fixed=explicit)
    print(f"study done: best value {res['best_value']} (trial {res.get('best_trial')}), trials {res['states']}")
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    from stocklab.jobs.evaluate import run_evaluate

    res = run_evaluate(parse_job("evaluate", argv))
    shown = {k: v for k, v in res.items() if isinstance(v, float)}
    print(f"run {res['run_id']} (source {res['source_run_id']}): " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    return 0


def cmd_promote(argv: list[str]) -> int:
    import mlflow

    from stocklab.jobs.promote import run_promote
    from stocklab.tracking import job_run

    cfg: PromoteConfig = parse_job("promote", argv)
    # an audit trail of what changed, next to the registry's own history
    with job_run(cfg.experiment or "stocklab-registry", bool(cfg.experiment), run_name=f"promote {cfg.model}"):
        mlflow.set_tag("stocklab.role", "promote")
        res = run_promote(cfg)
        mlflow.set_tag("stocklab.promote", res["action"][:5000])
    return 0


def cmd_predict(argv: list[str]) -> int:
    from stocklab.jobs.predict import run_predict

    run_predict(parse_job("predict", argv))
    return 0


def cmd_benchmark(argv: list[str]) -> int:
    from stocklab.jobs.benchmark import run_benchmark

    run_benchmark(parse_job("benchmark", argv))
    return 0


COMMANDS = {
    "train": cmd_train,
    "tune": cmd_tune,
    "evaluate": cmd_evaluate,
    "promote": cmd_promote,
    "predict": cmd_predict,
    "benchmark": cmd_benchmark,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(top_help(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"stocklab: error: unknown job '{argv[0]}' (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    from stocklab.cpu_share import passive_openmp, register_job
    from stocklab.home import enter_home

    enter_home()  # first: relative paths, default state and MLflow's ./mlruns resolve against it
    passive_openmp()  # before torch loads OpenMP (below): waiting threads sleep
    register_job()  # other stocklab jobs on this machine leave this one its share of the cores
    import mlflow
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from stocklab.errors import mask_secrets
    from stocklab.interrupts import install_signal_handlers
    from stocklab.tracking import check_tracking_server

    install_signal_handlers()  # SIGTERM ends the job's runs KILLED, like Ctrl-C
    try:
        if not any(a in ("-h", "--help") for a in argv[1:]):
            check_tracking_server()
        return COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt as e:
        print(f"stocklab: {one_line(e) if str(e) else 'interrupted'}; open runs ended KILLED", file=sys.stderr)
        return 130
    except StockLabError as e:
        print(f"stocklab: error: {one_line(e)}", file=sys.stderr)
        return 2
    except MlflowException as e:  # e.g. an unusable MLFLOW_TRACKING_URI: one line, not a traceback
        print(f"stocklab: error: MLflow: {one_line(e)}", file=sys.stderr)
        return 1
    except SQLAlchemyError as e:  # a database store that fails under MLflow (read-only, locked, full disk)
        uri = mask_secrets(mlflow.get_tracking_uri())
        print(f"stocklab: error: MLFLOW_TRACKING_URI: the store {uri} failed: {one_line(e, 300)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
