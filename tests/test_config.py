"""Configuration has one home: MLproject, argparse and the dataclasses agree."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import ROOT

from stocklab.cli import JOBS, job_parser, main, parse_job, parse_model_job
from stocklab.config import JOB_CONFIGS, TrainConfig, TuneConfig, convert, field_types
from stocklab.errors import StockLabError, describe, one_line
from stocklab.models import MODELS

MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())


def test_every_entry_point_is_a_job_with_a_config():
    assert set(MLPROJECT["entry_points"]) == set(JOB_CONFIGS) == set(JOBS)


@pytest.mark.parametrize("entry", sorted(JOB_CONFIGS))
def test_mlproject_params_are_dataclass_fields_with_the_same_default(entry):
    cls = JOB_CONFIGS[entry]
    types, defaults = field_types(cls), {f.name: f.default for f in dataclasses.fields(cls)}
    spec = MLPROJECT["entry_points"][entry]
    for name, param in (spec.get("parameters") or {}).items():
        assert name in types, f"{entry}: MLproject parameter '{name}' is not a {cls.__name__} field"
        if "default" in param:
            assert convert(param["default"], types[name], name) == defaults[name], (entry, name)
        numeric = types[name] in (int, float)
        assert param.get("type", "string") == ("float" if numeric else "string"), (entry, name, param)
        assert f"--{name} {{{name}}}" in spec["command"], f"{entry}: '{name}' is declared but not passed"


def test_mlproject_declares_nothing_a_preset_changes():
    """A declared param is always passed (and logged), so it would override every preset."""
    from stocklab.presets import PRESETS

    preset_keys = set().union(*(p.keys() for p in PRESETS.values()))
    for entry in ("train", "tune"):
        declared = set(MLPROJECT["entry_points"][entry]["parameters"])
        assert not declared & preset_keys, (entry, declared & preset_keys)


@pytest.mark.parametrize("job", ["train", "tune"])
@pytest.mark.parametrize("model", ["lstm", "cnn2d", "rnn"])
def test_help_lists_every_parameter_once_with_the_models_own_defaults(job, model, capsys):
    cls = TuneConfig if job == "tune" else TrainConfig
    with pytest.raises(SystemExit) as e:
        parse_model_job(job, ["--model", model, "--help"], cls)
    assert e.value.code == 0
    out = capsys.readouterr().out
    flags = [a.option_strings[0] for a in job_parser(job, cls, model)._actions if a.option_strings[0] != "-h"]
    assert len(flags) == len(set(flags))
    expected = {f.name for f in dataclasses.fields(cls)} | {f.name for f in dataclasses.fields(MODELS[model][1])}
    assert {f[2:] for f in flags} == expected
    helps = {a.dest: a.help for a in job_parser(job, cls, model)._actions}
    mcfg = MODELS[model][1]
    for f in dataclasses.fields(mcfg):  # the chosen model's defaults, not another model's
        assert helps[f.name].endswith(f"(default: {getattr(mcfg, f.name)})"), (f.name, helps[f.name])
    if hasattr(mcfg, "hidden_size"):
        assert f"(default: {mcfg.hidden_size})" in " ".join(out.split())


def test_tune_accepts_every_train_parameter():
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert train_fields <= {f.name for f in dataclasses.fields(TuneConfig)}
    argv = ["--split", "0.5,0.25,0.25", "--scaler", "minmax", "--label_scale", "10", "--window_stride", "2"]
    cfg, _, explicit = parse_model_job("tune", argv + ["--hidden_size", "16"], TuneConfig)
    assert (cfg.split, cfg.scaler, cfg.label_scale, cfg.window_stride) == ("0.5,0.25,0.25", "minmax", 10.0, 2)
    assert cfg.epochs == 4 and TrainConfig().epochs == 10  # each job keeps its own default
    assert cfg.train_config() == TrainConfig(**{k: getattr(cfg, k) for k in train_fields})
    assert {"split", "scaler", "hidden_size"} <= explicit


@pytest.mark.parametrize(
    "argv, message",
    [
        (["promote", "--direction", "up"], "direction: invalid choice: 'up'"),
        (["evaluate", "--split", "train", "--run_id", "x"], "split: invalid choice: 'train'"),
        (["predict", "--bogus", "1"], "bogus: unknown parameter for predict"),
        (["tune", "--n_trials", "two"], "n_trials: 'two' is not a valid int"),
        (["tune", "--register", "maybe"], "register: 'maybe' is not a boolean"),
        (["train", "--variant", "deep"], "variant: not a parameter of model 'lstm'"),
        # a value the model's definition replaces is refused, not silently changed
        (["train", "--model", "cnn_ta", "--seq_len", "20"], "seq_len: cnn_ta fixes seq_len=1"),
        (["tune", "--model", "lgbm", "--epochs", "3"], "epochs: lgbm fixes epochs=20"),
        (["train", "--model", "lgbm", "--n_estimators", "100", "--epochs", "3"], "epochs: lgbm fixes epochs=4"),
        (["train", "--model", "factor", "--scaler", "standard"], "scaler: factor fixes scaler=none"),
    ],
)
def test_bad_parameters_are_one_line_errors(argv, message, capsys):
    """Each fails in parsing, before any data is read or any run is recorded."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stocklab: error: ") and message in err[0], err


