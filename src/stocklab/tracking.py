"""MLflow helpers: experiments and job runs, saved UI views, params, the logged model."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import platform
import re
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import unquote

import mlflow
import numpy as np
import torch

from stocklab.errors import StockLabError, mask_secrets, one_line


def unquote_param(logged: str) -> str:
    """A param as the job saw it. `mlflow run` logs every -P value shell-quoted as it put it in
    the command (an empty value as `''`, a path with spaces as `'/my data'`); the shell removed
    the quotes before the job ran."""
    if logged.startswith("'") and logged.endswith("'") and len(logged) >= 2:
        try:
            parts = shlex.split(logged)
        except ValueError:
            return logged
        if len(parts) == 1 and shlex.quote(parts[0]) == logged:
            return parts[0]
        if logged == "''":
            return ""
    return logged


def _same(logged: str, value) -> bool:
    logged = unquote_param(str(logged))
    if logged == str(value):
        return True
    try:
        return float(logged) == float(value)
    except (TypeError, ValueError):
        return str(logged).lower() == str(value).lower()


# One naming scheme for metrics (docs/data-and-training.md, "What each run records"): every metric of a train,
# trial or evaluate run starts with what it measures, so `metrics.test_rank_ic` never mixes
# splits: train_ (the fit itself: losses, epochs, time, sizes), valid_, test_ (the split scored),
# or oos_ (walk-forward: the folds' out-of-sample periods concatenated and judged as one factor),
# after an optional `fold/` (one value per walk-forward fold, step = fold) or `fold_<k>/` (fold
# k's loss curve). MLflow's own system metrics keep its `system/` prefix.
METRIC_SPLITS = ("train", "valid", "test", "oos")
_METRIC_NAME = re.compile(rf"^(?:fold(?:_\d+)?/)?({'|'.join(METRIC_SPLITS)})_[a-z0-9_]+$")


def metric_split(name: str) -> str | None:
    """The split a metric name says it measures (METRIC_SPLITS), or None when it says none."""
    m = _METRIC_NAME.match(name)
    return m.group(1) if m else None


DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default" experiment
LAUNCHER = "launcher"


def use_experiment(name: str) -> str:
    """The id of experiment `name` (created if needed; no process-wide "active experiment" is
    set). Experiments are marked as model-training experiments, so the MLflow 3 UI opens them
    in its runs view instead of the GenAI one."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name)
        except mlflow.exceptions.MlflowException:  # another worker created it meanwhile
            exp_id = client.get_experiment_by_name(name).experiment_id
        exp = client.get_experiment(exp_id)
    if "mlflow.experimentKind" not in (exp.tags or {}):
        client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "custom_model_development")
    return exp.experiment_id


# The MLflow UI (3.x) lists an experiment's saved runs-table views under "Views" and opens one
# from `?viewStateShareKey=<id>`. Each is an experiment tag `mlflow.sharedViewState.<id>` holding
# {"name", "createdAt", "updatedAt", "state"}, `state` being the JSON of the table's search and
# column state (the UI compresses it when it saves one; plain JSON is read too).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_URL_KEY = "viewStateShareKey"


def save_runs_view(
    experiment_id: str,
    view_id: str,
    name: str,
    search_filter: str,
    order_by: str,
    ascending: bool,
    params: list[str],
    metrics: list[str],
    tags: list[str] = (),
    overwrite: bool = True,
) -> str:
    """Write (or refresh) a named runs-table view on the experiment: the runs `search_filter`
    keeps, sorted by `order_by`, with these params/metrics/tags as columns (`overwrite=False`
    keeps a view that exists, e.g. one the user changed with "Override saved view"). Returns the UI's
    path to it (`#/experiments/<id>/runs?viewStateShareKey=<view_id>&workflowType=...`)."""
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
    columns += [f"tags.`{t}`" for t in tags]
    state = {
        "searchFilter": search_filter,
        "orderByKey": order_by,
        "orderByAsc": ascending,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": [],
        "columnWidths": {},
    }
    client = mlflow.MlflowClient()
    key = VIEW_TAG_PREFIX + view_id
    now = int(time.time() * 1000)
    created = now
    old = client.get_experiment(experiment_id).tags.get(key)
    # workflowType: the sidebar of the model-training UI, whatever the browser used last
    path = f"#/experiments/{experiment_id}/runs?{VIEW_URL_KEY}={view_id}&workflowType=machine_learning"
    if old and not overwrite:
        return path
    if old:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            created = int(json.loads(old)["createdAt"])
    envelope = {"name": name, "createdAt": created, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, key, json.dumps(envelope))
    return path


