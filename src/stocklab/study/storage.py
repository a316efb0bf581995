"""Where a study lives: its Optuna storage (a journal file or an RDB URL), sampler and pruner.

`claim_study` creates or loads the study; a storage that cannot be opened is one line naming it
(password masked) and why, within seconds, never a driver traceback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.samplers import BaseSampler, TPESampler

from stocklab.config import DEFAULT_JOURNAL, DIRECTIONS, TUNE_METRICS, StockLabError, TuneConfig
from stocklab.errors import mask_secrets, one_line
from stocklab.study.budget import retry_stale_trial

STORAGE_ENV = "STOCKLAB_STORAGE"  # a storage URL kept out of -P values (MLflow logs those)


def make_storage(storage: str = DEFAULT_JOURNAL, heartbeat: int = 60):
    """An Optuna storage for a URL (RDB, with heartbeat and retry of stale trials) or a journal file."""
    if "://" in storage:
        engine_kwargs = {"pool_pre_ping": True}
        if storage.startswith(("postgresql", "mysql")):
            # an unreachable server fails in seconds, not after minutes of TCP retries
            engine_kwargs["connect_args"] = {"connect_timeout": 5}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(
                storage,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=retry_stale_trial,
            )
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    repair_journal(storage)
    # a journal file uses file locks, so several workers on one machine can share it (SQLite cannot)
    return JournalStorage(JournalFileBackend(storage))


def repair_journal(path: str) -> list[int]:
    """Drop the lines of an Optuna journal that are no log record (a crashed writer's torn last
    line, garbage from a bad copy), keeping the damaged file beside it; returns the 1-based
    numbers of the dropped lines. Optuna reads past a torn *last* line, but the next append
    glues onto it and from then on no read succeeds: resuming would destroy the study. Done
    under the journal's own lock, so no worker appends meanwhile."""
    import datetime
    import shutil

    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    file = Path(path)
    if not file.is_file() or file.stat().st_size == 0:
        return []
    with get_lock_file(JournalFileSymlinkLock(str(file))):
        lines = file.read_bytes().splitlines(keepends=True)
        bad = [i for i, line in enumerate(lines, 1) if not _is_record(line)]
        if not bad:
            return []
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        backup = file.with_name(f"{file.name}.damaged-{stamp}")
        shutil.copy2(file, backup)
        tmp = file.with_name(f".{file.name}.repair")
        tmp.write_bytes(b"".join(line for i, line in enumerate(lines, 1) if i not in bad))
        os.replace(tmp, file)
    shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    print(f"stocklab: warning: storage: {file} had {len(bad)} unreadable line(s) (line {shown}); they are "
          f"skipped, the damaged file is kept as {backup}", file=sys.stderr)  # fmt: skip
    return bad


def _is_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False  # torn: its writer died mid-line
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def make_pruner(name: str, epochs: int):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


class TrialSeededSampler(BaseSampler):
    """TPE whose random draws for a trial come from (seed, trial number) alone.

    Trial numbers are handed out by the storage, unique across workers, so concurrent workers
    never repeat each other's draws (with one shared seed they would draw the same ones), and a
    study's configurations depend on its seed and history, not on which worker ran what.
    `constant_liar` lets TPE treat running trials as bad ones, so concurrent workers also steer
    away from each other's open trials.
    """

    def __init__(self, seed: int, multi_objective: bool = False):
        self.seed = seed
        self._multi = multi_objective
        self._by_trial: dict[int, TPESampler] = {}

    def _for(self, trial) -> TPESampler:
        key = trial._trial_id
        if key not in self._by_trial:
            seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._by_trial[key] = TPESampler(seed=seed, constant_liar=not self._multi)
        return self._by_trial[key]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial._trial_id, None)

    def reseed_rng(self) -> None:  # draws are a function of (seed, trial number) by design
        pass


def resolve_storage(cfg: TuneConfig) -> str:
    """`storage`, else $STOCKLAB_STORAGE, else the default journal file."""
    return cfg.storage or os.environ.get(STORAGE_ENV, "") or DEFAULT_JOURNAL


def open_study(cfg: TuneConfig) -> optuna.Study:
    """Create or load the study; a storage that cannot be opened is one line naming it (password
    masked) and why, within seconds (`connect_timeout`), never a driver traceback."""
    return claim_study(cfg, claim=False)[0]


