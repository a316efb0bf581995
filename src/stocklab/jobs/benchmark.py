"""The `benchmark` job: one of three suites, each in its own module.

mlflow run . -e benchmark --env-manager local -P suite=speed -P data=../shared/data/sp500_5yr     # benchmarks/speed.py
mlflow run . -e benchmark --env-manager local -P suite=models -P data=../shared/data/sp500_5yr    # benchmarks/models.py
mlflow run . -e benchmark --env-manager local -P suite=recovery  # benchmarks/recovery.py
"""

from __future__ import annotations

from stocklab.config import BenchmarkConfig


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Validate the job's parameters, then run the suite on its own section of them."""
    cfg.validate()
    if cfg.suite == "models":
        from stocklab.benchmarks.models import run_models_suite

        return run_models_suite(cfg.section())
    if cfg.suite == "recovery":
        from stocklab.benchmarks.recovery import run_recovery_suite

        return run_recovery_suite(cfg.section())
    from stocklab.benchmarks.speed import run_speed_suite

    return run_speed_suite(cfg.section())
