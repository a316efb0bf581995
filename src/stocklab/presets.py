"""The source studies' configurations, selectable with `-P preset=<name>`.

A preset sets train and model parameters underneath: any parameter given explicitly overrides
it, also when the value given equals the built-in default. A preset names only what the study
changed (the split, label scale and scaler are the defaults' unless it says otherwise), and
nothing a model's definition fixes (cnn_ta's one-day window: models/cnn_ta.py).

The source studies' presets (seed*) keep their studies' own recipe, `recipe=raw`: MSE on the
raw forward return of shuffled windows, the kept epoch by validation loss (config.RECIPES),
with the features each study used. The cs-<model> presets name the default recipe, cs.
"""

from __future__ import annotations

from stocklab.config import RECIPES, StockLabError

RAW = {"recipe": "raw", **RECIPES["raw"]}  # the source studies' recipe (config.RECIPES)

_CNN2D = dict(
    **RAW, model="cnn2d", features="ohlcv", seq_len=96, horizon=20, batch_size=64, lr=1e-5, epochs=200, patience=20,
)  # fmt: skip


PRESETS: dict[str, dict] = {
    # 2D CNN study: 96-day windows of 7 OHLCV inputs -> 20-day return, batch 64, lr 1e-5, 200 epochs
    "seed000-baseline": {**_CNN2D, "variant": "baseline"},
    "seed000-deep": {**_CNN2D, "variant": "deep"},
    "seed000-deep-scale10": {**_CNN2D, "variant": "deep", "label_scale": 10.0},
    # RNN study: hidden 8, 2 layers, 5-day windows, batch 20, Adam 1e-3, 100 epochs, next close
    "seed001-rnn": dict(
        **RAW,
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
        **RAW, model="lstm", seq_len=10, horizon=5, features="relative", scaler="none", epochs=50, patience=5
    ),
    # seq2seq: 100 units, next value at every step
    "seed003-seq2seq": dict(
        **RAW, model="seq2seq", hidden_size=100, seq_len=20, horizon=1, features="returns", epochs=50
    ),
    # autoregressive 1D CNN: 12 monthly returns -> next month's return
    "seed004-cnn1d": dict(
        **RAW,
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
        **RAW,
        model="cnn_ta",
        features="technical",
        horizon=10,
        batch_size=128,
        lr=1e-3,
        epochs=30,
        patience=5,
        scaler="standard",
    ),  # fmt: skip
    # MASTER (Li et al., AAAI 2024): attention over each stock's days, then across the day's
    # stocks, guided by a market vector; trained on whole days. Its settings kept here: an
    # 8-day look-back window, 2 heads across stocks, dropout 0.5. Ours: a width of 64 (MASTER:
    # 256, too slow for a CPU), a GRU for its temporal attention, a 5-day label ranked within
    # each day, lr 1e-4, the kept epoch by validation rank IC
    "master2024": dict(
        model="cross",
        recipe="cs",
        **RECIPES["cs"],
        features="relative",
        seq_len=8,
        horizon=5,
        lr=1e-4,
        epochs=40,
        patience=5,
        hidden_size=64,
        heads=2,
        num_layers=1,
        dropout=0.5,
        market=True,
    ),  # fmt: skip
    # the default recipe named: label cs_rank, batching daily, select rank_ic, relative prices
    **{
        f"cs-{m}": {"model": m, "recipe": "cs", **RECIPES["cs"], "features": "relative"}
        for m in ("lstm", "gru", "transformer", "cnn2d")
    },  # fmt: skip
}


def preset_values(name: str) -> dict:
    if name not in PRESETS:
        raise StockLabError(f"preset: unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return dict(PRESETS[name])
