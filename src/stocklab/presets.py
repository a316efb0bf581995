"""The source studies' configurations, selectable with `-P preset=<name>`.

A preset sets train and model parameters underneath: any parameter given explicitly overrides
it, also when the value given equals the built-in default. A preset names only what the study
changed (the split, label scale and scaler are the defaults' unless it says otherwise), and
nothing a model's definition fixes (cnn_ta's one-day window: models/cnn_ta.py).
"""

from __future__ import annotations

from stocklab.config import RECIPES, StockLabError

_CNN2D = dict(
    model="cnn2d", features="ohlcv", seq_len=96, horizon=20, batch_size=64, lr=1e-5, epochs=200, patience=20,
)  # fmt: skip

CS_RECIPE = RECIPES["cs"]  # the cross-sectional recipe (config.RECIPES), the model's defaults otherwise

PRESETS: dict[str, dict] = {
    # 2D CNN study: 96-day windows of 7 OHLCV inputs -> 20-day return, batch 64, lr 1e-5, 200 epochs
    "seed000-baseline": {**_CNN2D, "variant": "baseline"},
    "seed000-deep": {**_CNN2D, "variant": "deep"},
    "seed000-deep-scale10": {**_CNN2D, "variant": "deep", "label_scale": 10.0},
    # RNN study: hidden 8, 2 layers, 5-day windows, batch 20, Adam 1e-3, 100 epochs, next close
    "seed001-rnn": dict(
        model="rnn",
        hidden_size=8,
        num_layers=2,
        seq_len=5,
        horizon=1,
        batch_size=20,
        lr=1e-3,
        epochs=100,
        patience=10,
        features="ohlcv",
        scaler="minmax",
    ),  # fmt: skip
    # LSTM lab: 10-day windows -> close 5 days later, relative (log x / last close) features
    "seed002-lstm": dict(
        model="lstm", seq_len=10, horizon=5, features="relative", scaler="none", epochs=50, patience=5
    ),
    # seq2seq: 100 units, next value at every step
    "seed003-seq2seq": dict(model="seq2seq", hidden_size=100, seq_len=20, horizon=1, features="returns", epochs=50),
    # autoregressive 1D CNN: 12 monthly returns -> next month's return
    "seed004-cnn1d": dict(
        model="cnn1d",
        features="returns",
        return_period=21,
        window_stride=21,
        seq_len=12,
        horizon=21,
        epochs=50,
        patience=5,
    ),  # fmt: skip
    # CNN-TA: 15x15 indicator image of the day -> buy/hold/sell
    "seed004-cnn-ta": dict(
        model="cnn_ta",
        features="technical",
        horizon=10,
        batch_size=128,
        lr=1e-3,
        epochs=30,
        patience=5,
        scaler="standard",
    ),  # fmt: skip
    **{f"cs-{m}": {"model": m, **CS_RECIPE} for m in ("lstm", "gru", "transformer", "cnn2d")},
}


def preset_values(name: str) -> dict:
    if name not in PRESETS:
        raise StockLabError(f"preset: unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return dict(PRESETS[name])
