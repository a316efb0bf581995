"""The `promote` job: move the `champion` alias to the best registered version, guarded.

    mlflow run . -e promote --env-manager local -P model=lstm
    mlflow run . -e promote --env-manager local -P model=lstm -P metric=valid_rank_ic

The candidate is the best version of `stocklab-<model>` other than the current champion, on
`metric` (default the validation loss; read from each version's source run; lower is better
for *mse*/*loss* metrics, higher otherwise). It takes the alias `champion` only if it beats the
champion; otherwise it becomes `challenger`. A version that becomes champion stops being
challenger. Test metrics of both are printed side by side but never decide. Versions trained
on different data (fingerprint) or label definitions (horizon, label_scale, split, max_tickers;
for a *loss* metric also the training target and loss: label, loss) are not compared unless
`force=true`. The CLI records what changed in an audit run.
"""

from __future__ import annotations

import math
import re

import mlflow

from stocklab import registry, tracking
from stocklab.config import PromoteConfig, StockLabError


def direction_for(metric: str, direction: str = "auto") -> str:
    if direction in ("minimize", "maximize"):
        return direction
    if direction != "auto":
        raise StockLabError(f"direction: {direction!r} must be auto, minimize or maximize")
    lower_is_better = any(s in metric for s in ("mse", "loss", "time", "mae"))
    return "minimize" if lower_is_better else "maximize"


# what must match for two versions' validation metrics to be comparable: the same data and
# the same label on the same validation days
COMPARABLE = ("data_fingerprint", "horizon", "label_scale", "split", "max_tickers")
# a *loss* metric is measured on the training target with the training loss: those must match
# too (valid_mse_min and rank ICs judge the raw forward return whatever the target); versions
# logged before these params existed trained with their defaults
TARGET = {"label": "raw", "loss": "mse"}
# shown beside the decision, never used for it
TEST_METRICS = ("test_mse", "test_mse_skill", "test_rank_ic", "test_ic")


def _describe(v, metric: str, score: float, run) -> str:
    metrics = run.data.metrics if run is not None else {}
    shown = [f"{metric}={score:.6g}"] + [f"{k}={metrics[k]:.4g}" for k in TEST_METRICS if k in metrics]
    return f"v{v.version} (" + ", ".join(shown) + ")"


def run_promote(cfg: PromoteConfig) -> dict:
    cfg.validate()
    if tracking.metric_split(cfg.metric) in ("test", "oos"):  # the names say their split (METRIC_SPLITS)
        raise StockLabError(
            f"metric: {cfg.metric!r} is measured on out-of-sample data, which never decides; "
            "use a validation metric (valid_loss_min, valid_rank_ic, valid_ls_sharpe_net, ...)"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.model):  # it goes into a registry search filter
        raise StockLabError(f"model: {cfg.model!r} is not a model name (letters, digits, '_', '.', '-')")
    name = registry.registered_name(cfg.model)
    direction = direction_for(cfg.metric, cfg.direction)
    versions = registry.versions(name)
    if not versions:
        raise StockLabError(f"model: no registered versions of '{name}' (run `tune` first)")
    runs = {v.version: mlflow.get_run(v.run_id) if v.run_id else None for v in versions}

    def score(v) -> float:
        run = runs[v.version]
        value = run.data.metrics.get(cfg.metric) if run else None
        if value is None and cfg.metric in v.tags:
            value = float(v.tags[cfg.metric])
        return float("nan") if value is None else float(value)

    def key(v) -> dict:
        params = runs[v.version].data.params if runs[v.version] else {}
        out = {k: tracking.unquote_param(params[k]) if k in params else None for k in COMPARABLE}
        if "loss" in cfg.metric:
            out |= {k: tracking.unquote_param(params[k]) if k in params else d for k, d in TARGET.items()}
        return out

    scored = [(s, v) for s, v in ((score(v), v) for v in versions) if math.isfinite(s)]
    if not scored:
        raise StockLabError(f"metric: no version of '{name}' has a finite '{cfg.metric}'")
    sign = 1 if direction == "minimize" else -1
    champ = registry.alias_version(name, registry.CHAMPION)
    champ_score = score(champ) if champ is not None else float("nan")
    # the candidate: the best version other than the champion (newest first on ties)
    candidates = [(s, v) for s, v in scored if champ is None or v.version != champ.version]
    if not candidates:
        print(f"{name}: champion stays v{champ.version}; no other version to compare")
        return {"action": "none", "champion": int(champ.version), "candidate": None}
    best_score, best = min(candidates, key=lambda sv: (sign * sv[0], -int(sv[1].version)))
    if champ is not None and not cfg.force:
        _check_comparable(cfg, champ, best, key(champ), key(best))
    if champ is not None:  # test metrics side by side, for the reader only
        print(f"{name}: champion {_describe(champ, cfg.metric, champ_score, runs[champ.version])}")
    print(f"{name}: candidate {_describe(best, cfg.metric, best_score, runs[best.version])}")
    beats = not math.isfinite(champ_score) or sign * best_score < sign * champ_score
    action = _move_aliases(name, cfg.metric, direction, beats, (champ, champ_score), (best, best_score))
    print(action)
    # each version's description keeps what promote did to it (the audit run keeps the rest)
    registry.note_version(name, best.version, action)
    if beats and champ is not None:
        registry.note_version(name, champ.version, f"{registry.CHAMPION} moved to v{best.version}: {action}")
    final = registry.alias_version(name, registry.CHAMPION)
    return {"action": action, "champion": int(final.version), "candidate": int(best.version)}


def _check_comparable(cfg: PromoteConfig, champ, best, champ_key: dict, best_key: dict) -> None:
    """Versions trained on different data or labels have incomparable validation metrics."""
    differ = {k: (champ_key[k], best_key[k]) for k in champ_key if champ_key[k] != best_key[k]}
    if differ:
        what = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items())
        raise StockLabError(
            f"metric: champion v{champ.version} and candidate v{best.version} were trained on different "
            f"data or labels ({what}); their {cfg.metric} values are not comparable (-P force=true to compare)"
        )


def _move_aliases(name: str, metric: str, direction: str, beats: bool, champion: tuple, candidate: tuple) -> str:
    """champion -> the candidate when it beats the champion, else challenger -> the candidate;
    returns what changed, in words. `champion`/`candidate`: (version or None, score)."""
    (champ, champ_score), (best, best_score) = champion, candidate
    if not beats:
        registry.set_alias(name, registry.CHALLENGER, best.version)
        return (
            f"{name}: champion stays v{champ.version} ({metric}={champ_score:.6g}); "
            f"challenger -> v{best.version} ({best_score:.6g} does not beat it, {direction})"
        )
    registry.set_alias(name, registry.CHAMPION, best.version)
    challenger = registry.alias_version(name, registry.CHALLENGER)
    if challenger is not None and challenger.version == best.version:
        registry.clear_alias(name, registry.CHALLENGER)  # one version, one role
    if champ is None:
        return f"{name}: champion -> v{best.version} ({metric}={best_score:.6g}; there was no champion)"
    return (
        f"{name}: champion v{champ.version} -> v{best.version} "
        f"({metric} {champ_score:.6g} -> {best_score:.6g}, {direction})"
    )
