"""The documentation names only what exists: every job and parameter in a command of the README
or docs/ is one the CLI accepts, and the README's test and lint commands are the ones CI runs."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import ROOT

from stocklab.cli import JOBS
from stocklab.config import JOB_CONFIGS
from stocklab.models import MODELS

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a command in a code block or inline code: `mlflow run ... -e <job>` or `stocklab <job> ...`
COMMAND = re.compile(r"(mlflow run [^`\n#]*|(?:^|(?<=`))stocklab [a-z_]+\b[^`\n#]*)", re.MULTILINE)


def _parameters(job: str) -> set[str]:
    names = {f.name for f in dataclasses.fields(JOB_CONFIGS[job])}
    if job in ("train", "tune"):  # and every model's hyper-parameters (`-P hidden_size=64`)
        names |= {f.name for _, cfg in MODELS.values() for f in dataclasses.fields(cfg)}
    return names


def _commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for match in COMMAND.finditer(page.read_text()):
            found.append((page.name, match.group(1).strip()))
    return found


def _named(command: str) -> tuple[str | None, list[str]]:
    """(the job, the parameter names) of one documented command."""
    words = command.replace("<", "'<").replace(">", ">'").split()
    if words[0] == "stocklab":
        return words[1], [w[2:] for w in words[2:] if w.startswith("--") and w != "--help"]
    if "-e" not in words:
        return None, []  # `mlflow run <uri>`: the default entry point, no parameters
    job = words[words.index("-e") + 1]
    params = [words[i + 1].split("=", 1)[0] for i, w in enumerate(words[:-1]) if w == "-P"]
    return job, params


def test_the_pages_hold_commands():
    assert len(_commands()) >= 20  # the parser below found them: the checks are not vacuous


@pytest.mark.parametrize("page, command", _commands(), ids=lambda v: v if len(v) < 40 else v[:40])
def test_every_documented_job_and_parameter_exists(page, command):
    job, params = _named(command)
    if job is None:
        return
    assert job in JOBS, f"{page}: `{command}` names no job {job!r}"
    unknown = [p for p in params if p not in _parameters(job)]
    assert not unknown, f"{page}: `{command}`: {job} has no parameter {unknown}"


def _ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_readmes_test_and_lint_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"# 2\. install, then run the tests\n(.+)\n", readme).group(1).strip()
    assert quick in _ci_commands(), f"README quick start's test command is not what .ci/run runs: {quick}"
    lint = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("ruff ")]
    assert lint, "README names no ruff command"
    for line in lint:
        for part in line.split("&&"):
            assert part.strip() in _ci_commands(), f"README's `{part.strip()}` is not what .ci/run runs"
