"""Data layer: formats, cleaning rules and their counts, caching, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_bars, write_ticker_csvs

from stocklab.config import StockLabError
from stocklab.data import ReadOptions, load_panel, ticker_from_filename


@pytest.mark.parametrize(
    "name, ticker",
    [("AAPL_data.csv", "AAPL"), ("AAPL.US_D1.csv", "AAPL"), ("AAPL.csv", "AAPL"), ("brk_b.parquet", "brk_b")],
)
def test_ticker_from_filename(tmp_path, name, ticker):
    assert ticker_from_filename(tmp_path / name) == ticker


@pytest.mark.parametrize("style", ["data", "us"])
def test_per_ticker_folder_formats(tmp_path, bars, style):
    folder = write_ticker_csvs(bars, tmp_path / style, style=style)
    panel, report = load_panel(str(folder), cache_dir=None)
    assert sorted(panel["ticker"].unique()) == sorted(bars["Name"].unique())
    assert len(panel) == len(bars) and report.rows_kept == len(bars)
    assert {"open", "high", "low", "close", "volume"} <= set(panel.columns)
    assert report.dropped == {}


def test_long_parquet_file(tmp_path, bars):
    path = tmp_path / "long.parquet"
    bars.rename(columns={"Name": "Ticker", "date": "Date"}).to_parquet(path)
    panel, report = load_panel(str(path), cache_dir=None)
    assert report.tickers == bars["Name"].nunique() and len(panel) == len(bars)


def test_sample_is_close_only_real_data():
    panel, report = load_panel("sample", cache_dir=None)
    assert report.tickers == 20 and report.columns == ["close"]
    assert report.date_min.startswith("1990") and (panel["close"] > 0).all()


def test_dirty_rows_are_dropped_or_repaired_and_counted(tmp_path):
    df = synthetic_bars(n_tickers=2, n_days=50)
    df.loc[3, "open"] = float("nan")  # missing price
    df.loc[4, "close"] = -1.0  # non-positive price
    df.loc[5, ["high", "low"]] = [1.0, 2.0]  # high < low
    df.loc[6, "high"] = df.loc[6, ["open", "close"]].min()  # close/open above high -> repaired
    df.loc[7, "volume"] = -5  # bad volume
    df = pd.concat([df, df.iloc[[10]]])  # duplicated (ticker, date)
    folder = write_ticker_csvs(df, tmp_path / "dirty")
    panel, report = load_panel(str(folder), cache_dir=None)
    assert report.dropped == {
        "duplicate_ticker_date": 1,
        "missing_price": 1,
        "nonpositive_price": 1,
        "high_below_low": 1,
        "bad_volume": 1,
    }
    assert report.repaired == {"open_close_outside_high_low": 1}
    assert report.rows_read == 101 and report.rows_kept == 96 == len(panel)
    assert (panel["high"] >= panel[["open", "close"]].max(axis=1)).all()
    assert not panel.duplicated(["ticker", "date"]).any()


def test_cache_is_keyed_by_file_contents(tmp_path, csv_dir):
    cache = tmp_path / "cache"
    first, _ = load_panel(str(csv_dir), cache_dir=str(cache))
    assert len(list(cache.glob("panel-*.parquet"))) == 1
    again, rep = load_panel(str(csv_dir), cache_dir=str(cache))
    pd.testing.assert_frame_equal(first, again)
    # changing a file changes the fingerprint -> a second cache entry, new data
    f = sorted(csv_dir.iterdir())[0]
    d = pd.read_csv(f).iloc[:-10]
    d.to_csv(f, index=False)
    changed, rep2 = load_panel(str(csv_dir), cache_dir=str(cache))
    assert rep2.fingerprint != rep.fingerprint and len(changed) == len(first) - 10
    assert len(list(cache.glob("panel-*.parquet"))) == 2


def _one_file(tmp_path, df, name="BAD_data.csv"):
    folder = tmp_path / "bad"
    folder.mkdir(parents=True)
    df.to_csv(folder / name, index=False)
    return str(folder), str(folder / name)


def _day_first(dates: pd.Series) -> pd.Series:
    return pd.to_datetime(dates).dt.strftime("%d/%m/%Y")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.drop(columns="close"), "missing required column 'close'"),
        (lambda d: d.drop(columns="date"), "missing date column"),
        (lambda d: d.assign(date=["not a date"] + list(d["date"][1:])), "unparseable date 'not a date'"),
        (lambda d: d.assign(date=pd.to_datetime(d["date"]) + pd.Timedelta(hours=9, minutes=30)), "intraday"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, mutate, message):
    folder, file = _one_file(tmp_path, mutate(synthetic_bars(n_tickers=1, n_days=30)))
    with pytest.raises(StockLabError) as e:
        load_panel(folder, cache_dir=None)
    assert message in str(e.value) and file in str(e.value) and "\n" not in str(e.value)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StockLabError, match="contains no .csv"):
        load_panel(str(tmp_path / "empty"), cache_dir=None)
    with pytest.raises(StockLabError, match="is not 'sample', an existing folder or a file"):
        load_panel(str(tmp_path / "nope"), cache_dir=None)


def _dates_as(fmt: str):
    return lambda d: d.assign(date=pd.to_datetime(d["date"]).dt.strftime(fmt))


@pytest.mark.parametrize(
    "rewrite",
    [
        _dates_as("%d/%m/%Y"),  # day-first: read right, not month-first where the day is <= 12
        _dates_as("%m/%d/%Y"),
        _dates_as("%d.%m.%Y"),
        lambda d: d.assign(date=pd.to_datetime(d["date"]).dt.strftime("%Y%m%d").astype(int)),
        # one exchange's local midnight with the offset of its season (-05:00 / -04:00)
        lambda d: d.assign(date=[f"{x} 00:00:00{'-04:00' if i % 2 else '-05:00'}" for i, x in enumerate(d["date"])]),
    ],
)
def test_every_date_format_of_a_file_gives_the_same_dates(tmp_path, rewrite):
    bars = synthetic_bars(n_tickers=1, n_days=60)
    truth, _ = load_panel(_one_file(tmp_path / "a", bars)[0], cache_dir=None)
    panel, _ = load_panel(_one_file(tmp_path / "b", rewrite(bars))[0], cache_dir=None)
    pd.testing.assert_series_equal(panel["date"], truth["date"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.iloc[:5].assign(date=pd.to_datetime(d["date"][:5]).dt.strftime("%m/%d/%Y")),
         "has an ambiguous day/month order"),
        (lambda d: d.assign(date=["31/01/2015", "01/31/2015"] + list(_day_first(d["date"][2:]))),
         "mixes day-first and month-first"),
        (lambda d: d.assign(date=["2300-01-02"] + list(d["date"][1:])),
         "date '2300-01-02' in column 'date' is outside 1678-2261"),
        (lambda d: d.assign(close=d["close"].map(lambda v: f"{v:.4f}".replace(".", ","))),
         "column 'close' has 30 value(s) that are not numbers (e.g. '"),
        (lambda d: d.assign(open=["$" + str(v) for v in d["open"]]),
         "column 'open' has 30 value(s) that are not numbers"),
        (lambda d: d.assign(Name=["AAA"] * 15 + ["BBB"] * 15), "column 'Name' holds 2 tickers (AAA, BBB)"),
        # two-digit years: pandas would read 08/02/13 as August 2nd 2013 (another calendar)
        (lambda d: d.assign(date=pd.to_datetime(d["date"]).dt.strftime("%d/%m/%y")),
         "column 'date' has two-digit years (e.g. '"),
        # half ISO, half day-first: one rule for both halves would misdate one of them
        (lambda d: d.assign(date=list(d["date"][:15]) + list(_day_first(d["date"][15:]))),
         "column 'date' mixes date shapes (ISO (yyyy-mm-dd): '"),
    ],
)  # fmt: skip
def test_dirty_dates_numbers_and_tickers_are_errors_naming_the_file(tmp_path, mutate, message):
    folder, file = _one_file(tmp_path, mutate(synthetic_bars(n_tickers=1, n_days=30)))
    with pytest.raises(StockLabError) as e:
        load_panel(folder, cache_dir=None)
    assert message in str(e.value) and file in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_absurd_values_are_dropped_as_outliers_and_a_heavy_loss_is_named(tmp_path, capsys):
    df = synthetic_bars(n_tickers=2, n_days=50).astype({"volume": float})
    df.loc[3, "volume"] = 1e30  # one typo: it would set the volume scaler of every ticker
    df.loc[4, "close"] = float("inf")
    df.loc[df.index[df["Name"] == df["Name"].iloc[-1]][:10], "open"] = float("nan")
    panel, report = load_panel(str(write_ticker_csvs(df, tmp_path / "dirty")), cache_dir=None)
    assert report.dropped == {"outlier": 1, "infinite_value": 1, "missing_price": 10}
    assert panel["volume"].max() < 1e12 and len(panel) == 100 - 12
    last = df["Name"].iloc[-1]
    assert report.heavy_losses == {last: {"missing_price": 10}}
    assert f"ticker '{last}' lost 10 of 50 rows in cleaning (missing_price: 10)" in capsys.readouterr().err


def test_a_corrupt_cache_entry_is_rebuilt_and_an_unusable_cache_dir_is_an_error(tmp_path, csv_dir, capsys):
    cache = tmp_path / "cache"
    first, _ = load_panel(str(csv_dir), cache_dir=str(cache))
    entry = next(cache.glob("panel-*.parquet"))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated (a full disk, a killed writer)
    again, _ = load_panel(str(csv_dir), cache_dir=str(cache))
    pd.testing.assert_frame_equal(first, again)
    assert f"cache entry '{entry}' is unreadable" in capsys.readouterr().err
    pd.testing.assert_frame_equal(load_panel(str(csv_dir), cache_dir=str(cache))[0], first)
    assert capsys.readouterr().err == ""  # the rebuilt entry reads
    with pytest.raises(StockLabError, match="cache_dir: cannot write the parsed-panel cache in '/dev/null'"):
        load_panel(str(csv_dir), cache_dir="/dev/null")


def test_links_that_lead_nowhere_are_counted_and_named(tmp_path, capsys):
    folder = write_ticker_csvs(synthetic_bars(n_tickers=2, n_days=50), tmp_path / "csvs")
    (folder / "GONE_data.csv").symlink_to(tmp_path / "deleted.csv")  # dangling
    (folder / "LOOP_data.csv").symlink_to(folder / "LOOP_data.csv")  # a loop
    _, report = load_panel(str(folder), cache_dir=None)
    assert report.files == 2 and report.tickers == 2 and report.dropped["broken_link"] == 2
    assert "2 link(s) in" in capsys.readouterr().err


def test_read_options_say_what_cannot_be_detected(tmp_path, capsys):
    """date_format for a file whose day/month order cannot be told, decimal=',' for numbers
    written with decimal commas (and '.' thousands), max_drop for the heavy-loss warning; other
    options give other clean data, so another fingerprint."""
    bars = synthetic_bars(n_tickers=1, n_days=60)
    truth, plain = load_panel(_one_file(tmp_path / "a", bars)[0], cache_dir=None)
    first_days = bars[pd.to_datetime(bars["date"]).dt.day <= 12]  # every date ambiguous as d/m or m/d
    folder = _one_file(tmp_path / "b", _dates_as("%d/%m/%Y")(first_days))[0]
    with pytest.raises(StockLabError, match=r"ambiguous day/month order .*\(-P date_format=%d/%m/%Y\)"):
        load_panel(folder, cache_dir=None)
    panel, _ = load_panel(folder, cache_dir=None, options=ReadOptions(date_format="%d/%m/%Y"))
    assert list(panel["date"]) == list(truth["date"][truth["date"].dt.day <= 12])

    commas = bars.assign(close=bars["close"].map(lambda v: f"{v * 100:,.4f}".replace(",", " ").replace(".", ",")))
    panel, report = load_panel(_one_file(tmp_path / "c", commas)[0], cache_dir=None, options=ReadOptions(decimal=","))
    np.testing.assert_allclose(panel["close"], truth["close"] * 100, atol=5e-5)  # 4 decimals written
    assert report.fingerprint != plain.fingerprint

    lossy = bars.copy()
    lossy.loc[:9, "open"] = np.nan  # 10 of 60 rows
    folder = _one_file(tmp_path / "d", lossy)[0]
    load_panel(folder, cache_dir=None)
    assert "lost 10 of 60 rows" in capsys.readouterr().err
    load_panel(folder, cache_dir=None, options=ReadOptions(max_drop=0.2))
    assert "lost" not in capsys.readouterr().err


def test_blank_ticker_cells_take_the_files_ticker_or_are_one_line_in_a_long_table(tmp_path):
    from conftest import synthetic_bars, write_ticker_csvs

    folder = write_ticker_csvs(synthetic_bars(n_tickers=2, n_days=40), tmp_path / "csvs")
    first = sorted(folder.iterdir())[0]
    frame = pd.read_csv(first)
    frame.loc[[3, 10], "Name"] = None  # a per-ticker file with blank Name cells
    frame.to_csv(first, index=False)
    raw, _ = load_panel(str(folder), cache_dir=None)
    assert raw["ticker"].value_counts().tolist() == [40, 40]
    long = pd.concat([pd.read_csv(p) for p in sorted(folder.iterdir())])
    long.to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(StockLabError, match="long.csv: column 'Name' is blank in 2 row\\(s\\) \\(e.g. row 5\\)"):
        load_panel(str(tmp_path / "long.csv"), cache_dir=None)