def claim_study(cfg: TuneConfig, claim: bool = True, source: str | None = None) -> tuple[optuna.Study, bool]:
    """(study, created): created is True for the one process whose call made the study.
    `source`: the data's fingerprint (data.check_source); a study resumed on other data, or
    with another model, is an error (their trials would be ranked together).

    Creating a study is atomic in every Optuna storage (the journal's log order, the RDB's unique
    study name), so of several brand-new workers started at once exactly one creates it; that
    one makes the study's parent MLflow run and the others wait for it (`run_tune`)."""
    url = resolve_storage(cfg)
    try:
        storage = make_storage(url, cfg.heartbeat)
        kwargs = dict(
            study_name=cfg.resolved_study_name(),
            storage=storage,
            directions=[DIRECTIONS[o] for o in TUNE_METRICS[cfg.metric]],
            sampler=TrialSeededSampler(cfg.seed, multi_objective=len(TUNE_METRICS[cfg.metric]) > 1),
            pruner=make_pruner(cfg.pruner, cfg.epochs * cfg.folds),  # steps count epochs across folds
        )
        if claim:
            try:
                study = optuna.create_study(**kwargs, load_if_exists=False)
            except optuna.exceptions.DuplicatedStudyError:
                pass  # another process (or an earlier run) made it: load it below
            else:
                with warnings.catch_warnings():  # "experimental" since Optuna 3.2, stable in use
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(list(TUNE_METRICS[cfg.metric]))  # named in the dashboard, dataframes
                study.set_user_attr(METRIC_ATTR, cfg.metric)
                study.set_user_attr(MODEL_ATTR, cfg.model)
                if source is not None:
                    study.set_user_attr(DATA_ATTR, source)
                return study, True
        study = optuna.create_study(**kwargs, load_if_exists=True)
        _check_same_objective(study, cfg, url)
        _check_same_model_and_data(study, cfg, source)
        return study, False
    except ImportError as e:  # Optuna re-raises the driver's ModuleNotFoundError as a bare ImportError
        scheme = url.split("://", 1)[0]
        driver = getattr(e, "name", None) or (scheme.split("+", 1)[1] if "+" in scheme else f"the {scheme} default")
        raise StockLabError(
            f"storage: {mask_secrets(url)} needs the database driver '{driver}', which is not installed "
            "(PostgreSQL: pip install 'psycopg[binary]' and a postgresql+psycopg:// URL)"
        ) from None
    except StockLabError:
        raise
    except ValueError as e:  # e.g. the study exists with other directions
        if isinstance(e, json.JSONDecodeError):  # a record that is not JSON: the file, not the name
            raise StockLabError(f"storage: the journal {url} is damaged ({one_line(e)})") from None
        raise StockLabError(f"study_name: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's OperationalError/ArgumentError, a bad journal path
        where = _host_port(url)
        raise StockLabError(f"storage: cannot open {mask_secrets(url)}{where}: {one_line(e, 300)}") from None


METRIC_ATTR = "stocklab_metric"
MODEL_ATTR, DATA_ATTR = "stocklab_model", "stocklab_data_fingerprint"


def _check_same_model_and_data(study: optuna.Study, cfg: TuneConfig, source: str | None) -> None:
    """A resumed study keeps its model and its data (studies made before they were recorded
    are not checked)."""
    model = study.user_attrs.get(MODEL_ATTR)
    if model is not None and model != cfg.model:
        raise StockLabError(
            f"model: study '{study.study_name}' tunes {model}, not {cfg.model}: rerun with --model {model} "
            "or start a new study with --study_name"
        )
    data = study.user_attrs.get(DATA_ATTR)
    if data is not None and source is not None and data != source:
        raise StockLabError(
            f"data: study '{study.study_name}' was run on other data (or read options) than '{cfg.data}': "
            "its trials would be ranked with these; rerun on its data or start a new study with --study_name"
        )


def _check_same_objective(study: optuna.Study, cfg: TuneConfig, url: str) -> None:
    """A loaded study keeps the objective it was made with: trials of another metric would be
    ranked together with its own (a rank IC read as a loss). Studies made before the metric was
    recorded are checked by their directions."""
    old = study.user_attrs.get(METRIC_ATTR)
    new_dirs = [DIRECTIONS[o] for o in TUNE_METRICS[cfg.metric]]
    old_dirs = [d.name.lower() for d in study.directions]
    if (old is not None and old != cfg.metric) or old_dirs != new_dirs:
        was = old or f"direction {', '.join(old_dirs)}"
        raise StockLabError(
            f"metric: study '{study.study_name}' in {mask_secrets(url)} optimises {was}, not {cfg.metric}: "
            f"rerun with --metric {old or '<its metric>'} or start a new study with --study_name"
        )


def _host_port(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f" (host {parts.hostname}, port {parts.port or 'default'})" if parts.hostname else ""
    except ValueError:
        return ""
