"""Figures a run logs: loss curves and the attention heatmap (tear sheets: factor_eval.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve(train_loss: list[float], valid_loss: list[float], best_epoch: int, objective: str = "MSE"):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(train_loss) + 1)
    ax.plot(epochs, train_loss, marker="o", label="train")
    ax.plot(epochs, valid_loss, marker="o", label="valid")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", ls="--", label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(objective)
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Loss curves")
    fig.tight_layout()
    return fig


def attention_heatmap(weights: np.ndarray, labels: list[str]):
    """Attention weights (windows x days in the window) as a heatmap."""
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(labels) + 1.5))
    im = ax.imshow(weights, aspect="auto", cmap="viridis")
    T = weights.shape[1]
    ax.set_xticks(range(0, T, max(T // 10, 1)), [str(d - T + 1) for d in range(0, T, max(T // 10, 1))])
    ax.set_xlabel("day in window (0 = last)")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="attention weight")
    ax.set_title("Attention over the window, test windows")
    fig.tight_layout()
    return fig


def portfolio_plot(daily, title: str = "long-short book (top minus bottom quantile)"):
    """Cumulative gross and net return of a daily book (portfolio.daily_portfolio), its net
    drawdown underneath."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(3, 1))
    dates = daily.index.to_numpy()
    for col, color in (("gross", "tab:gray"), ("net", "tab:blue")):
        top.plot(dates, np.cumprod(1.0 + daily[col].to_numpy()) - 1.0, color=color, label=col)
    top.axhline(0.0, color="k", lw=0.5)
    top.set_ylabel("cumulative return")
    top.set_title(title)
    top.legend(loc="upper left")
    wealth = np.cumprod(1.0 + daily["net"].to_numpy())
    drawdown = wealth / np.maximum.accumulate(np.maximum(wealth, 1.0)) - 1.0
    bottom.fill_between(dates, drawdown, 0.0, color="tab:red", alpha=0.4)
    bottom.set_ylabel("net drawdown")
    fig.tight_layout()
    return fig


def feature_importance_plot(table, top: int = 20):
    """Horizontal bars of the `top` largest permutation drops (and the trees' gain share)."""
    head = table.head(top).iloc[::-1]
    panels = 2 if "gain" in head else 1
    fig, axes = plt.subplots(1, panels, figsize=(4 + 5 * panels, 0.3 * len(head) + 1.5), squeeze=False, sharey=True)
    ax = axes[0, 0]
    ax.barh(head["feature"], head["permutation_drop"], color="tab:blue")
    ax.axvline(0, color="black", lw=0.6)
    days = table.attrs.get("days", table["days"].iloc[0] if len(table) else 0)
    ax.set_xlabel(f"drop in validation rank IC when shuffled within days ({days} days)")
    ax.tick_params(axis="y", labelsize=7)
    if "gain" in head:
        total = table["gain"].sum() or 1.0
        axes[0, 1].barh(head["feature"], head["gain"] / total, color="tab:green")
        axes[0, 1].set_xlabel("share of LightGBM split gain")
    fig.suptitle(f"feature importance (top {len(head)} of {len(table)} by permutation)", fontsize=10)
    fig.tight_layout()
    return fig


def log_figure(fig, artifact_file: str) -> None:
    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)
