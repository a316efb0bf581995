"""Where and how reproducibly a fit runs: seeds, the device, the CPU threads."""

from __future__ import annotations

import random

import numpy as np
import torch

from stocklab.cpu_share import fair_threads
from stocklab.errors import StockLabError


def set_seed(seed: int) -> None:
    """Seed every generator the pipeline touches (Python, NumPy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StockLabError("device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def configure_cpu_threads() -> None:
    """Intra-op threads: this job's fair share of the cores (cpu_share.py: the cores divided
    among the running stocklab jobs, or OMP_NUM_THREADS). Re-read before every epoch."""
    threads = fair_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
