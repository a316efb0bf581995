"""The `train` job: one model, one configuration -> one MLflow run.

Run it as an MLflow Project entry point::

    mlflow run . -e train --env-manager local -P data=../shared/data/sp500_5yr -P model=lstm

or directly: ``stocklab train --data sample --model cnn2d --variant deep``.
Flow (pipeline/): load -> validate -> features -> split -> scale (train only) -> windows ->
fit -> score -> log.
"""

from __future__ import annotations

import mlflow

from stocklab import tracking
from stocklab.config import TrainConfig
from stocklab.errors import describe
from stocklab.models import model_defaults, run_name
from stocklab.pipeline.fitting import train_in_run

EXPERIMENT = "stocklab-train"
VIEW_METRICS = (
    "valid_loss_min", "test_mse", "test_mse_skill", "test_rank_ic", "test_spread_q5_q1", "train_best_epoch",
    "train_time_s",
)  # fmt: skip
VIEW_PARAMS = ("model", "preset", "features", "horizon", "seq_len", "lr", "batch_size", "epochs")


def run_train(cfg: TrainConfig, model_overrides: dict | None = None) -> dict:
    """Train in a run of the experiment `stocklab-train` (or `cfg.experiment`); a failure ends
    it FAILED with the reason as the tag `stocklab.error`, keeping whatever was already logged."""
    name = run_name(cfg.model, {**model_defaults(cfg.model), **(model_overrides or {})}, cfg.seq_len, cfg.lr)
    name = tracking.unique_name(name)
    with tracking.job_run(cfg.experiment or EXPERIMENT, bool(cfg.experiment), run_name=name) as run:
        # the UI's runs table shows no metric until one is picked: a saved view picks them
        tracking.save_runs_view(
            run.info.experiment_id,
            view_id="stocklab-train",
            name="train runs: key metrics",
            search_filter="",
            order_by="attributes.start_time",
            ascending=False,
            metrics=list(VIEW_METRICS),
            params=list(VIEW_PARAMS),
            overwrite=False,
        )
        try:
            return train_in_run(cfg, model_overrides)
        except Exception as e:
            mlflow.set_tag("stocklab.error", describe(e))
            raise
