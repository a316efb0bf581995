"""The `benchmark` job, `suite=speed`: the project's pipeline side by side with the source one.

    mlflow run . -e benchmark --env-manager local -P suite=speed

Measured in one process on one machine, and written to `speed.json` (also logged to the run):
  (a) window construction: the source tutorial's Python loop that appends `.tolist()` windows
      and stacks them, vs the project's lazy index + on-device gather of every window;
  (b) training throughput (samples/s): a DataLoader over materialised windows with batch 64
      (the source pipeline) vs the project's trainer (resident panel, gathered batches of
      `batch_size`), same model and data, for cnn2d (deep) and lstm; with each model's FLOPs per
      sample and the machine's dense matmul rate, which bound the speed-up any implementation
      of the same model can reach (`train_ceiling_speedup_*`);
  (c) the 2D-CNN study's workload: 514 tickers x 3,500 days x 7 features (synthetic panel of
      that shape), 96-day windows, 20-day label, cnn2d deep and an lstm at batch 64 (the study's)
      and 1024: ms per step, seconds per epoch and the projection for 200 epochs. On CPU the
      epoch time is projected from `seed000_steps` measured steps (`seed000_epoch_measured`);
  (d) a short lstm study on `data` (`study_trials` trials, 1 epoch, `study_tickers` tickers) run
      as `stocklab tune` with n_jobs 1 and `study_jobs`: trials per hour and per-trial overhead
      (a trial's wall time minus its training time).
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import time
import tracemalloc
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stocklab.config import BenchmarkConfig, StockLabError, TrainConfig
from stocklab.data import load_panel
from stocklab.features import Panel, build_panel
from stocklab.models import build_model, model_config
from stocklab.tracking import job_run, log_params_once
from stocklab.training import configure_cpu_threads, fit, resolve_device
from stocklab.windows import WindowSet


def _panel(cfg: BenchmarkConfig) -> Panel:
    raw, _ = load_panel(cfg.data)
    keep = sorted(raw["ticker"].unique())[: cfg.n_tickers]
    return build_panel(raw[raw["ticker"].isin(keep)], "ohlcv", horizon=20, label_scale=1.0)


def naive_windows(X: np.ndarray, seq_len: int) -> np.ndarray:
    """The source tutorial: a Python list of windows built with .tolist(), then one array."""
    windows = []
    for n in range(X.shape[0]):
        series = X[n]
        for i in range(len(series) - seq_len + 1):
            window = series[i : i + seq_len]
            if np.isfinite(window).all():
                windows.append(window.tolist())
    return np.array(windows, dtype=np.float32)


def _peak(fn):
    """(result, seconds, peak traced MB) of fn()."""
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, secs, peak


def bench_windows(panel: Panel, seq_len: int, device) -> dict:
    """(a) every window of the panel, source loop vs project (index + batched gather)."""
    arr, t_naive, mem_naive = _peak(lambda: naive_windows(panel.X, seq_len))
    n_windows = len(arr)
    del arr

    def project():
        ws = WindowSet(panel, seq_len, 20, (0.6, 0.2, 0.2), "standard", device)
        count = 0
        for split in ("train", "valid", "test"):
            for x, *_ in ws.batches(split, 8192):  # every window, as the trainer sees them
                count += x.shape[0]
        if ws.device.type == "cuda":
            torch.cuda.synchronize()
        return ws, count

    (ws, count), t_proj, mem_np = _peak(project)
    # torch's own allocations are not traced: add the resident tensors and one gathered batch
    tensors = sum(t.numel() * t.element_size() for t in (ws.X, ws.y, ws.y_ok)) / 2**20
    batch = 8192 * seq_len * ws.n_features * 4 / 2**20
    # the project keeps only windows with a label; count the naive loop's rate per window built
    return {
        "window_naive_s": t_naive,
        "window_naive_windows": n_windows,
        "window_naive_per_s": n_windows / t_naive,
        "window_project_s": t_proj,
        "window_project_windows": count,
        "window_project_per_s": count / t_proj,
        "window_speedup": (count / t_proj) / (n_windows / t_naive),
        "window_mem_naive_mb": mem_naive,
        "window_mem_project_mb": mem_np + tensors + batch,
        "panel_mb": panel.X.nbytes / 2**20,
    }


def _model(name: str, ws: WindowSet, seq_len: int, seed: int = 0):
    torch.manual_seed(seed)
    overrides = {"variant": "deep"} if name == "cnn2d" else {}
    return build_model(name, ws.n_features, seq_len, model_config(name, overrides))


def bench_dataloader(name: str, ws: WindowSet, seq_len: int, steps: int, device) -> float:
    """Samples/s of the source pipeline: materialised windows in a DataLoader, batch 64."""
    n, t = (a.cpu() for a in ws.index["train"])
    m = min(len(n), steps * 64 * 3)  # enough windows for the timed steps
    x_all = ws.gather(n[:m].to(ws.device), t[:m].to(ws.device)).cpu().numpy()  # materialised
    y_all = ws.y[n[:m].to(ws.device), t[:m].to(ws.device)].cpu().numpy()
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x_all), torch.from_numpy(y_all))
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    model = _model(name, ws, seq_len).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    done, start = 0, None
    for i, (x, y) in enumerate(_cycle(loader)):
        if i == 3:  # warm-up steps excluded
            start, done = time.perf_counter(), 0
        if i == steps + 3:
            break
        x, y = x.to(device), y.to(device)
        loss = torch.mean((model(x) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the source logs every step: a host sync per step
        done += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def peak_gemm_gflops(device, n: int = 2048, reps: int = 10) -> float:
    """The machine's dense matmul rate (fp32 on CPU, bf16 on CUDA as in training): the ceiling
    for any implementation of a model whose work is matmuls and convolutions."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):  # warm-up
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def train_flops_per_sample(name: str, ws: WindowSet, seq_len: int, batch: int = 64) -> float:
    """FLOPs of one training sample (forward + backward), counted by torch's FlopCounterMode.

    Counted on CPU with oneDNN off, so the recurrent cells run as plain matmuls it can see."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(name, ws, seq_len)
    x = torch.randn(batch, seq_len, ws.n_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 notice when toggled
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            model(x).pow(2).mean().backward()
    return counter.get_total_flops() / batch


def _cycle(loader):
    while True:
        yield from loader


def bench_trainer(name: str, ws: WindowSet, seq_len: int, steps: int, batch_size: int) -> float:
    """Samples/s of the project's trainer (one short epoch over `steps` batches)."""
    m = min(ws.size("train"), steps * batch_size)
    sub = _subset(ws, m)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-4, patience=1, eval_batch_size=8192)
    model = _model(name, ws, seq_len)
    fit(model, sub, TrainConfig(epochs=1, batch_size=batch_size, lr=1e-4))  # warm-up (allocator, kernels)
    hist = fit(model, sub, cfg)
    return hist.samples_per_s_train


