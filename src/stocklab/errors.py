"""User-facing errors, the one place that turns any exception into one line of text, and the
masking of passwords in URLs wherever the project prints or logs one."""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host (RDB storages, tracking servers)
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<secret>\S+)(?=@[^@\s]*)"
)  # up to the last @


# ?password=... / &token=... in a URL's query string (psycopg, SQLAlchemy and HTTP URLs take them)
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|token|secret|api_key|apikey)=)[^&\s]*", re.I)


def mask_secrets(text) -> str:
    """`text` with the password of every URL in it (user:password@ or a password/token query
    parameter) replaced by `***`."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", str(text))
    return _QUERY_SECRET.sub(lambda m: m.group("head") + "***", text)


class StockLabError(ValueError):
    """A user-facing error: the CLI prints its one-line message and exits non-zero."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none.

    Used for CLI errors, MLflow tags and Optuna user attributes: an exception with an empty or
    whitespace-only message must still give a readable line (never an IndexError).
    """
    for line in mask_secrets(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def describe(exc: BaseException, limit: int = 500) -> str:
    """`Type: first line` for tags and trial attributes, where the type tells what failed."""
    text = one_line(exc, limit)
    name = type(exc).__name__
    return text if text == name else f"{name}: {text}"[:limit]
