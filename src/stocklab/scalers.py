"""Feature scalers: fitted on the training days only and saved with the model (its Bundle).

    standard, minmax          one mean/std (min/range) per feature over the training days
    standard_ticker, ...      per ticker (a ticker without training days: the global values)
    cs_zscore                 each feature z-scored within each day (nothing fitted)
    robust                    Qlib's RobustZScoreNorm: median and 1.4826 MAD, clipped to +-3
    none                      unscaled

Relative columns (features=relative) are never shifted and are divided by their reference's
daily-change std (relative_scales), so they reach the models in units of a daily return.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from stocklab.crosssection import zscore_days

# the `scaler` parameter's values (config.TrainConfig)
SCALERS = ("standard", "minmax", "standard_ticker", "minmax_ticker", "cs_zscore", "robust", "none")

ROBUST_MADS = 1000.0  # standard scaling leaves out values beyond median +- this many MADs


def _without_absurd(part: np.ndarray, axis) -> np.ndarray:
    """`part` with values beyond median +- ROBUST_MADS x MAD (per feature, over `axis`: days,
    or tickers and days) set to NaN: one absurd value (a volume of 1e30) would otherwise set
    the mean and the standard deviation of its feature and flatten every other value. On the
    S&P 500 set no value is that far (the widest, volume, reaches ~100 MADs), so real data
    scales exactly as without the rule."""
    med = np.nanmedian(part, axis=axis, keepdims=True)
    mad = np.nanmedian(np.abs(part - med), axis=axis, keepdims=True)
    width = np.where(mad > 0, ROBUST_MADS * mad, np.inf)  # a constant feature has no MAD: keep it
    return np.where(np.abs(part - med) > width, np.nan, part)


@dataclass
class Scaler:
    """Per-feature affine scaling fitted on the training days only: x' = (x - shift) / scale.
    `standard` (and `standard_ticker`) fit the mean and standard deviation of the training
    values within median +- 1000 MAD (`_without_absurd`): a single absurd value is left out.

    `shift` and `scale` are (1, F) for a global scaler or (N, F) per ticker. `cs_zscore` fits
    nothing: each feature is z-scored within each day across the tickers scored together
    (crosssection.zscore_days), so a model scores a day's cross-section, never a lone ticker;
    `skip` are the columns it leaves alone (relative features).
    """

    kind: str
    shift: np.ndarray
    scale: np.ndarray
    skip: tuple[int, ...] = ()

    @classmethod
    def fit(cls, X: np.ndarray, train_end: int, kind: str, skip_cols=(), train_start: int = 0, skip_ref=()) -> Scaler:
        N, _, F = X.shape
        train = X[:, train_start:train_end]  # (N, Dtrain, F): only the training span's days
        if kind == "cs_zscore":
            return cls(kind, np.zeros((1, F)), np.ones((1, F)), tuple(int(c) for c in skip_cols))
        if kind == "none" or train_end <= train_start:
            return cls("none", np.zeros((1, F)), np.ones((1, F)))
        if kind == "robust":
            return cls._robust(train, skip_cols, skip_ref)
        per_ticker = kind.endswith("_ticker")
        axis = 1 if per_ticker else (0, 1)
        shift, scale = [], []
        # a few features at a time: nanmean/nanstd copy their input, and the training part of a
        # 225-feature panel is ~300 MB, so whole-panel statistics would double peak memory
        for j in range(0, F, 16):
            part = train[..., j : j + 16]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN tickers
                if kind.startswith("standard"):
                    part = _without_absurd(part, axis)
                    shift.append(np.nanmean(part, axis=axis, dtype=np.float64))
                    scale.append(np.nanstd(part, axis=axis, dtype=np.float64))
                else:
                    lo, hi = np.nanmin(part, axis=axis), np.nanmax(part, axis=axis)
                    shift.append(lo)
                    scale.append(hi.astype(np.float64) - lo)
        shift = np.atleast_2d(np.concatenate(shift, axis=-1)).astype(np.float64)
        scale = np.atleast_2d(np.concatenate(scale, axis=-1)).astype(np.float64)
        if per_ticker:
            # tickers with no training history use the global statistics
            g = cls.fit(X, train_end, kind.replace("_ticker", ""), train_start=train_start)
            missing = ~np.isfinite(shift) | ~np.isfinite(scale)
            shift = np.where(missing, g.shift, shift)
            scale = np.where(missing, g.scale, scale)
        scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
        shift = np.where(np.isfinite(shift), shift, 0.0)
        for c in skip_cols:  # relative columns: no shift (the window's difference removes it)
            shift[:, c], scale[:, c] = 0.0, 1.0
        for c, s in relative_scales(train, skip_cols, skip_ref).items():
            scale[:, c] = s
        return cls(kind, shift, scale)

    @classmethod
    def _robust(cls, train: np.ndarray, skip_cols, skip_ref) -> Scaler:
        """Qlib's RobustZScoreNorm: (x - median) / (1.4826 MAD) over the training days, clipped
        to +-ROBUST_CLIP by transform (relative columns: scaled as by every scaler, never
        clipped: their levels become a window's differences only later)."""
        F = train.shape[-1]
        shift, scale = np.zeros((1, F)), np.ones((1, F))
        for j in range(0, F, 16):  # a few features at a time (nanmedian copies its input)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features
                part = train[..., j : j + 16].reshape(-1, min(16, F - j)).astype(np.float64)
                med = np.nanmedian(part, axis=0)
                shift[0, j : j + 16] = med
                scale[0, j : j + 16] = 1.4826 * np.nanmedian(np.abs(part - med), axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
        shift = np.where(np.isfinite(shift), shift, 0.0)
        for c in skip_cols:
            shift[:, c], scale[:, c] = 0.0, 1.0
        for c, s in relative_scales(train, skip_cols, skip_ref).items():
            scale[:, c] = s
        return cls("robust", shift, scale, tuple(int(c) for c in skip_cols))

    def transform(self, X: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Scaled float32 copy of X, or X itself scaled in place (`inplace`, X float32)."""
        # in float32 throughout: a float64 temporary of a large panel would double peak memory
        shift, scale = (a[:, None, :].astype(np.float32) for a in (self.shift, self.scale))
        out = X if inplace and X.dtype == np.float32 else X.astype(np.float32, copy=True)
        if self.kind == "cs_zscore":
            return zscore_days(out, self.skip, out=out)
        out -= shift
        out /= scale
        if self.kind == "robust":  # NaN stays NaN here; the WindowSet reads it as 0 (Qlib's Fillna)
            for c in np.setdiff1d(np.arange(out.shape[-1]), self.skip):  # views: clipped in place
                np.clip(out[..., c], -ROBUST_CLIP, ROBUST_CLIP, out=out[..., c])
        return out

    @property
    def per_ticker(self) -> bool:
        return self.shift.shape[0] > 1

    def rows(self, index) -> Scaler:
        """A per-ticker scaler restricted/reordered to the given ticker rows."""
        return Scaler(self.kind, self.shift[index], self.scale[index])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist(), "skip": list(self.skip)}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(d["kind"], np.asarray(d["shift"]), np.asarray(d["scale"]), tuple(d.get("skip", ())))


ROBUST_CLIP = 3.0  # the robust scaler's bound, in robust standard deviations


def relative_scales(train: np.ndarray, cols, refs) -> dict[int, float]:
    """The divisor of each relative column (a log level that gather_windows makes log(x / x_ref
    on the window's last day)): the standard deviation of its reference column's one-day change
    over the training days, the same for a column and its reference, so the window's difference
    is divided by it: relative prices in units of a daily return (~1 instead of ~0.02),
    relative volume in units of a daily volume change. `refs` empty: no scaling (1)."""
    out = {}
    for c, r in zip(cols, refs):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            step = np.diff(train[..., r].astype(np.float64), axis=1)  # (N, Dtrain - 1)
            sd = float(np.nanstd(_without_absurd(step, (0, 1))))
        out[int(c)] = sd if np.isfinite(sd) and sd > 1e-12 else 1.0
    return out
