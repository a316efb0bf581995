"""How a data file's text becomes values: its dates (one way per file, decided from the values)
and its numbers (a decimal mark, thousands separators, `N/A`-like blanks). data.py reads every
file through these, so a mistake names the file, the column and a sample."""

from __future__ import annotations

import re

import pandas as pd

from stocklab.errors import StockLabError, one_line

_DAY_MONTH = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})")
# a UTC offset after a time of day ("00:00:00-05:00", "00:00Z"): the time is kept, the offset cut
_OFFSET = re.compile(r"(\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:[+-]\d{2}:?\d{2}|Z)$")


# the written shapes of a date, one per file: a file mixing them would be read with one rule
_SHAPES = {
    "ISO (yyyy-mm-dd)": re.compile(r"^\d{4}-\d{1,2}-\d{1,2}(?:$|[T ])"),
    "d/m/yyyy or m/d/yyyy": _DAY_MONTH,
    "two-digit years (d/m/yy)": re.compile(r"^\d{1,2}[/.-]\d{1,2}[/.-]\d{2}(?:$|\s)"),
}


def _check_one_shape(text: pd.Series, where: str, col: str) -> None:
    """Two-digit years, or several shapes in one file, are errors: read with one rule (or by
    pandas' guess: 08/02/13 as August 2nd) they would land on another calendar."""
    found = {name: text[text.str.match(rx)] for name, rx in _SHAPES.items()}
    found = {name: hits for name, hits in found.items() if len(hits)}
    if "two-digit years (d/m/yy)" in found:
        example = found["two-digit years (d/m/yy)"].iloc[0]
        raise StockLabError(
            f"{where}: column '{col}' has two-digit years (e.g. {example!r}), which cannot be told apart; "
            "write YYYY-MM-DD or say how they are written (-P date_format=%d/%m/%y)"
        )
    if len(found) > 1:
        examples = "; ".join(f"{name}: {hits.iloc[0]!r}" for name, hits in found.items())
        raise StockLabError(
            f"{where}: column '{col}' mixes date shapes ({examples}); write every date one way (YYYY-MM-DD)"
        )


def parse_dates(raw: pd.Series, where: str, col: str, date_format: str = "") -> pd.Series:
    """Dates of one file with one explicit reading: `date_format` when given, else ISO strings,
    yyyymmdd integers, or d/m/y vs m/d/y decided from the values (a first field above 12 means
    day-first); timestamps with UTC offsets keep the local date they were written with (mixed
    -05:00/-04:00 of one exchange)."""
    values = raw.dropna()
    try:
        if date_format and not pd.api.types.is_datetime64_any_dtype(raw):
            text = raw.astype("string").str.strip()
            dates = pd.to_datetime(text, format=date_format, errors="coerce")
        elif pd.api.types.is_datetime64_any_dtype(raw):
            dates = raw.dt.tz_localize(None) if raw.dt.tz is not None else raw
        elif pd.api.types.is_numeric_dtype(raw):
            if not (values.between(1678_01_01, 2261_12_31) & (values % 1 == 0)).all():
                raise StockLabError(
                    f"{where}: numeric dates in column '{col}' (e.g. {values.iloc[0]!r}) are not yyyymmdd"
                )
            dates = pd.to_datetime(raw.astype("Int64").astype("string"), format="%Y%m%d", errors="coerce")
        else:
            text = raw.astype("string").str.strip().str.replace(_OFFSET, r"\1", regex=True)
            _check_one_shape(text.dropna(), where, col)
            parts = text.str.extract(_DAY_MONTH).dropna().astype(int)
            dayfirst = False
            if len(parts):
                first, second = bool((parts[0] > 12).any()), bool((parts[1] > 12).any())
                if first == second:
                    how = "mixes day-first and month-first dates" if first else "has an ambiguous day/month order"
                    raise StockLabError(
                        f"{where}: column '{col}' {how} (e.g. {values.iloc[0]!r}); write them as YYYY-MM-DD "
                        "or say how they are written (-P date_format=%d/%m/%Y)"
                    )
                dayfirst = first
            dates = pd.to_datetime(text, errors="coerce", format="mixed", dayfirst=dayfirst)
    except (OverflowError, pd.errors.OutOfBoundsDatetime) as e:
        raise StockLabError(f"{where}: a date in column '{col}' is outside 1678-2261 ({one_line(e)})") from None
    bad = dates.isna() & raw.notna()
    if bad.any():
        example = raw[bad].iloc[0]
        years = re.findall(r"\d{4}", str(example))
        why = " (outside 1678-2261)" if years and not 1678 <= int(years[0]) <= 2261 else ""
        fmt = f" with date_format={date_format!r}" if date_format else ""
        raise StockLabError(f"{where}: unparseable date {example!r} in column '{col}'{fmt}{why}")
    # pandas parses far dates at a coarser unit; the panel's nanosecond dates end in 2262
    outside = dates.notna() & ((dates.dt.year > 2261) | (dates.dt.year < 1678))
    if outside.any():
        raise StockLabError(f"{where}: date {raw[outside].iloc[0]!r} in column '{col}' is outside 1678-2261")
    return dates.astype("datetime64[ns]")


_NA_TEXT = {"", "na", "n/a", "nan", "null", "none", "-"}


def numbers(raw: pd.Series, where: str, col: str, decimal: str = ".") -> pd.Series:
    """A value column as float64. Empty cells are missing values (their rows are dropped and
    counted); text that is not a number (decimal commas, currency signs) is an error: read as
    missing it would drop the whole ticker without a word. `decimal=","` reads "1.234,5" and
    "1 234,5" as 1234.5."""
    if decimal == "," and (raw.dtype == object or pd.api.types.is_string_dtype(raw)):
        raw = raw.astype("string").str.replace(r"[.\s]", "", regex=True).str.replace(",", ".", regex=False)
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        text = raw.astype("string").str.strip()
        junk = values.isna() & raw.notna() & ~text.str.lower().isin(_NA_TEXT)
        if junk.any():
            example = raw[junk].iloc[0]
            raise StockLabError(
                f"{where}: column '{col}' has {int(junk.sum())} value(s) that are not numbers (e.g. {example!r}); "
                "write plain numbers without currency signs (-P decimal=, reads decimal commas)"
            )
    return values
