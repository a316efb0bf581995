"""The `promote` job: move the `champion` alias to the best registered version, guarded.

    mlflow run . -e promote --env-manager local -P model=lstm -P metric=test_mse

The candidate is the best version of `stocklab-<model>` other than the current champion, on
`metric` (read from each version's source run; lower is better for *mse*/*loss* metrics, higher
otherwise). It takes the alias `champion` only if it beats the champion; otherwise it becomes
`challenger`. Aliases, not the deprecated stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlflow

from stocklab.config import StockLabError


@dataclass
class PromoteConfig:
    model: str = "lstm"
    metric: str = field(default="test_mse", metadata={"help": "a metric of the versions' runs"})
    direction: str = field(default="auto", metadata={"help": "auto|minimize|maximize"})


def direction_for(metric: str, direction: str = "auto") -> str:
    if direction in ("minimize", "maximize"):
        return direction
    if direction != "auto":
        raise StockLabError(f"direction: {direction!r} must be auto, minimize or maximize")
    lower_is_better = any(s in metric for s in ("mse", "loss", "time", "mae"))
    return "minimize" if lower_is_better else "maximize"


def run_promote(cfg: PromoteConfig) -> dict:
    from stocklab.tune import registered_name

    name = registered_name(cfg.model)
    direction = direction_for(cfg.metric, cfg.direction)
    client = mlflow.tracking.MlflowClient()
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise StockLabError(f"model: no registered versions of '{name}' (run `tune` first)")

    def score(v) -> float:
        value = client.get_run(v.run_id).data.metrics.get(cfg.metric) if v.run_id else None
        if value is None and cfg.metric in v.tags:
            value = float(v.tags[cfg.metric])
        return float("nan") if value is None else float(value)

    scored = [(score(v), v) for v in versions]
    scored = [(s, v) for s, v in scored if math.isfinite(s)]
    if not scored:
        raise StockLabError(f"metric: no version of '{name}' has a finite '{cfg.metric}'")
    sign = 1 if direction == "minimize" else -1
    try:
        champ = client.get_model_version_by_alias(name, "champion")
        champ_score = score(champ)
    except mlflow.exceptions.MlflowException:
        champ, champ_score = None, float("nan")
    # the candidate: the best version other than the champion (newest first on ties)
    candidates = [(s, v) for s, v in scored if champ is None or v.version != champ.version]
    if not candidates:
        print(f"{name}: champion stays v{champ.version}; no other version to compare")
        return {"action": "none", "champion": int(champ.version), "candidate": None}
    best_score, best = min(candidates, key=lambda sv: (sign * sv[0], -int(sv[1].version)))
    beats = not math.isfinite(champ_score) or sign * best_score < sign * champ_score

    if champ is None:
        client.set_registered_model_alias(name, "champion", best.version)
        action = f"{name}: champion -> v{best.version} ({cfg.metric}={best_score:.6g}; there was no champion)"
    elif beats:
        client.set_registered_model_alias(name, "champion", best.version)
        action = (
            f"{name}: champion v{champ.version} -> v{best.version} "
            f"({cfg.metric} {champ_score:.6g} -> {best_score:.6g}, {direction})"
        )
    else:
        client.set_registered_model_alias(name, "challenger", best.version)
        action = (
            f"{name}: champion stays v{champ.version} ({cfg.metric}={champ_score:.6g}); "
            f"challenger -> v{best.version} ({best_score:.6g} does not beat it, {direction})"
        )
    print(action)
    final = client.get_model_version_by_alias(name, "champion")
    return {"action": action, "champion": int(final.version), "candidate": int(best.version)}