def ui_link(path: str) -> str:
    """`path` (a UI route like `#/experiments/1/runs`) under the tracking server, or as the
    route to open in `mlflow ui` when the store is local."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path} (after `mlflow ui --backend-store-uri {uri}`)"


@contextlib.contextmanager
def job_run(
    experiment: str,
    explicit: bool = False,
    run_name: str | None = None,
    tags: dict | None = None,
    run_id: str | None = None,
):
    """Open a job's MLflow run in `experiment` (a job's default name, or the user's `experiment`),
    or reopen run `run_id` (a study's parent run, joined by every worker and resume).

    Under `mlflow run`, MLflow has already created a run (MLFLOW_RUN_ID) in the experiment
    chosen with `--experiment-name`, else "Default". A run in an experiment the user chose is
    used as it is. One in "Default" (or anywhere, when `-P experiment=` names another, or when
    `run_id` is reopened) stays behind as a small launcher record pointing to the job's run, which
    opens in `experiment`: so train runs, each study and evaluations get experiments of their own.
    The run ends FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM (interrupts.py).
    """
    if mlflow.get_tracking_uri().startswith("sqlite:///"):
        prepare_sqlite_store(mlflow.get_tracking_uri())  # before the first run: created once, writable
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher and run_id is None:
        launch_exp = os.environ.get("MLFLOW_EXPERIMENT_ID") or mlflow.get_run(launcher).info.experiment_id
        target = mlflow.get_experiment_by_name(experiment)
        if (not explicit and launch_exp != DEFAULT_EXPERIMENT_ID) or (target and target.experiment_id == launch_exp):
            # the run `mlflow run` opened
            run = mlflow.start_run(run_name=run_name, tags=tags, log_system_metrics=system_metrics())
            with _ending(run):
                yield run
            return
    if launcher:
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # this process's runs go elsewhere
            os.environ.pop(var, None)
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics())
    else:
        run = mlflow.start_run(
            experiment_id=use_experiment(experiment), run_name=run_name, tags=tags, log_system_metrics=system_metrics()
        )
    with _ending(run, launcher):
        if launcher and launcher != run.info.run_id:
            client = mlflow.MlflowClient()
            client.set_tag(launcher, "stocklab.role", LAUNCHER)
            client.set_tag(launcher, "stocklab.launched_run_id", run.info.run_id)
            client.set_tag(launcher, "stocklab.launched_experiment", experiment)
            client.set_tag(
                launcher,
                "mlflow.note.content",
                f"`mlflow run` launcher: this job's run is {run.info.run_id} in experiment '{experiment}'.",
            )
            mlflow.set_tag("stocklab.launcher_run_id", launcher)
        yield run


SYSTEM_METRICS_ENV = "STOCKLAB_SYSTEM_METRICS"


def system_metrics() -> bool | None:
    """Whether a job's run logs system metrics (CPU, memory, disk, network; GPU utilisation and
    memory with the `gpu` extra): `STOCKLAB_SYSTEM_METRICS=true|false`; unset, on where CUDA is
    available (what a GPU run is judged by) and MLflow's own default otherwise (off unless
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true)."""
    value = os.environ.get(SYSTEM_METRICS_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value:
        raise StockLabError(f"{SYSTEM_METRICS_ENV}: {value!r} must be true or false")
    return True if torch.cuda.is_available() else None


def check_tracking_server(timeout: float = 5.0) -> None:
    """A tracking server that does not answer fails the job at once, in one line naming it,
    instead of after MLflow's minutes of HTTP retries (and before any run is opened)."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    uri = mlflow.get_tracking_uri()
    if uri.startswith(("postgresql", "mysql", "mssql")):
        return _check_database_server(uri, timeout)
    if not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    # credentials in the URI (http://user:pw@host) go in a header, as MLflow sends them
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/health")
    if parts.username is not None:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code >= 500:  # MLflow would retry it for minutes
            raise StockLabError(
                f"MLFLOW_TRACKING_URI: the tracking server at {mask_secrets(uri)} answers {e.code} ({e.reason}); "
                "it is not serving"
            ) from None
        return  # it answered (a proxy, an auth wall, an older server without /health): MLflow takes over
    except OSError as e:
        reason = getattr(e, "reason", e)
        raise StockLabError(
            f"MLFLOW_TRACKING_URI: no MLflow tracking server answers at {mask_secrets(uri)} "
            f"(host {parts.hostname}, port {parts.port or 'default'}): {mask_secrets(reason)}"
        ) from None


