"""Where a job's relative paths and default state resolve: where the user launched it.

`mlflow run <project>` runs the entry point's command in the project's folder: the clone itself
for a local path, a fresh `tempfile.mkdtemp()` checkout for a git (or zip) URI. Everything a job
resolves against its working directory would land there, in a throw-away folder for a URI:
the default Optuna journal (a rerun of the same study would start again), `predict`'s output,
the parsed-panel cache, a relative `-P data=...`, a relative `sqlite:///mlflow.db` store and the
artifact root of experiments the job creates (MLflow resolves `./mlruns` against it).

So before anything else, a job moves to its home:
  1. `$STOCKLAB_HOME` when it is set (always: one documented place for state);
  2. launched by `mlflow run` (MLFLOW_RUN_ID set, the working directory an MLflow project):
     the directory `mlflow run` was started in, i.e. the working directory of the process that
     launched the command (the nearest ancestor that is not a shell: the `mlflow run` CLI, or the
     Python program that called `mlflow.projects.run`), read with psutil;
  3. failing that in a temporary checkout: the directory of a local tracking store (MLflow
     passes its URI absolute), else `~/.stocklab`;
and otherwise stays where it is, which is where the user launched it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HOME_ENV = "STOCKLAB_HOME"
FALLBACK = Path("~/.stocklab")


def in_temporary_checkout(cwd: Path, environ=os.environ) -> bool:
    """True in a project folder MLflow fetched for a run: MLFLOW_RUN_ID is set, the folder holds
    an MLproject and is one of tempfile.mkdtemp()'s (`tmp*` in the temp folder)."""
    temp = Path(tempfile.gettempdir()).resolve()
    return (
        bool(environ.get("MLFLOW_RUN_ID"))
        and (cwd / "MLproject").is_file()
        and cwd.parent == temp
        and cwd.name.startswith("tmp")
    )


SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "fish"}  # what MLflow runs the command with


def launched_by_mlflow_run(cwd: Path, environ=os.environ) -> bool:
    """True when MLflow Projects started this job: MLFLOW_RUN_ID is set and the working
    directory is the project (its MLproject)."""
    return bool(environ.get("MLFLOW_RUN_ID")) and (cwd / "MLproject").is_file()


def launcher_dir() -> Path | None:
    """The working directory of the process that launched this job's command: the nearest
    ancestor that is not a shell (None when it cannot be read)."""
    import psutil

    try:
        for parent in psutil.Process().parents():
            try:
                if parent.name() not in SHELLS:
                    return Path(parent.cwd()).resolve()
            except (psutil.Error, OSError):  # another user's process, or gone
                return None
    except psutil.Error:
        pass
    return None


def local_store_dir(uri: str) -> Path | None:
    """The folder of an absolute local tracking store (sqlite:////abs/mlflow.db, file:///abs/mlruns)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :].split("?")[0])
    elif uri.startswith("file://"):
        path = Path(uri[len("file://") :])
    else:
        return None
    return path.parent if path.is_absolute() else None


def resolve_home(cwd: Path, environ=os.environ) -> tuple[Path, str] | None:
    """(the folder a job should work in, why) when it is not `cwd`; None to stay in `cwd`."""
    if environ.get(HOME_ENV):
        home = Path(environ[HOME_ENV]).expanduser().resolve()
        return (home, f"${HOME_ENV}") if home != cwd else None
    if not launched_by_mlflow_run(cwd, environ):
        return None
    launched = launcher_dir()
    if launched is not None:
        return (launched, "the directory `mlflow run` was started in") if launched != cwd else None
    if not in_temporary_checkout(cwd, environ):
        return None  # a local project: its folder is the user's
    store = local_store_dir(environ.get("MLFLOW_TRACKING_URI", ""))
    if store is not None:
        return store, "the tracking store's directory"
    return FALLBACK.expanduser().resolve(), f"no launch directory found; set ${HOME_ENV} to choose"


def enter_home() -> Path:
    """Move the process to its home (module docstring) before any path or MLflow store is
    resolved; say so on stderr when it leaves a temporary checkout. Returns the working directory."""
    cwd = Path.cwd().resolve()
    found = resolve_home(cwd)
    if found is None:
        return cwd
    home, why = found
    try:
        home.mkdir(parents=True, exist_ok=True)
        os.chdir(home)
    except OSError as e:
        raise SystemExit(f"stocklab: error: {HOME_ENV}: cannot work in '{home}' ({e.strerror})") from None
    if launched_by_mlflow_run(cwd):
        print(f"stocklab: relative paths and default state resolve against {home} ({why}), not {cwd}",
              file=sys.stderr)  # fmt: skip
    return home