def test_top_level_help_describes_every_job(capsys):
    for argv in (["--help"], ["-h"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert all(f"  {job}" in out for job in JOBS) and "e.g. stocklab tune" in out
    assert main([]) == 2 and "jobs:" in capsys.readouterr().err


def test_parse_job_types_values():
    cfg = parse_job("benchmark", ["--n_tickers", "3", "--device", "cpu"])
    assert cfg.n_tickers == 3 and cfg.device == "cpu" and cfg.seq_len == 96


def test_error_lines_never_crash_on_empty_messages():
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(RuntimeError("\n\n  second line\nthird")) == "second line"
    assert describe(KeyError()) == "KeyError" and describe(ValueError("bad\nmore")) == "ValueError: bad"


def test_no_job_imports_another_job():
    """Jobs are thin and one-way: shared steps live below them (pipeline, study, registry, ...),
    and only the CLI imports a job."""
    import ast

    pkg = ROOT / "src" / "stocklab"
    for path in pkg.rglob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):  # module level and inside functions
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        jobs = {m for m in imported if m.startswith("stocklab.jobs")}
        if path.name == "cli.py":
            continue
        assert not jobs, f"{path.relative_to(pkg)} imports job(s) {sorted(jobs)}"


def _bounded_fields():
    """(config class, field) for every field of every job and model config that declares bounds."""
    classes = list(JOB_CONFIGS.values()) + [type(default) for _, default in MODELS.values()]
    for cls in dict.fromkeys(classes):  # in order, once (TuneConfig repeats TrainConfig's fields)
        for f in dataclasses.fields(cls):
            if "bounds" in f.metadata:
                yield pytest.param(cls, f, id=f"{cls.__name__}.{f.name}")


@pytest.mark.parametrize("cls, f", list(_bounded_fields()))
def test_a_value_past_a_declared_bound_is_a_one_line_error_and_the_bound_itself_is_allowed(cls, f):
    """One validation style: bounds live on the fields (`opt(ge=..)`), `check_fields` enforces
    them for job and model configs alike, and the message names the field and its rule."""
    from stocklab.fields import bounds_text, check_fields

    typ = field_types(cls)[f.name]
    step = 1 if typ is int else 1e-9
    for key, value in f.metadata["bounds"].items():
        outside = {"ge": value - step, "gt": value, "le": value + step, "lt": value}[key]
        with pytest.raises(StockLabError) as e:
            check_fields(dataclasses.replace(cls(), **{f.name: typ(outside)}))
        assert str(e.value).startswith(f"{f.name}: ") and bounds_text(f.metadata["bounds"]) in str(e.value)
        if key in ("ge", "le"):  # a closed bound is itself a valid value
            check_fields(dataclasses.replace(cls(), **{f.name: typ(value)}))


def test_the_numeric_sizes_of_every_config_declare_their_bounds():
    """A size, count or rate without a declared bound would take 0 or a negative value silently."""
    sizes = ("epochs", "batch_size", "seq_len", "horizon", "hidden_size", "num_layers", "d_model", "nhead",
             "channels", "kernel", "n_trials", "folds", "patience", "n_estimators", "dropout", "lr")  # fmt: skip
    classes = list(JOB_CONFIGS.values()) + [type(default) for _, default in MODELS.values()]
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if f.name in sizes and "bounds" not in f.metadata
    ]
    assert not missing, f"fields without declared bounds: {missing}"


def test_sections_are_frozen_views_of_train_config_fields_with_the_same_types():
    """FitOptions (the trainers) and BookOptions (the long-short book) take their values from a
    TrainConfig, whose fields stay the one CLI/MLflow surface and the one home of defaults."""
    from stocklab.config import BookOptions, FitOptions

    cfg = TrainConfig(lr=3e-4, epochs=7, quantiles=10, hold=0, horizon=5, cost_bps=2.5)
    fit = FitOptions.of(cfg)
    train_types = field_types(TrainConfig)
    for f in dataclasses.fields(FitOptions):
        assert field_types(FitOptions)[f.name] is train_types[f.name] and getattr(fit, f.name) == getattr(cfg, f.name)
    assert FitOptions.of(fit) is fit
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.lr = 1.0
    book = BookOptions.of(cfg)
    assert (book.quantiles, book.hold_days, book.cost_bps) == (10, 5, 2.5)  # hold 0: the label horizon


def test_each_benchmark_suite_reads_its_own_section_and_every_benchmark_parameter_is_read():
    """`benchmark` keeps one flat -P surface (BenchmarkConfig); each suite's runner gets its own
    frozen section, with the suite's defaults filled in, and no parameter is read by no suite."""
    from stocklab.config import BenchmarkConfig
    from stocklab.sections import SUITES

    bench_types = field_types(BenchmarkConfig)
    read = set()
    for suite, cls in SUITES.items():
        section = BenchmarkConfig(suite=suite, seeds=0, epochs=0, report="").section()
        assert type(section) is cls and section.suite == suite
        for f in dataclasses.fields(cls):
            assert field_types(cls)[f.name] is bench_types[f.name], (suite, f.name)
        read |= {f.name for f in dataclasses.fields(cls)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            section.device = "cpu"
    assert read == set(bench_types), set(bench_types) ^ read
    models = BenchmarkConfig(suite="models").section()
    assert (models.epochs, models.seeds, models.report) == (15, 2, "reports/models.md")
    group = BenchmarkConfig(suite="recovery", market="group").section()
    assert (group.epochs, group.seeds, group.report) == (30, 1, "reports/recovery_group.md")
    assert not hasattr(models, "seed000_steps") and not hasattr(group, "folds")


def test_an_explicit_value_equal_to_the_fixed_one_is_accepted():
    cfg, _, explicit = parse_model_job("train", ["--model", "cnn_ta", "--seq_len", "1"])
    assert cfg.seq_len == 1 and "seq_len" in explicit
    cfg, _, _ = parse_model_job("train", ["--model", "lgbm", "--n_estimators", "100", "--epochs", "4"])
    assert cfg.epochs == 4