def _check_database_server(uri: str, timeout: float) -> None:
    """A database store whose server does not accept connections: one line in seconds (MLflow's
    SQLAlchemy store retries for minutes)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if not parts.hostname:
        return  # a socket path or a DSN: MLflow's own error
    ports = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
    port = parts.port or ports.get(parts.scheme.split("+")[0], 5432)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise StockLabError(
            f"MLFLOW_TRACKING_URI: no database server accepts connections at {mask_secrets(uri)} "
            f"(host {parts.hostname}, port {port}): {e.strerror or one_line(e)}"
        ) from None


def prepare_sqlite_store(uri: str) -> None:
    """A SQLite tracking store a job can use: one that cannot be written is a one-line error
    naming it; a new one is created and migrated by one process while others wait on a file
    lock (two jobs starting together on a brand-new file would both run MLflow's schema
    migrations, and one of them would fail)."""
    from filelock import FileLock

    path = Path(uri[len("sqlite:///") :].split("?")[0])
    if str(path) in ("", ":memory:"):
        return
    where = path.parent if str(path.parent) else Path(".")
    if not where.is_dir():
        raise StockLabError(
            f"MLFLOW_TRACKING_URI: the SQLite store's folder '{where.resolve()}' does not exist; create it or point "
            "MLFLOW_TRACKING_URI at a file in an existing folder"
        )
    if (path.exists() and not os.access(path, os.W_OK)) or (not path.exists() and not os.access(where, os.W_OK)):
        what = path if path.exists() else where
        raise StockLabError(
            f"MLFLOW_TRACKING_URI: the SQLite store '{path.resolve()}' cannot be written ('{what.resolve()}' is "
            "read-only); point MLFLOW_TRACKING_URI at a writable file"
        )
    if path.exists() and path.stat().st_size > 0:
        return  # created before: MLflow migrates an old schema itself, once
    with FileLock(str(path) + ".lock", timeout=300):
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates and migrates


@contextlib.contextmanager
def _ending(run, launcher: str | None = None):
    """End `run` FINISHED, FAILED (an error) or KILLED (KeyboardInterrupt, SystemExit: Ctrl-C,
    SIGTERM), never leaving it RUNNING; MLflow's own context manager says FAILED for all. When
    the job is killed, the `mlflow run` launcher record is ended KILLED too (its CLI may be gone)."""
    try:
        yield run
    except (KeyboardInterrupt, SystemExit):
        _end_if_active(run, "KILLED")
        if launcher and launcher != run.info.run_id:
            try:
                mlflow.MlflowClient().set_terminated(launcher, "KILLED")
            except mlflow.exceptions.MlflowException:
                pass
        with contextlib.suppress(OSError):  # a closed stderr must not replace the interrupt
            print(f"stocklab: run {run.info.run_id} ended KILLED", file=sys.stderr, flush=True)
        raise
    except BaseException:
        _end_if_active(run, "FAILED")
        raise
    else:
        _end_if_active(run, "FINISHED")


def _end_if_active(run, status: str) -> None:
    while (active := mlflow.active_run()) is not None:  # a nested run left open ends the same way
        mlflow.end_run(status)
        if active.info.run_id == run.info.run_id:
            return


def unique_name(name: str) -> str:
    """`name` and a short random suffix: runs of one configuration (a rerun, a failed one) are
    told apart in the UI's run lists and compare page."""
    return f"{name} #{uuid.uuid4().hex[:4]}"


