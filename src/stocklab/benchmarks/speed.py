"""The speed suite of the `benchmark` job: the project's pipeline side by side with the source one.

    mlflow run . -e benchmark --env-manager local -P suite=speed -P data=../shared/data/sp500_5yr

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
      (a trial's wall time minus its training time);
  (e) the cost of cross-sectional training: seconds per training epoch of cnn2d and lstm on the
      windows of (b) with batching=daily and loss mse, ic and rank, over random batches + mse
      (`xs_epoch_ratio_<model>_<batching>_<loss>`; best of `XS_REPEATS` epochs each).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
import tracemalloc
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stocklab.config import StockLabError, TrainConfig
from stocklab.data import load_panel
from stocklab.features import Panel, build_panel
from stocklab.models import build_model, model_config
from stocklab.sections import SpeedSuite
from stocklab.tracking import job_run, log_params_once
from stocklab.training import configure_cpu_threads, fit, resolve_device
from stocklab.windows import WindowSet

DEFAULTS = TrainConfig()  # the label, split and scaler the suite measures with: train's defaults


def _panel(cfg: SpeedSuite) -> Panel:
    raw, _ = load_panel(cfg.data)
    keep = sorted(raw["ticker"].unique())[: cfg.n_tickers]
    return build_panel(raw[raw["ticker"].isin(keep)], "ohlcv", DEFAULTS.horizon, DEFAULTS.label_scale)


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
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-4, patience=1)
    model = _model(name, ws, seq_len)
    fit(model, sub, TrainConfig(epochs=1, batch_size=batch_size, lr=1e-4))  # warm-up (allocator, kernels)
    hist = fit(model, sub, cfg)
    return hist.samples_per_s_train


def _subset(ws: WindowSet, m: int) -> WindowSet:
    """The same WindowSet with the first `m` training windows and a tiny validation split."""
    return ws.head(train=m, valid=256)


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


def bench_seed000(cfg: SpeedSuite, device) -> dict:
    """(c) seconds per epoch on the 2D-CNN study's workload, for cnn2d deep (lr 1e-5, as the
    study) and an lstm on the same windows, at batch 64 and 1024, projected to 200 epochs. A GPU
    runs full epochs (the trainer's CUDA-graph step included); a CPU `seed000_steps` steps."""
    panel = synthetic_seed000(cfg.seed000_tickers, cfg.seed000_days)
    ws = WindowSet(panel, 96, 20, DEFAULTS.split_fractions(), DEFAULTS.scaler, device)  # the study's 96 -> 20
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
    # the summary keys of speed.json: cnn2d deep at the benchmark's batch size
    b = cfg.batch_size if cfg.batch_size in SEED000_BATCHES else 1024
    out["seed000_samples_per_s"] = out[f"seed000_cnn2d_b{b}_samples_per_s"]
    out["seed000_epoch_s"] = out[f"seed000_cnn2d_b{b}_epoch_s"]
    out["seed000_200_epochs_s"] = out[f"seed000_cnn2d_b{b}_200_epochs_s"]
    return out


def bench_study(cfg: SpeedSuite, n_jobs: int, workdir: Path) -> dict:
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
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
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


XS_RECIPES = (("random", "mse"), ("daily", "mse"), ("daily", "ic"), ("daily", "rank"))
XS_REPEATS = 2


def bench_cross_sectional(ws: WindowSet, cfg: SpeedSuite) -> dict:
    """(e): one training epoch per recipe, the best of XS_REPEATS, on the same windows."""
    out: dict = {}
    for name in ("cnn2d", "lstm"):
        for batching, loss in XS_RECIPES:
            tcfg = TrainConfig(model=name, epochs=1, batch_size=cfg.batch_size, batching=batching, loss=loss)
            times = []
            for _ in range(XS_REPEATS):
                model = _model(name, ws, cfg.seq_len)
                times.append(fit(model, ws, tcfg).train_only_s)
            out[f"xs_epoch_s_{name}_{batching}_{loss}"] = min(times)
        base = out[f"xs_epoch_s_{name}_random_mse"]
        for batching, loss in XS_RECIPES[1:]:
            out[f"xs_epoch_ratio_{name}_{batching}_{loss}"] = out[f"xs_epoch_s_{name}_{batching}_{loss}"] / base
    return out


def run_speed_suite(cfg: SpeedSuite) -> dict:
    """(a)-(d) on this machine; the results go to `cfg.output`, the benchmark run and stdout."""
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
    ws = WindowSet(panel, cfg.seq_len, DEFAULTS.horizon, DEFAULTS.split_fractions(), DEFAULTS.scaler, device)
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
    print("(e) cross-sectional training: an epoch with daily batches and the ic / rank losses")
    results.update(bench_cross_sectional(ws.head(train=cfg.train_steps * cfg.batch_size, valid=1024), cfg))
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
    for name in ("cnn2d", "lstm"):
        if f"xs_epoch_s_{name}_random_mse" in r:
            ratios = ", ".join(f"{b}+{lo} {r[f'xs_epoch_ratio_{name}_{b}_{lo}']:.2f}x" for b, lo in XS_RECIPES[1:])
            lines.append(f"(e) {name} epoch {r[f'xs_epoch_s_{name}_random_mse']:.2f} s (random+mse); {ratios}")
    for key in sorted(k[: -len("_wall_s")] for k in r if k.startswith("study_jobs") and k.endswith("_wall_s")):
        lines.append(
            f"(d) study, n_jobs={key[len('study_jobs') :]}: {r[f'{key}_trials']} trials in {r[f'{key}_wall_s']:.0f} s "
            f"= {r[f'{key}_trials_per_hour']:.0f} trials/h; per-trial overhead median "
            f"{r[f'{key}_trial_overhead_s_median']:.1f} s (max {r[f'{key}_trial_overhead_s_max']:.1f} s)"
        )
    return "\n".join(lines)
