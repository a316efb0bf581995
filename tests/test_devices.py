"""Device paths. CUDA tests skip without a GPU; the CPU tests run the same trainer code."""

from __future__ import annotations

import pytest
import torch
from conftest import long_bars, synthetic_bars

from stocklab.config import StockLabError, TrainConfig
from stocklab.features import build_panel
from stocklab.models import build_model, model_config
from stocklab.training import fit, predict, resolve_device
from stocklab.windows import WindowSet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _ws(device):
    bars = long_bars(synthetic_bars(n_tickers=4, n_days=200, signal=0.5))
    return WindowSet(build_panel(bars, "returns", 1, 100.0), 10, 1, (0.6, 0.2, 0.2), "standard", device)


def test_a_cuda_request_without_a_gpu_is_a_one_line_error_and_auto_falls_back_to_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == resolve_device("cuda").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(StockLabError, match="device: 'cuda' requested but no CUDA device is available"):
            resolve_device("cuda")


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


@pytest.mark.slow  # torch.compile's first compilation takes ~20 s on a CPU
def test_compile_flag_trains_the_same_parameters():
    """A compiled model is trained by the same steps: its weights match eager training's (the
    compiled kernels may sum in another order, hence a tolerance) and differ from the start."""
    ws = _ws("cpu")
    trained = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model("linear", ws.n_features, 10, model_config("linear"))
        start = model.fc.weight.detach().clone()
        hist = fit(model, ws, TrainConfig(epochs=1, batch_size=256, compile=compiled))
        trained[compiled] = (hist.train_loss, model.fc.weight.detach().clone())
    assert not torch.equal(start, trained[True][1])
    torch.testing.assert_close(trained[True][1], trained[False][1], rtol=1e-4, atol=1e-6)
    assert trained[True][0] == pytest.approx(trained[False][0], rel=1e-4)


def _steps(ws, name: str, batch: int, n_steps: int, graph: str, dropout: float = 0.0):
    """Losses of `n_steps` training steps from one seed: graph='none' plain train_step,
    'buffers' GraphStep without capture (its static buffers, any device), 'cuda' captured.
    Dropout is off by default: eager and replayed steps need not draw the same masks, and
    cuDNN's LSTM dropout keeps a random state of its own."""
    from stocklab.training.gradient import GraphStep, make_optimizer, train_step

    torch.manual_seed(0)
    model = build_model(name, ws.n_features, 10, model_config(name, {"dropout": dropout}))
    model.to(ws.device).train()
    params = list(model.parameters())
    opt = make_optimizer(params, TrainConfig(lr=1e-3), ws.device, graph=graph == "cuda")
    step = GraphStep(model, ws, opt, batch, capture=graph == "cuda") if graph != "none" else None
    gen = torch.Generator().manual_seed(0)
    losses, seen = [], []
    while len(losses) < n_steps:
        for n, t in ws.index_batches("train", batch, gen):
            loss = step(n, t) if step is not None else train_step(model, ws, opt, n, t)
            losses.append(float(loss))
            seen.append(n.numel())
            if len(losses) == n_steps:
                break
    return losses, seen, step, model


@pytest.mark.parametrize("name", ["lstm", "cnn1d"])
def test_graph_step_buffers_feed_the_same_windows_as_eager_steps(name):
    # the static buffers are overwritten every step: a stale or misaligned copy would change
    # the loss sequence; the epoch's remainder batch (another size) must still be trained on
    ws = _ws("cpu")
    n_train = ws.size("train")
    batch = 96
    assert n_train % batch != 0
    steps_per_epoch = -(-n_train // batch)
    eager, seen_e, _, m_e = _steps(ws, name, batch, 2 * steps_per_epoch, "none")
    buffered, seen_b, step, m_b = _steps(ws, name, batch, 2 * steps_per_epoch, "buffers")
    assert seen_b == seen_e and sum(seen_b) == 2 * n_train  # every window, each epoch, once
    assert buffered == eager  # bit-for-bit on CPU
    assert step.eager_steps == 2 * steps_per_epoch and step.replays == 0 and step.fallback is None
    for a, b in zip(m_e.parameters(), m_b.parameters()):
        assert torch.equal(a, b)


def test_a_step_that_cannot_be_captured_falls_back_to_eager_without_losing_a_step(monkeypatch):
    # e.g. a model that syncs with the host: capture raises, the step it was for and every later
    # one run eagerly, and the reason is kept (fit logs it); on CPU the warm-up runs eagerly too
    from stocklab.training.gradient import GraphStep, train_step

    def refuse(self):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(GraphStep, "_capture", refuse)
    monkeypatch.setattr(GraphStep, "_warm_step", lambda self: train_step(self.model, self.ws, self.opt, self.n, self.t))
    ws = _ws("cpu")
    eager, _, _, m_e = _steps(ws, "cnn1d", 64, 12, "none")
    fallen, _, step, m_f = _steps(ws, "cnn1d", 64, 12, "cuda")  # capture=True, on the CPU
    assert step.fallback == "RuntimeError: operation not permitted when stream is capturing"
    assert step.replays == 0 and step.eager_steps == step.steps == 12
    assert fallen == eager
    for a, b in zip(m_e.parameters(), m_f.parameters()):
        assert torch.equal(a, b)


@cuda
@pytest.mark.parametrize("name", ["lstm", "cnn2d", "cnn1d"])
def test_cuda_graph_steps_match_eager_steps(name):
    ws = _ws("cuda")
    eager, _, _, _ = _steps(ws, name, 64, 20, "none")
    graphed, _, step, _ = _steps(ws, name, 64, 20, "cuda")
    assert step.fallback is None and step.replays >= 10  # 3 warm-up steps, then replays
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=2e-2, atol=1e-4)


@cuda
@pytest.mark.parametrize("name", ["cnn2d", "cnn1d"])
def test_cuda_graph_captures_a_step_with_dropout(name):
    # dropout draws from the CUDA generator inside the graph: capture must work and replays train
    ws = _ws("cuda")
    graphed, _, step, model = _steps(ws, name, 64, 20, "cuda", dropout=0.1)
    assert step.fallback is None and step.replays >= 10
    assert torch.isfinite(torch.tensor(graphed)).all()
    torch.manual_seed(0)  # the same initial weights as _steps built
    initial = build_model(name, ws.n_features, 10, model_config(name, {"dropout": 0.1})).to(ws.device)
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), model.parameters()))
