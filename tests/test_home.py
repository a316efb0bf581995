"""Where a job's relative paths and default state resolve (stocklab.home): never inside the
temporary checkout `mlflow run <git URI>` makes (the rerun itself: test_e2e.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from stocklab import home
from stocklab.cli import main


@pytest.fixture
def checkout(monkeypatch):
    """A folder like the one MLflow fetches a git project into, for a run it launched."""
    with tempfile.TemporaryDirectory(prefix="tmp") as tmp:
        (Path(tmp) / "MLproject").write_text("name: stocklab\n")
        monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
        yield Path(tmp).resolve()


def test_a_job_mlflow_run_started_works_where_it_was_launched(checkout, monkeypatch, tmp_path):
    assert home.in_temporary_checkout(checkout) and home.launched_by_mlflow_run(checkout)
    assert not home.in_temporary_checkout(tmp_path)
    assert home.resolve_home(tmp_path) is None  # not a project folder: the job stays
    monkeypatch.setattr(home, "launcher_dir", lambda: tmp_path / "caller")
    assert home.resolve_home(checkout) == (tmp_path / "caller", "the directory `mlflow run` was started in")
    project = tmp_path / "clone"  # `mlflow run ~/clone` from elsewhere: the caller's folder too
    project.mkdir()
    (project / "MLproject").write_text("name: stocklab\n")
    assert home.resolve_home(project)[0] == tmp_path / "caller"
    monkeypatch.setattr(home, "launcher_dir", lambda: None)  # no readable launcher
    assert home.resolve_home(project) is None  # a local project is the user's folder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert home.resolve_home(checkout) == (tmp_path / "store", "the tracking store's directory")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    where, why = home.resolve_home(checkout)
    assert where == home.FALLBACK.expanduser().resolve() and "STOCKLAB_HOME" in why
    monkeypatch.setenv("STOCKLAB_HOME", str(tmp_path / "mine"))  # the documented override wins
    assert home.resolve_home(checkout) == ((tmp_path / "mine").resolve(), "$STOCKLAB_HOME")


def test_stocklab_home_is_where_a_job_resolves_relative_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOCKLAB_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert main(["train", "--data", "bars"]) == 2
    err = capsys.readouterr().err
    assert f"looked for '{tmp_path / 'state' / 'bars'}'" in err  # the absolute path it tried
    assert Path.cwd() == tmp_path / "state" and (tmp_path / "state" / "mlflow.db").exists()
