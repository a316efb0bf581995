"""Device paths. CUDA tests skip without a GPU; the CPU tests run the same trainer code."""

from __future__ import annotations

import pytest
import torch
from conftest import synthetic_bars

from stocklab.config import TrainConfig
from stocklab.features import build_panel
from stocklab.models import build_model, model_config
from stocklab.training import fit, predict, resolve_device
from stocklab.windows import WindowSet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _ws(device):
    bars = synthetic_bars(n_tickers=4, n_days=200, signal=0.5).rename(columns={"Name": "ticker"})
    bars["date"] = bars["date"].astype("datetime64[ns]")
    return WindowSet(build_panel(bars, "returns", 1, 100.0), 10, 1, (0.6, 0.2, 0.2), "standard", device)


def test_auto_device_is_cpu_here_or_cuda_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@cuda
def test_panel_resident_and_training_on_cuda_matches_cpu_closely():
    ws_gpu, ws_cpu = _ws("cuda"), _ws("cpu")
    assert ws_gpu.X.is_cuda and ws_gpu.index["train"][0].is_cuda  # data and windows stay on the GPU
    cfg = TrainConfig(epochs=3, batch_size=64, seed=0)
    results = []
    for ws in (ws_cpu, ws_gpu):
        torch.manual_seed(0)
        model = build_model("lstm", ws.n_features, 10, model_config("lstm"))
        fit(model, ws, cfg)  # bf16 autocast on CUDA
        pred, y, _, _ = predict(model, ws, "test")
        results.append(float(((pred - y) ** 2).mean()))
    assert results[1] == pytest.approx(results[0], rel=0.2)


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile unavailable")
def test_compile_flag_trains_the_same_parameters():
    ws = _ws("cpu")
    torch.manual_seed(0)
    model = build_model("linear", ws.n_features, 10, model_config("linear"))
    before = model.fc.weight.detach().clone()
    hist = fit(model, ws, TrainConfig(epochs=1, batch_size=256, compile=True))
    assert hist.train_loss and not torch.equal(before, model.fc.weight.detach())