def _subset(ws: WindowSet, m: int) -> WindowSet:
    """The same WindowSet with the first `m` training windows and a tiny validation split."""
    sub = object.__new__(WindowSet)
    sub.__dict__.update(ws.__dict__)
    sub.index = dict(ws.index)
    sub.index["train"] = tuple(a[:m] for a in ws.index["train"])
    sub.index["valid"] = tuple(a[:256] for a in ws.index["valid"])
    return sub


def synthetic_seed000(n_tickers=514, n_days=3500, n_features=7, seed=0) -> Panel:
    """A panel of the 2D-CNN study's shape (random-walk OHLCV-like inputs, 20-day labels)."""
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_tickers, n_days)), axis=1))
    X = rng.normal(size=(n_tickers, n_days, n_features)).astype(np.float32)
    y = np.full((n_tickers, n_days), np.nan, np.float32)
    y[:, :-20] = close[:, 20:] / close[:, :-20] - 1
    return Panel(
        tickers=[f"S{i:03d}" for i in range(n_tickers)],
        dates=pd.bdate_range("2004-01-01", periods=n_days),
        X=X,
        y=y,
        close=close,
        feature_names=[f"f{i}" for i in range(n_features)],
        relative_cols=[],
        relative_ref=[],
    )


SEED000_BATCHES = (64, 1024)  # the source study's own batch, and the benchmark's default


