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


def test_a_temporary_checkout_resolves_to_the_launcher_then_the_store_then_a_fallback(checkout, monkeypatch, tmp_path):
    assert home.in_temporary_checkout(checkout)
    assert not home.in_temporary_checkout(tmp_path)  # a user's folder: the job stays there
    assert home.resolve_home(tmp_path) is None
    launched, why = home.resolve_home(checkout)  # this test's own ancestors work elsewhere
    assert launched != checkout and "mlflow run" in why
    monkeypatch.setattr(home, "launcher_dir", lambda cwd: None)
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
