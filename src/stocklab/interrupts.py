"""Signals: a job stopped by SIGTERM (`timeout`, a scheduler, `kill`) or by the death of the
`mlflow run` that launched it unwinds like Ctrl-C, so every run it opened ends KILLED
(tracking.job_run) instead of staying RUNNING for good. SIGKILL cannot be caught: a study
fails such a worker's trials from outside (study/budget.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


def install_signal_handlers() -> None:
    """SIGTERM (`timeout`, a scheduler, `kill`) unwinds like Ctrl-C, so the runs a job opened end
    KILLED instead of staying RUNNING forever (SIGKILL cannot be caught: see study/budget.py).

    Only the first SIGTERM stops the job: one arriving while it ends its runs is noted and
    ignored, since a second KeyboardInterrupt inside that cleanup would leave a run RUNNING. A
    job under `mlflow run` can get several: the parent-death signal (below) is sent again by
    whichever process adopts the orphaned job when that process's thread ends."""
    stopping = False

    def handler(signum, frame):
        nonlocal stopping
        if stopping:
            _note(f"stocklab: signal {signum} again while stopping (pid {os.getpid()}); ignored")
            return
        stopping = True
        _set_parent_death_signal(0)  # no more signals from whoever adopts this process
        _note(f"stocklab: received signal {signum} (pid {os.getpid()}); ending the job's runs KILLED")
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        if os.environ.get("MLFLOW_RUN_ID"):
            _term_when_parent_dies()


def quiet_optuna_interrupts() -> None:
    """Optuna logs a trial stopped by Ctrl-C or SIGTERM as a failed trial with the whole
    KeyboardInterrupt traceback (~20 lines) before re-raising it; the job's own one line
    (`stocklab: interrupted ...`) says it already. Other failures keep Optuna's message."""
    import logging

    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _DropInterrupts) for f in logger.filters):
        logger.addFilter(_DropInterrupts())


class _DropInterrupts:
    def filter(self, record) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def _note(text: str) -> None:
    # a raw write: the interrupted code may be inside a print to stderr (tqdm), and a buffered
    # write from a signal handler would raise "reentrant call" instead of stopping the job
    with contextlib.suppress(OSError):  # no stderr (a closed pipe) must not stop the stop
        os.write(2, f"\n{text}\n".encode())


def _set_parent_death_signal(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, signum) on Linux; False where it is not available."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(1, int(signum), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return False


def _term_when_parent_dies() -> None:
    """Under `mlflow run` the job is a child of the `mlflow` CLI, and `timeout`/a scheduler
    signals only that CLI, which dies at once and leaves the job running and every run RUNNING.
    Linux can send the job SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere
    this is a no-op."""
    if not _set_parent_death_signal(signal.SIGTERM):
        return
    if os.getppid() == 1:  # the parent died before the call: act now
        os.kill(os.getpid(), signal.SIGTERM)