def bench_seed000(cfg: BenchmarkConfig, device) -> dict:
    """(c) seconds per epoch on the 2D-CNN study's workload, for cnn2d deep (lr 1e-5, as the
    study) and an lstm on the same windows, at batch 64 and 1024, projected to 200 epochs. A GPU
    runs full epochs (the trainer's CUDA-graph step included); a CPU `seed000_steps` steps."""
    panel = synthetic_seed000(cfg.seed000_tickers, cfg.seed000_days)
    ws = WindowSet(panel, 96, 20, (0.6, 0.2, 0.2), "standard", device)
    n_train = ws.size("train")
    full = device.type == "cuda"
    out: dict = {"seed000_train_windows": n_train}
    for name in ("cnn2d", "lstm"):
        for batch in SEED000_BATCHES:
            steps = cfg.seed000_steps
            sub = ws if full else _subset(ws, steps * batch)
            model = _model(name, ws, 96)
            tcfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-5, eval_batch_size=16384)
            fit(model, _subset(ws, 8 * batch), tcfg)  # warm-up (allocator, kernels, graph capture)
            hist = fit(model, sub, tcfg)
            epoch_s = n_train / hist.samples_per_s_train + (hist.train_time_s - hist.train_only_s if full else 0.0)
            key = f"seed000_{name}_b{batch}"
            out.update(
                {
                    f"{key}_samples_per_s": hist.samples_per_s_train,
                    f"{key}_step_ms": 1000 * batch / hist.samples_per_s_train,
                    f"{key}_epoch_s": epoch_s,
                    f"{key}_200_epochs_s": 200 * epoch_s,
                    f"{key}_graph_replays": hist.graph_replays,
                }
            )
            print(f"    {name} batch {batch}: {epoch_s:.1f} s/epoch, {out[f'{key}_step_ms']:.2f} ms/step")
    out["seed000_epoch_measured"] = "full epoch" if full else f"{cfg.seed000_steps} steps per setting"
    # the names earlier reports used: cnn2d deep at the benchmark's batch size
    b = cfg.batch_size if cfg.batch_size in SEED000_BATCHES else 1024
    out["seed000_samples_per_s"] = out[f"seed000_cnn2d_b{b}_samples_per_s"]
    out["seed000_epoch_s"] = out[f"seed000_cnn2d_b{b}_epoch_s"]
    out["seed000_200_epochs_s"] = out[f"seed000_cnn2d_b{b}_200_epochs_s"]
    return out


