"""The contract every model family keeps; the trainer and the pipeline rely on nothing else.

A model is a small `nn.Module` built as ``cls(n_features, seq_len, cfg)``; ``forward(x)`` maps
windows x (B, T, F) to one score per window (B,): what every job scores, ranks and serves. What
the model trains on and needs is declared here, never sniffed with `hasattr`:

    output            the kind of output it is trained through (losses.py: RETURN, STEPS, CLASSES)
    auto_features     the feature set `features=auto` picks for it (cnn_ta: its indicator image)
    train_outputs(x)  the tensor that output's loss reads (forward(x) unless the output differs)
    penalty()         a term added to the training loss (None: no penalty)
    fixed_inputs(cfg) TrainConfig values its definition fixes (cnn_ta's one-day image, a factor's
                      look-back): applied before anything is built or named
    attention(x)      (B, T) attention over the window for the heatmap, or None
    constant_forecast True for a forecast constant by design (the naive baselines): exempt from
                      the degenerate-run check (pipeline.fitting.degenerate)
    trained_by        "gradient" (the shared trainer: Adam on the output's loss) or "boosting"
                      (boosting.py: gradient-boosted trees on the flattened window)
    whole_days        True for a model whose score of a window depends on the other tickers of
                      its date (cross.py): forward(x) then always receives exactly one date's
                      windows, all of its tickers, in training (batching=daily, one date a
                      step), in every scoring pass and in serving; other models' windows are
                      scored in any batches (their outputs independent of the batch)
    gain_importance(F) the model's own importance per feature (trees: split gain), or None
    save_state(dir) / load_state(dir)
                      the fitted state as files: `state_dict.pt` (tensors, read back with
                      weights_only=True) unless the family keeps another format (LightGBM text)

Each model's config dataclass declares its fields' bounds with `opt` (checked by
`fields.check_fields`) and, where fields constrain each other, a `validate` method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stocklab.losses import RETURN, Output

STATE_FILE = "state_dict.pt"


class StockModel(nn.Module):
    output: Output = RETURN
    auto_features: str | None = None  # the feature set `features=auto` means for it (None: by the data)
    trained_by: str = "gradient"
    constant_forecast: bool = False
    whole_days: bool = False  # forward(x) sees one date's cross-section at a time (see above)

    def save_state(self, folder: Path) -> None:
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, Path(folder) / STATE_FILE)

    def load_state(self, folder: Path) -> None:
        self.load_state_dict(torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True))

    def train_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)  # (B,)

    def penalty(self) -> torch.Tensor | None:
        return None

    @classmethod
    def fixed_inputs(cls, cfg) -> dict:
        return {}

    def attention(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def gain_importance(self, n_features: int) -> np.ndarray | None:
        """(F,) the model's own importance of each input feature (trees: split gain), or None."""
        return None
