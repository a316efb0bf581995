"""User-facing errors and the one place that turns any exception into one line of text."""

from __future__ import annotations


class StockLabError(ValueError):
    """A user-facing error: the CLI prints its one-line message and exits non-zero."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none.

    Used for CLI errors, MLflow tags and Optuna user attributes: an exception with an empty or
    whitespace-only message must still give a readable line (never an IndexError).
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def describe(exc: BaseException, limit: int = 500) -> str:
    """`Type: first line` for tags and trial attributes, where the type tells what failed."""
    text = one_line(exc, limit)
    name = type(exc).__name__
    return text if text == name else f"{name}: {text}"[:limit]