def bench_study(cfg: BenchmarkConfig, n_jobs: int, workdir: Path) -> dict:
    """(d) a short lstm study on `cfg.data` run as users run it (`stocklab tune`, a fresh
    process, its own journal and tracking store): wall time, trials per hour, and each trial's
    overhead = its wall time (Optuna's start/complete) - its training time (`train_time_s`)."""
    import subprocess
    import sys

    import mlflow
    import optuna

    name = f"bench-{n_jobs}"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    journal = workdir / "study.log"
    cmd = [sys.executable, "-m", "stocklab.cli", "tune", "--data", cfg.data, "--model", "lstm"]
    cmd += ["--max_tickers", str(cfg.study_tickers), "--epochs", "1", "--n_trials", str(cfg.study_trials)]
    cmd += ["--study_name", name, "--storage", str(journal), "--n_jobs", str(n_jobs), "--register", "false"]
    cmd += ["--pruner", "none", "--device", cfg.device, "--cache_dir", str(workdir / "cache")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MLFLOW_RUN_ID", None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise StockLabError(f"benchmark: the study with n_jobs={n_jobs} failed: {done.stderr.strip()[-300:]}")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))
    client = mlflow.MlflowClient(tracking_uri=uri)
    overheads, trial_walls = [], []
    for t in study.trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        trial_wall = (t.datetime_complete - t.datetime_start).total_seconds()
        train_s = client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["train_time_s"]
        trial_walls.append(trial_wall)
        overheads.append(trial_wall - train_s)
    key = f"study_jobs{n_jobs}"
    return {
        f"{key}_wall_s": wall,
        f"{key}_trials": len(trial_walls),
        f"{key}_trials_per_hour": 3600 * len(trial_walls) / wall,
        f"{key}_trial_wall_s_mean": float(np.mean(trial_walls)),
        # the first trial of each worker also loads the data: the median is the steady state
        f"{key}_trial_overhead_s_median": float(np.median(overheads)),
        f"{key}_trial_overhead_s_max": float(np.max(overheads)),
    }


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    cfg.validate()
    if cfg.suite == "models":
        return run_models_suite(cfg)
    import mlflow

    configure_cpu_threads()
    device = resolve_device(cfg.device)
    results: dict = {
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or 'x86_64'})",
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "config": asdict(cfg),
    }
    panel = _panel(cfg)
    print(f"(a) windows: {len(panel.tickers)} tickers x {len(panel.dates)} days, seq_len={cfg.seq_len}")
    results.update(bench_windows(panel, cfg.seq_len, device))
    ws = WindowSet(panel, cfg.seq_len, 20, (0.6, 0.2, 0.2), "standard", device)
    peak = results["peak_gemm_gflops"] = peak_gemm_gflops(device)
    for name in ("cnn2d", "lstm"):
        print(f"(b) training throughput: {name}")
        base = bench_dataloader(name, ws, cfg.seq_len, cfg.train_steps, device)
        proj = bench_trainer(name, ws, cfg.seq_len, cfg.train_steps, cfg.batch_size)
        flops = train_flops_per_sample(name, ws, cfg.seq_len)
        results.update(
            {
                f"train_dataloader_{name}_per_s": base,
                f"train_project_{name}_per_s": proj,
                f"train_speedup_{name}": proj / base,
                f"train_mflop_per_sample_{name}": flops / 1e6,
                f"train_gflops_dataloader_{name}": base * flops / 1e9,
                f"train_gflops_project_{name}": proj * flops / 1e9,
                # no implementation of the same model beats the machine's matmul rate
                f"train_ceiling_speedup_{name}": peak * 1e9 / flops / base,
            }
        )
    print("(c) seed000 workload: 514 tickers x 3500 days x 7 features, 96-day windows, cnn2d deep and lstm")
    results.update(bench_seed000(cfg, device))
    import tempfile

    for n_jobs in sorted({1, cfg.study_jobs}):
        print(f"(d) a {cfg.study_trials}-trial lstm study on {cfg.data} ({cfg.study_tickers} tickers), n_jobs={n_jobs}")
        with tempfile.TemporaryDirectory() as tmp:
            results.update(bench_study(cfg, n_jobs, Path(tmp)))
    with job_run(cfg.experiment or "stocklab-benchmark", bool(cfg.experiment), run_name=f"benchmark {cfg.suite}"):
        log_params_once({**asdict(cfg), "device_name": results["device"]})
        mlflow.log_metrics({k: float(v) for k, v in results.items() if isinstance(v, (int, float))})
        mlflow.log_dict(results, "speed.json")
    with open(cfg.output, "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results))
    return results


def format_table(r: dict) -> str:
    rows = [
        ("(a) windows/s", r["window_naive_per_s"], r["window_project_per_s"], r["window_speedup"]),
        ("(a) memory MB", r["window_mem_naive_mb"], r["window_mem_project_mb"],
         r["window_mem_naive_mb"] / max(r["window_mem_project_mb"], 1e-9)),
        ("(b) cnn2d deep samples/s", r["train_dataloader_cnn2d_per_s"], r["train_project_cnn2d_per_s"],
         r["train_speedup_cnn2d"]),
        ("(b) lstm samples/s", r["train_dataloader_lstm_per_s"], r["train_project_lstm_per_s"],
         r["train_speedup_lstm"]),
    ]  # fmt: skip
    for name in ("cnn2d", "lstm"):
        if f"train_gflops_project_{name}" in r:
            rows.append((f"(b) {name} GFLOP/s", r[f"train_gflops_dataloader_{name}"],
                         r[f"train_gflops_project_{name}"], r[f"train_speedup_{name}"]))  # fmt: skip
    lines = [f"device: {r['device']}", f"{'measure':<28}{'source':>14}{'project':>14}{'ratio':>10}"]
    lines += [f"{a:<28}{b:>14.1f}{c:>14.1f}{d:>9.1f}x" for a, b, c, d in rows]
    if "peak_gemm_gflops" in r:
        lines.append(
            f"(b) ceiling: dense matmul peak {r['peak_gemm_gflops']:.0f} GFLOP/s -> at most "
            f"{r['train_ceiling_speedup_cnn2d']:.1f}x (cnn2d), {r['train_ceiling_speedup_lstm']:.1f}x (lstm) "
            "over the source pipeline for any implementation of the same model"
        )
    for name in ("cnn2d", "lstm"):
        for b in SEED000_BATCHES:
            k = f"seed000_{name}_b{b}"
            if f"{k}_epoch_s" in r:
                lines.append(
                    f"(c) seed000 {name} batch {b}: {r[f'{k}_step_ms']:.2f} ms/step, {r[f'{k}_epoch_s']:.1f} s/epoch, "
                    f"{r[f'{k}_200_epochs_s']:.0f} s for 200 epochs ({r['seed000_epoch_measured']})"
                )
    lines.append("(c) source study: 4h07m-6h45m per run")
    for key in sorted(k[: -len("_wall_s")] for k in r if k.startswith("study_jobs") and k.endswith("_wall_s")):
        lines.append(
            f"(d) study, n_jobs={key[len('study_jobs') :]}: {r[f'{key}_trials']} trials in {r[f'{key}_wall_s']:.0f} s "
            f"= {r[f'{key}_trials_per_hour']:.0f} trials/h; per-trial overhead median "
            f"{r[f'{key}_trial_overhead_s_median']:.1f} s (max {r[f'{key}_trial_overhead_s_max']:.1f} s)"
        )
    return "\n".join(lines)


# --- suite=models: every model and baseline through the same walk-forward harness ---

Entry = tuple[str, str, dict, dict, bool]  # (name, kind, train values, model overrides, deterministic)


def model_entries() -> list[Entry]:
    """Every source-study preset, every catalogue model at its defaults, and every baseline."""
    from stocklab.models import BASELINES, MODELS
    from stocklab.models.factors import FACTORS
    from stocklab.presets import PRESETS

    own = {f.name for f in fields(TrainConfig)}
    out: list[Entry] = []
    for name, values in PRESETS.items():
        train = {k: v for k, v in values.items() if k in own}
        model_args = {k: v for k, v in values.items() if k not in own}
        out.append((f"preset:{name}", "preset", {**train, "preset": name}, model_args, False))
    for name in MODELS:
        if name not in ("naive", "factor"):
            out.append((name, "baseline" if name in BASELINES else "model", {"model": name}, {}, False))
    out.append(("naive:zero", "baseline", {"model": "naive"}, {"mode": "zero"}, True))
    out.append(("naive:mean", "baseline", {"model": "naive"}, {"mode": "mean"}, False))
    for factor in FACTORS:
        out.append((f"factor:{factor}", "baseline", {"model": "factor"}, {"factor": factor}, True))
    return out


def _selected(cfg: BenchmarkConfig) -> list[Entry]:
    entries = model_entries()
    if not cfg.models:
        return entries
    wanted = [m.strip() for m in cfg.models.split(",") if m.strip()]
    names = [e[0] for e in entries]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise StockLabError(f"models: unknown entry {unknown[0]!r} (choose from {', '.join(names)})")
    return [e for e in entries if e[0] in wanted]


def _command(cfg: BenchmarkConfig) -> str:
    """The `mlflow run` command that reproduces this benchmark (non-default values only)."""
    default = BenchmarkConfig(suite="models")
    parts = ["mlflow run . -e benchmark --env-manager local -P suite=models"]
    for f in fields(cfg):
        if f.name not in ("suite", "experiment") and getattr(cfg, f.name) != getattr(default, f.name):
            parts.append(f"-P {f.name}={getattr(cfg, f.name)}")
    return " ".join(parts)


def _machine(device) -> str:
    try:
        import psutil

        ram = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:  # pragma: no cover - psutil comes with mlflow
        ram = ""
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none (CPU)"
    threads = torch.get_num_threads()
    cores = f"{os.cpu_count()} CPU cores{ram}"
    return f"{platform.platform()}, {cores}; device: {gpu}; torch {torch.__version__} ({threads} threads)"


def run_models_suite(cfg: BenchmarkConfig) -> dict:
    """Fit every entry with `seeds` seeds on walk-forward folds, each fit an MLflow run nested
    under one `benchmark models` run, then write the report and its plots."""
    import mlflow
    from tqdm.auto import tqdm

    from stocklab import model_report
    from stocklab.config import with_values
    from stocklab.errors import describe
    from stocklab.pipeline import train_in_run

    entries = _selected(cfg)
    configure_cpu_threads()
    device = resolve_device(cfg.device)
    base = TrainConfig(data=cfg.data, max_tickers=cfg.model_tickers, folds=cfg.folds, walk=cfg.walk, split=cfg.split,
                       device=cfg.device, epochs=cfg.epochs)  # fmt: skip
    base.validate()
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    records: list[model_report.RunRecord] = []
    client = mlflow.MlflowClient()
    jobs = [(e, seed) for e in entries for seed in range(1 if e[4] else cfg.seeds)]
    experiment = cfg.experiment or "stocklab-benchmark-models"
    with job_run(experiment, bool(cfg.experiment), run_name="benchmark models") as parent:
        log_params_once({f"benchmark_{k}": v for k, v in asdict(cfg).items() if k not in ("output",)})
        for (entry, kind, values, overrides, _), seed in tqdm(jobs, desc="benchmark models", unit="fit"):
            epochs = min(int(values.get("epochs", cfg.epochs)), cfg.epochs)
            tcfg = with_values(base, {**values, "seed": seed, "epochs": epochs})
            tags = {"stocklab.benchmark_entry": entry, "stocklab.benchmark_kind": kind, "stocklab.role": "benchmark"}
            run = mlflow.start_run(nested=True, run_name=f"{entry} s{seed}", tags=tags,
                                   experiment_id=parent.info.experiment_id)  # fmt: skip
            rec = model_report.RunRecord(entry, kind, seed, run.info.run_id, {})
            try:
                res = train_in_run(tcfg, overrides)
            except Exception as e:  # noqa: BLE001 - one failing model must not lose the others
                rec.error = describe(e)
                mlflow.set_tag("stocklab.error", rec.error)
                mlflow.end_run("FAILED")
                print(f"{entry} seed {seed} failed: {rec.error}")
                records.append(rec)
                continue
            mlflow.end_run("FINISHED")
            rec.metrics = {k: v for k, v in res.items() if isinstance(v, (int, float))}
            rec.metrics["horizon"] = tcfg.horizon
            history = client.get_metric_history(run.info.run_id, "fold/rank_ic")
            rec.fold_rank_ic = [m.value for m in sorted(history, key=lambda m: m.step)] or [res.get("rank_ic")]
            local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions.parquet")
            rec.predictions = pd.read_parquet(local)
            records.append(rec)
        elapsed = time.perf_counter() - t0
        out = write_models_report(cfg, records, device, started, elapsed)
        mlflow.log_artifacts(str(Path(cfg.report).parent), "report")
        mlflow.log_metric("wall_time_s", elapsed)
    return out


def write_models_report(cfg: BenchmarkConfig, records, device, started, elapsed: float) -> dict:
    """reports/models.md + models_rank_ic.png + models_long_short.png from the runs' records."""
    from stocklab import model_report

    path = Path(cfg.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = model_report.summary_table(records)
    horizons = {r.entry: r.metrics.get("horizon") for r in records if r.metrics}
    table.insert(2, "horizon", [horizons.get(e, float("nan")) for e in table["entry"]])
    raw, _ = load_panel(cfg.data)
    close = raw.pivot(index="date", columns="ticker", values="close").sort_index()
    curves = {}
    for entry in table["entry"]:
        preds = [r.predictions for r in records if r.entry == entry and r.predictions is not None]
        if preds:
            daily = [model_report.long_short_returns(p, close) for p in preds]
            curves[entry] = pd.concat(daily, axis=1).mean(axis=1)  # the seeds' portfolios, averaged
    stem = path.with_suffix("")
    ic_png, ls_png = Path(f"{stem}_rank_ic.png"), Path(f"{stem}_long_short.png")
    model_report.plot_rank_ic(table, ic_png)
    model_report.plot_long_short(curves, ls_png)
    cumulative = {e: float((1 + c).prod() - 1) for e, c in curves.items()}
    table["cum_long_short"] = [cumulative.get(e, float("nan")) for e in table["entry"]]
    failed = [r for r in records if r.error]
    lines = [
        "# Model comparison: walk-forward out-of-sample results",
        "",
        f"Command: `{_command(cfg)}`  ",
        f"Date: {started:%Y-%m-%d %H:%M} UTC; wall time {elapsed / 60:.1f} min  ",
        f"Machine: {_machine(device)}  ",
        f"Data: `{cfg.data}`, first {cfg.model_tickers or 'all'} tickers by name; split {cfg.split} "
        f"(initial train, valid, out-of-sample), {cfg.folds} {cfg.walk} walk-forward folds with the horizon "
        f"embargo, a refit and a train-only scaler per fold; at most {cfg.epochs} epochs per fit (presets' "
        f"own epoch counts are capped to it); {cfg.seeds} seeds per trained model, one run for deterministic "
        "baselines (zero forecast, factors).",
        "",
        "## Findings (computed from the runs)",
        "",
        *[f"- {f}" for f in model_report.findings(table, records)],
        "",
        "## Results",
        "",
        model_report.markdown_table(table),
        "",
        "rank IC: mean daily Spearman IC of each fold's test period, mean ± std over every (seed, fold). "
        "ICIR and t-stat: of the daily Pearson IC over the concatenated out-of-sample days (mean over seeds). "
        "hit rate: share of same-sign forecasts. q5-q1: mean daily spread of the label (forward return over "
        "the horizon) between the top and bottom fifth. MSE/zero and MSE/mean: test MSE over the MSE of the zero "
        "forecast and of the training-label mean (below 1 = better than that forecast). valid rank IC: on each "
        "fold's validation span. best epoch: the kept epoch, mean over folds and seeds. train s: fitting time "
        "summed over folds, mean over seeds. Each entry is judged on its own label horizon (column h). "
        "-: not applicable (a factor is a score, not a return forecast: no MSE; the naive forecasts rank "
        "nothing: no IC).",
        "",
        f"![rank IC per model]({ic_png.name})",
        "",
        f"![cumulative long-short return]({ls_png.name})",
        "",
        "Long-short: every day, long the top fifth and short the bottom fifth by prediction, equal weights, "
        "next-day close-to-close returns, averaged over seeds; no costs.",
    ]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r.entry} seed {r.seed}: {r.error}" for r in failed]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}, {ic_png}, {ls_png}")
    return {"report": str(path), "table": table, "records": records}
