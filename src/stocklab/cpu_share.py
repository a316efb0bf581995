"""Sharing the CPU with other stocklab jobs on the same machine.

Torch sizes its intra-op pool to every core, and OpenMP threads spin while they wait: two
studies, a notebook and CI on one 2-core box then oversubscribe it many times over (one
measured job ran 15x slower beside four others, not the 5x a fair share costs). So:

    OMP_WAIT_POLICY=PASSIVE  for a job started beside other stocklab jobs: waiting threads sleep
                             instead of spinning (set before torch loads OpenMP: cli.py calls
                             `passive_openmp` first). A job alone keeps OpenMP's default: passive
                             waits cost it ~20% (lstm, 40 tickers: 21 s instead of 17 s).
    a job register           each job notes its pid in a per-user folder of the temp dir;
                             `fair_threads()` = cores // live stocklab jobs, re-read before every
                             epoch, so jobs shrink when others start and grow back when they end

`OMP_NUM_THREADS` (set by the user, or by `tune -P n_jobs` for its workers) always wins.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from pathlib import Path


def passive_openmp() -> None:
    """Sleeping, not spinning, OpenMP waits when other stocklab jobs run (unless the user chose
    a policy). Call before `register_job`: this job is not counted yet."""
    if _live_pids():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _register_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"stocklab-jobs-{uid}"


def register_job() -> None:
    """Note this process as a running stocklab job (removed at exit; a killed job's file is
    ignored once its pid is gone)."""
    folder = _register_dir()
    with contextlib.suppress(OSError):
        folder.mkdir(exist_ok=True)
        mine = folder / str(os.getpid())
        mine.touch()
        atexit.register(lambda: mine.unlink(missing_ok=True))


def live_jobs() -> int:
    """Running stocklab jobs on this machine, this one included (at least 1)."""
    return len(_live_pids() | {os.getpid()})


def _live_pids() -> set[int]:
    """Pids of the registered stocklab jobs still alive; the files of dead ones are removed."""
    alive = set()
    with contextlib.suppress(OSError):
        for entry in _register_dir().iterdir():
            if entry.name.isdigit() and pid_alive(int(entry.name)):
                alive.add(int(entry.name))
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()  # a job that died without its atexit
    return alive


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine runs (a pid of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with a reused pid: not ours, but alive
        return True
    return True


def fair_threads() -> int:
    """Intra-op threads for this job: OMP_NUM_THREADS if set, else the cores divided among the
    live stocklab jobs."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 1) // live_jobs())
