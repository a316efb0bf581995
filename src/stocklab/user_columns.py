"""The user's own columns beside the bars (`extra`): which columns of a file are kept, and
what a folder of files holds of them. data.py reads them with the same date and number rules
as the bars; features.py turns them into the `extra` feature set.
"""

from __future__ import annotations

import sys

import pandas as pd

from stocklab.errors import StockLabError
from stocklab.features import BAR_COLS, READ_NAMES


def in_frame(df: pd.DataFrame, lower: dict, options) -> dict:
    """{kept name: the frame's column} of the user's columns this frame has: the named ones
    (matched case-insensitively, kept as named), or with `all` every numeric column that is
    not a bar, date or ticker column. A named column a file lacks is NaN there (_read_files)."""
    if options.extra == "all":
        taken = {*BAR_COLS, *READ_NAMES}
        return {str(c).strip(): c for c in df.columns
                if str(c).strip().lower() not in taken and pd.api.types.is_numeric_dtype(df[c])}  # fmt: skip
    return {name: lower[name.lower()] for name in options.extra_names() if name.lower() in lower}


def in_files(frames: list[pd.DataFrame], options, data: str, report) -> list[str]:
    """The extra columns of the read frames, in order; those some files lack are counted (NaN there)."""
    if not options.extra:
        return []
    bars = {"date", "ticker", *BAR_COLS}
    found = list(dict.fromkeys(c for f in frames for c in f.columns if c not in bars))
    names = options.extra_names() or found
    absent = [c for c in names if c not in found]
    if absent:
        raise StockLabError(
            f"extra: column {absent[0]!r} is in none of the files of '{data}' (columns are matched "
            "case-insensitively; extra=all keeps every numeric column that is not a bar column)"
        )
    if not names:
        raise StockLabError(f"extra: 'all' found no numeric column beside the bars in '{data}'")
    report.extra = list(names)
    report.extra_missing = {c: sum(c not in f.columns for f in frames) for c in names}
    report.extra_missing = {c: n for c, n in report.extra_missing.items() if n}
    if report.extra_missing:
        c, n = next(iter(report.extra_missing.items()))
        print(f"stocklab: warning: data: extra column {c!r} is missing from {n} file(s); NaN there "
              "(read as the training mean after scaling); see data_report.json", file=sys.stderr)  # fmt: skip
    return list(names)
