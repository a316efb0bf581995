"""The `train` job: one model, one configuration -> one MLflow run.

Run it as an MLflow Project entry point::

    mlflow run . -e train --env-manager local -P data=../shared/data/sp500_5yr -P model=lstm

or directly: ``stocklab train --data sample --model cnn2d --variant deep``.
Flow (pipeline.py): load -> validate -> features -> split -> scale (train only) -> windows ->
fit -> score -> log.
"""

from __future__ import annotations

import mlflow

from stocklab.config import TrainConfig
from stocklab.errors import describe
from stocklab.pipeline import train_in_run


def run_train(cfg: TrainConfig, model_overrides: dict | None = None) -> dict:
    """Train inside the run `mlflow run` opened (or a new one); a failure ends it FAILED with
    the reason as the tag `stocklab.error`, keeping whatever was already logged."""
    with mlflow.start_run():
        try:
            return train_in_run(cfg, model_overrides)
        except Exception as e:
            mlflow.set_tag("stocklab.error", describe(e))
            raise
