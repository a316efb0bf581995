"""Every registered model honours the contract x (B, T, F) -> (B,) and can learn."""

from __future__ import annotations

import pytest
import torch

from stocklab.config import StockLabError
from stocklab.models import MODELS, build_model, model_config


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seq_len, n_features", [(20, 7), (5, 1)])
def test_output_shape(name, seq_len, n_features):
    model = build_model(name, n_features, seq_len, model_config(name))
    out = model(torch.randn(4, seq_len, n_features))
    assert out.shape == (4,) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_decreases_on_a_learnable_signal(name):
    torch.manual_seed(0)
    x = torch.randn(512, 10, 3)
    y = x[:, -1, 0] - 0.5 * x[:, -3, 1]  # depends on the window: learnable
    model = build_model(name, 3, 10, model_config(name, {"dropout": 0.0}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.mean((model(x) - y) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_cnn2d_variants_set_channels():
    base = build_model("cnn2d", 7, 96, model_config("cnn2d", {"variant": "baseline"}))
    deep = build_model("cnn2d", 7, 96, model_config("cnn2d", {"variant": "deep"}))
    assert base.features[0][0].out_channels == 2 and base.features[1][0].out_channels == 4
    assert deep.features[0][0].out_channels == 8 and deep.features[1][0].out_channels == 16


def test_lstm_batch_norm_and_layers():
    m = build_model("lstm", 4, 10, model_config("lstm", {"batch_norm": "true", "num_layers": "3"}))
    assert isinstance(m.norm, torch.nn.BatchNorm1d) and m.rnn.num_layers == 3


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("nope", {}, "model: unknown model 'nope'"),
        ("lstm", {"dropout": 1.0}, "dropout: 1.0 must be in [0, 1)"),
        ("lstm", {"dropout": "x"}, "dropout: 'x' is not a valid float"),
        ("lstm", {"hidden_size": 0}, "hidden_size: 0 must be >= 1"),
        ("cnn2d", {"variant": "huge"}, "variant: 'huge' must be one of"),
        ("cnn2d", {"hidden_size": 3}, "hidden_size: unknown parameter"),
    ],
)
def test_bad_model_config(name, overrides, message):
    with pytest.raises(StockLabError) as e:
        model_config(name, overrides)
    assert message in str(e.value)