def claim_run(run_id: str, key: str, owner: str) -> str | None:
    """An atomic first-come claim on a run: None if `owner` holds it, else the holder.

    MLflow params are write-once (the params table's primary key, in a database store and
    behind a tracking server alike): of several processes logging `key` with their own `owner`,
    exactly one succeeds and the others get INVALID_PARAMETER_VALUE. The param stays on the run,
    saying who did the work."""
    client = mlflow.MlflowClient()
    try:
        client.log_param(run_id, key, owner)
        return None
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "INVALID_PARAMETER_VALUE":
            raise
        return client.get_run(run_id).data.params.get(key, "another process")


def log_params_once(params: dict) -> dict:
    """Log params, skipping keys the run already has (`mlflow run` logs the -P values itself,
    and MLflow refuses to change a param, e.g. '1e-3' vs '0.001'). Returns the keys whose
    effective value differs from the one already logged (e.g. set by a preset)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: v for k, v in params.items() if k not in existing}
    items = list(fresh.items())
    for i in range(0, len(items), 100):  # MLflow's per-call param limit
        mlflow.log_params(dict(items[i : i + 100]))
    return {k: v for k, v in params.items() if k in existing and not _same(existing[k], v)}


def environment_params(device: torch.device) -> dict:
    """Versions and device, as `env.<name>` params. The git commit is MLflow's own tag
    (mlflow.source.git.commit)."""
    import pandas

    env = {
        "device": str(device),  # the resolved one (`setup.device` is what was asked, e.g. auto)
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mlflow": mlflow.__version__,
        "pandas": pandas.__version__,
        "numpy": np.__version__,
    }
    return {ENV_PREFIX + k: v for k, v in env.items()}


def dataset_params(report, tickers_used: int | None = None) -> dict:
    """The input's identity and size; `data_tickers` counts the tickers the run used (after
    max_tickers and the too-short ones), `data_tickers_in_source` those of the clean data."""
    return {
        "data_fingerprint": report.fingerprint[:16],
        "data_source": report.source[:250],
        "data_files": report.files,
        "data_tickers": report.tickers if tickers_used is None else tickers_used,
        "data_tickers_in_source": report.tickers,
        "data_date_range": f"{report.date_min}..{report.date_max}",
        "data_rows_read": report.rows_read,
        "data_rows_dropped": sum(report.dropped.values()) - report.dropped.get("short_tickers", 0),
    }


def config_params(*configs) -> dict:
    """The configurations' fields by name (what config.json holds and configs are rebuilt from)."""
    out = {}
    for c in configs:
        out.update(dataclasses.asdict(c))
    return out


SETUP_PREFIX, ENV_PREFIX = "setup.", "env."


def run_params(*configs) -> dict:
    """The configurations as run params: fields marked `setup` (config.opt: how the job ran, not
    what it fitted) under `setup.<name>`, so MLflow's alphabetical params table and compare page
    keep them together, apart from what tells models apart."""
    out = {}
    for c in configs:
        setup = {f.name for f in dataclasses.fields(c) if f.metadata.get("setup")}
        out.update({(SETUP_PREFIX + k if k in setup else k): v for k, v in dataclasses.asdict(c).items()})
    return out


def log_json(obj: dict, artifact_file: str) -> None:
    mlflow.log_dict(obj, artifact_file)
