"""A local scale-out stack: PostgreSQL (databases `optuna` and `mlflow`) and an MLflow tracking
server on top of it, started and stopped in a folder of your choice.

    python -m stocklab.stack start --dir .stack      # prints the three lines to export
    python -m stocklab.stack status --dir .stack
    python -m stocklab.stack stop --dir .stack
    scripts/stack.sh start .stack                     # the same

`start` creates a cluster in `<dir>/pgdata` (first time; user `stocklab`, a random password
kept only in `<dir>/pgpass`, mode 0600), starts it on 127.0.0.1:`pg_port`, creates the two
databases, then runs `mlflow server` with the `mlflow` database as backend store and
`<dir>/artifacts` as the artifact store it serves, on 127.0.0.1:`mlflow_port`. The URLs it prints
carry no password: PostgreSQL's driver reads it from the file named by PGPASSFILE. Workers on
other machines use the same URLs with the server's address (and their own ~/.pgpass).
PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` user.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from stocklab.errors import StockLabError, one_line

USER = "stocklab"
DATABASES = ("optuna", "mlflow")


@dataclass
class Stack:
    dir: str
    pg_port: int
    mlflow_port: int

    @property
    def pgpass(self) -> Path:
        return Path(self.dir) / "pgpass"

    def db_url(self, db: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.pg_port}/{db}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def env(self) -> dict:
        """What a worker exports to use the stack (no password: PGPASSFILE holds it)."""
        return {
            "PGPASSFILE": str(self.pgpass),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "STOCKLAB_STORAGE": self.db_url("optuna"),
        }


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-c", " ".join(cmd)]


def _run(cmd: list[str], what: str, env: dict | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise StockLabError(f"stack: {what} failed: {one_line(done.stderr or done.stdout or 'no output')}")
    return done.stdout


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StockLabError(f"stack: '{name}' not found on PATH (install PostgreSQL 15+ server binaries)")
    return path


def start(folder: str, pg_port: int = 55432, mlflow_port: int = 5055, timeout: float = 120.0) -> Stack:
    """Start (creating on first use) the cluster and the tracking server; idempotent."""
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stack = Stack(str(root), pg_port, mlflow_port)
    pgdata, sock = root / "pgdata", root / "sock"
    if os.geteuid() == 0:  # the postgres user must reach and own its folders
        for parent in [root, *root.parents]:
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o711)
    if not pgdata.exists():
        password = secrets.token_urlsafe(18)
        pwfile = root / ".initpw"
        pwfile.write_text(password + "\n")
        sock.mkdir(exist_ok=True)
        pgdata.mkdir()
        if os.geteuid() == 0:
            shutil.chown(pgdata, "postgres", "postgres")
            shutil.chown(sock, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            _run(
                _as_postgres(
                    [_tool("initdb"), "-D", str(pgdata), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}"]
                ),
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        stack.pgpass.write_text(f"127.0.0.1:{pg_port}:*:{USER}:{password}\n")
        stack.pgpass.chmod(0o600)
    if not _pg_running(pgdata):
        opts = f"-p {pg_port} -k {sock} -c listen_addresses=127.0.0.1"
        _run(
            _as_postgres(
                [_tool("pg_ctl"), "-D", str(pgdata), "-o", opts, "-l", str(pgdata / "server.log"), "-w", "start"]
            ),
            "pg_ctl start",
        )
    env = {"PGPASSFILE": str(stack.pgpass)}
    base = ["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", USER, "-d", "postgres", "-tAc"]
    existing = _run(base + ["SELECT datname FROM pg_database"], "psql", env).split()
    for db in DATABASES:
        if db not in existing:
            _run(base + [f"CREATE DATABASE {db}"], f"creating database {db}", env)
    if not _healthy(stack.tracking_uri):
        _start_mlflow(stack, timeout)
    (root / "stack.json").write_text(json.dumps(asdict(stack)))
    return stack


def _pg_running(pgdata: Path) -> bool:
    if not (pgdata / "postmaster.pid").exists():
        return False
    return (
        subprocess.run(_as_postgres([_tool("pg_ctl"), "-D", str(pgdata), "status"]), capture_output=True).returncode
        == 0
    )


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _start_mlflow(stack: Stack, timeout: float) -> None:
    root = Path(stack.dir)
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", stack.db_url("mlflow"),
        "--artifacts-destination", str(artifacts),
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(stack.mlflow_port),
        "--workers", "2",
    ]  # fmt: skip
    log = open(root / "mlflow-server.log", "ab")  # noqa: SIM115 - handed to the detached server
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PGPASSFILE": str(stack.pgpass)},
        start_new_session=True,  # survives this process; `stop` ends its whole group
    )
    (root / "mlflow-server.pid").write_text(str(proc.pid))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _healthy(stack.tracking_uri):
            return
        if proc.poll() is not None:
            raise StockLabError(f"stack: mlflow server exited ({proc.returncode}); see {root / 'mlflow-server.log'}")
        time.sleep(0.5)
    raise StockLabError(f"stack: mlflow server not healthy after {timeout:.0f} s; see {root / 'mlflow-server.log'}")


def stop(folder: str) -> None:
    """Stop the tracking server and the cluster (data and artifacts stay for the next start)."""
    root = Path(folder).resolve()
    pid_file = root / "mlflow-server.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                os.killpg(pid, 0)
                time.sleep(0.2)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
    pgdata = root / "pgdata"
    if _pg_running(pgdata):
        _run(_as_postgres([_tool("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]), "pg_ctl stop")


def load(folder: str) -> Stack:
    path = Path(folder).resolve() / "stack.json"
    if not path.exists():
        raise StockLabError(f"stack: no stack in '{folder}' (run: python -m stocklab.stack start --dir {folder})")
    return Stack(**json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stocklab.stack", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("start", "stop", "status", "env"))
    p.add_argument("--dir", default=".stack", help="where the cluster, artifacts and logs live")
    p.add_argument("--pg_port", type=int, default=55432)
    p.add_argument("--mlflow_port", type=int, default=5055)
    args = p.parse_args(argv)
    try:
        if args.action == "start":
            stack = start(args.dir, args.pg_port, args.mlflow_port)
            print("# the stack is up; in each worker's shell:")
        elif args.action == "stop":
            stop(args.dir)
            print(f"stopped the stack in {args.dir}")
            return 0
        else:
            stack = load(args.dir)
            if args.action == "status":
                up = _healthy(stack.tracking_uri) and _pg_running(Path(stack.dir) / "pgdata")
                print(f"# {'up' if up else 'DOWN'}: PostgreSQL 127.0.0.1:{stack.pg_port}, MLflow {stack.tracking_uri}")
        for key, value in stack.env().items():
            print(f"export {key}={value}")
        return 0
    except StockLabError as e:
        print(f"stocklab: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
