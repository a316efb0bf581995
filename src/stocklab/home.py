"""Where a job's relative paths and default state resolve: never inside MLflow's temporary checkout.

`mlflow run <git URI>` (or a zip URI) fetches the project into a fresh `tempfile.mkdtemp()`
folder and runs the entry point's command there. Everything a job resolves against its working
directory would land in that throw-away folder: the default Optuna journal (a rerun of the same
study would start again), `predict`'s output, the parsed-panel cache, a relative `-P data=...`,
and the artifact root of experiments the job creates (MLflow resolves `./mlruns` against it).

So before anything else, a job moves to its home:
  1. `$STOCKLAB_HOME` when it is set (always: one documented place for state);
  2. in MLflow's temporary checkout: the directory `mlflow run` was started in, i.e. the working
     directory of the nearest ancestor process outside the checkout (the `mlflow run` CLI, or the
     Python program that called `mlflow.projects.run`), read with psutil;
  3. failing that (no such ancestor, e.g. another launcher): the directory of a local tracking
     store (MLflow passes its URI absolute), else `~/.stocklab`;
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


def launcher_dir(cwd: Path) -> Path | None:
    """The working directory of the nearest ancestor process that is not in `cwd`: the process
    that launched this job's run (None when it cannot be read)."""
    import psutil

    try:
        for parent in psutil.Process().parents():
            try:
                where = Path(parent.cwd()).resolve()
            except (psutil.Error, OSError):  # another user's process, or gone
                continue
            if where != cwd:
                return where
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
    if not in_temporary_checkout(cwd, environ):
        return None
    launched = launcher_dir(cwd)
    if launched is not None:
        return launched, "the directory `mlflow run` was started in"
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
    if in_temporary_checkout(cwd):
        print(
            f"stocklab: relative paths and default state resolve against {home} ({why}), "
            f"not MLflow's temporary checkout {cwd}",
            file=sys.stderr,
        )
    return home
