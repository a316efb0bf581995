"""The raw-bar scoring model (serving.py) through MLflow's own tools: pyfunc, the registry's
champion alias, `mlflow models serve` / `mlflow models predict` and Spark."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA, long_bars

from stocklab import registry
from stocklab.config import PromoteConfig, TrainConfig
from stocklab.jobs.promote import run_promote
from stocklab.jobs.train import run_train
from stocklab.pipeline.logged import load_network

CLIENT_COLUMNS = ["date", "ticker", "open", "high", "low", "close", "volume"]


def _train(data, **kw) -> str:
    base = dict(data=str(data), horizon=5, seq_len=6, epochs=1, batch_size=64, cache_dir="", tear_sheet=False)
    return run_train(TrainConfig(**{**base, **kw}))["run_id"]


def _client_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """What a client sends: the project's long format, dates as strings, int volumes."""
    out = long_bars(bars)[CLIENT_COLUMNS]
    return out.assign(date=out["date"].dt.strftime("%Y-%m-%d"), volume=out["volume"].round().astype("int64"))


def _score(model: str, bars: pd.DataFrame) -> pd.DataFrame:
    """The client code of a serving user: whatever version holds the alias."""
    return mlflow.pyfunc.load_model(registry.champion_uri(model)).predict(bars)


def test_versions_of_different_seq_len_serve_one_client_and_are_described(tracking, csv_dir, bars):
    name = registry.registered_name("lstm")
    runs = [_train(csv_dir, seq_len=6), _train(csv_dir, seq_len=12)]
    for run_id in runs:
        registry.register_run_model(name, run_id)
    client_bars = _client_bars(bars)

    first = run_promote(PromoteConfig(model="lstm", metric="valid_loss_min"))["champion"]
    out1 = _score("lstm", client_bars)
    # promote moves the alias to the other version (maximize: the worse loss wins)
    second = run_promote(PromoteConfig(model="lstm", metric="valid_loss_min", direction="maximize"))["champion"]
    out2 = _score("lstm", client_bars)
    assert {first, second} == {1, 2}
    for out in (out1, out2):
        assert list(out.columns) == ["date", "ticker", "prediction"]
        assert sorted(out["ticker"]) == sorted(bars["Name"].unique())
        assert (out["date"] == pd.Timestamp(bars["date"].max())).all() and np.isfinite(out["prediction"]).all()
    assert not np.array_equal(out1["prediction"], out2["prediction"])  # two models, one contract

    c = registry.client()
    v = {int(m.version): m for m in registry.versions(name)}
    assert "seq_len=6" in v[1].description and "seq_len=12" in v[2].description
    fingerprint = mlflow.get_run(runs[0]).data.params["data_fingerprint"]
    assert fingerprint in v[1].description and "valid_loss_min=" in v[1].description
    assert "models:/stocklab-lstm/1" in v[1].description
    assert "lstm" in c.get_registered_model(name).description
    # promote wrote what it did on both versions: v{second} took the alias from v{first}
    assert f"champion v{first} -> v{second}" in v[second].description
    assert f"champion moved to v{second}" in v[first].description


def test_bars_of_any_dtype_give_the_same_predictions_and_short_tickers_are_skipped(tracking, csv_dir, bars, caplog):
    run_id = _train(csv_dir)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    base = _client_bars(bars)
    expected = model.predict(base)
    as_float32 = base.astype({c: "float32" for c in ("open", "high", "low", "close")})
    as_dates = base.assign(date=pd.to_datetime(base["date"]), volume=base["volume"].astype(float))
    pd.testing.assert_frame_equal(model.predict(as_dates), expected)
    # float32 prices hold ~7 digits: relative prices in units of a daily return (x ~80) carry
    # that rounding into the 5th digit of a forecast
    pd.testing.assert_frame_equal(model.predict(as_float32), expected, rtol=1e-4)

    # every complete window, and its latest per ticker is the default answer
    every = model.predict(base, params={"all_dates": True})
    latest = every.sort_values("date").groupby("ticker").tail(1).sort_values(["date", "ticker"], ignore_index=True)
    pd.testing.assert_frame_equal(latest, expected)
    assert len(every) > 50 * len(expected)
    # one row per input row (what a Spark UDF needs), NaN where a bar ends no complete window
    aligned = model.predict(base, params={"align": True})
    assert len(aligned) == len(base) and aligned["prediction"].notna().sum() == len(every)

    # a ticker with 3 bars (the window needs 6) gets no row and a warning; the rest are scored
    short = pd.concat([base, base[base["ticker"] == "T00"].tail(3).assign(ticker="NEW")], ignore_index=True)
    with caplog.at_level("WARNING", logger="stocklab.serving"):
        out = model.predict(short)
    assert "NEW" not in set(out["ticker"]) and len(out) == len(expected)
    assert "NEW: 3 clean bars hold no complete window of 6 days" in caplog.text
    only_short = model.predict(short[short["ticker"] == "NEW"])
    assert only_short.empty and list(only_short.columns) == ["date", "ticker", "prediction"]

    with pytest.raises(mlflow.exceptions.MlflowException, match="close"):
        model.predict(base.drop(columns="close"))  # a missing required column names it
    with pytest.raises(mlflow.exceptions.MlflowException, match="batch_size: 0 must be >= 1"):
        model.predict(base, params={"batch_size": 0})
    with pytest.raises(mlflow.exceptions.MlflowException, match="'high' has 1 value"):
        model.predict(base.astype({"high": object}).assign(high=lambda d: d["high"].where(d.index != 5, "1,5")))


def test_the_plain_network_loads_for_research_in_train_and_eval_mode(tracking, csv_dir, bars):
    run_id = _train(csv_dir)
    network, bundle = load_network(f"runs:/{run_id}/model")
    assert isinstance(network, torch.nn.Module) and not network.training
    x = torch.randn(4, bundle.seq_len, len(bundle.feature_names))  # (B, T, F)
    network.train()  # a normal module: fine-tune it
    network(x).pow(2).mean().backward()
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)
    # the logged model directory: no pickle anywhere, the weights and bundle as artifacts
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model")
    files = {os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs}
    assert {"artifacts/state/state_dict.pt", "artifacts/preprocess.json", "pyfunc_model.py"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pyc"))]
    assert "code/stocklab/serving.py" in files  # the model scores with the code that trained it
    # the whole library a loading process may import (a tune worker: study/), not the benchmark suites
    assert "code/stocklab/study/objective.py" in files and not [f for f in files if "/benchmarks/" in f]
    example = pd.read_json(os.path.join(local, "input_example.json"), orient="split")
    assert {"date", "ticker", "close", "volume"} <= set(example.columns)


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA}")
@pytest.mark.parametrize("model", ["gru"])  # every model on synthetic bars: test_models.py
def test_champion_on_real_raw_bars_is_the_training_pipeline_bit_for_bit(tracking, tmp_path, shared_cache, model):
    """A registered champion scores real bars (float64 prices, int volumes, the files' own
    `Name` column renamed to `ticker`) exactly as the training run scored its test split."""
    data = tmp_path / "four"
    data.mkdir()
    tickers = ["AAPL", "ABT", "AMZN", "GOOGL", "IBM", "XOM"]  # the default recipe ranks >= 5 a day
    for t in tickers:
        shutil.copy(SHARED_DATA / f"{t}_data.csv", data)
    run_id = _train(data, model=model, seq_len=20, horizon=5, cache_dir=shared_cache)
    name = registry.registered_name(model)
    version, _ = registry.register_run_model(name, run_id)
    registry.set_alias(name, registry.CHAMPION, version)

    raw = pd.concat([pd.read_csv(data / f"{t}_data.csv") for t in tickers]).rename(columns={"Name": "ticker"})
    assert raw["volume"].dtype == np.int64 and raw["close"].dtype == np.float64
    out = _score(model, raw[CLIENT_COLUMNS])
    every = mlflow.pyfunc.load_model(registry.champion_uri(model)).predict(raw, params={"all_dates": True})
    logged = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.parquet"))
    both = logged.merge(every, on=["date", "ticker"], suffixes=("_train", "_served"))
    assert len(both) == len(logged) > 500
    np.testing.assert_array_equal(both["prediction_served"], both["prediction_train"].astype(np.float64))
    assert sorted(out["ticker"]) == sorted(tickers) and (out["date"] == pd.Timestamp("2018-02-07")).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_mlflow_models_serve_and_predict_score_raw_bars(tracking, csv_dir, bars, tmp_path):
    run_id = _train(csv_dir)
    name = registry.registered_name("lstm")
    version, _ = registry.register_run_model(name, run_id)
    registry.set_alias(name, registry.CHAMPION, version)
    uri = registry.champion_uri("lstm")
    client_bars = _client_bars(bars)
    expected = mlflow.pyfunc.load_model(uri).predict(client_bars)

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    cmd = ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() - t0 < 120, "server did not answer /ping within 120 s"
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/invocations"
        split = json.dumps({"dataframe_split": json.loads(client_bars.to_json(orient="split", index=False))})
        records = json.dumps({"dataframe_records": client_bars.to_dict(orient="records")})
        for body, kind in ((split, "application/json"), (records, "application/json")):
            status, answer = _post(url, body.encode(), kind)
            assert status == 200, answer
            got = pd.DataFrame(answer["predictions"])
            assert list(got["ticker"]) == list(expected["ticker"])
            assert (pd.to_datetime(got["date"]) == expected["date"]).all()
            np.testing.assert_array_equal(got["prediction"].to_numpy(), expected["prediction"].to_numpy())
        status, answer = _post(url, client_bars.to_csv(index=False).encode(), "text/csv")
        assert status == 200, answer
        assert len(answer["predictions"]) == len(expected)
        status, answer = _post(url, json.dumps({"dataframe_records": [{"date": "2015-01-02"}]}).encode(),
                               "application/json")  # fmt: skip
        assert status == 400 and "close" in answer["message"]
    finally:
        server.terminate()
        server.wait(30)

    # mlflow models predict: the same, from a CSV file
    csv, out = tmp_path / "bars.csv", tmp_path / "out.json"
    client_bars.to_csv(csv, index=False)
    r = subprocess.run(["mlflow", "models", "predict", "-m", uri, "-i", str(csv), "-t", "csv", "-o", str(out),
                        "--env-manager", "local"], env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    got = pd.DataFrame(json.loads(out.read_text())["predictions"])
    np.testing.assert_array_equal(got["prediction"].to_numpy(), expected["prediction"].to_numpy())


def _spark_missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install pyspark)"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime for Spark (java not on PATH, JAVA_HOME unset)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_spark_missing() is not None, reason=str(_spark_missing()))
def test_spark_udf_scores_bars_grouped_by_ticker(tracking, csv_dir, bars):
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    run_id = _train(csv_dir)
    uri = f"runs:/{run_id}/model"
    client_bars = _client_bars(bars).astype({"volume": "float64"})
    expected = mlflow.pyfunc.load_model(uri).predict(client_bars, params={"all_dates": True})
    spark = (
        SparkSession.builder.master("local[1]").config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        .config("spark.ui.enabled", "false").getOrCreate()
    )  # fmt: skip
    try:
        # one partition per ticker, in date order, so each UDF batch holds whole histories
        sdf = spark.createDataFrame(client_bars).repartition("ticker").sortWithinPartitions("ticker", "date")
        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", params={"align": True}, env_manager="local")
        scored = sdf.withColumn("prediction", udf(*[F.col(c) for c in CLIENT_COLUMNS])).toPandas()
    finally:
        spark.stop()
    scored = scored.dropna(subset=["prediction"]).assign(date=lambda d: pd.to_datetime(d["date"]))
    both = expected.merge(scored, on=["date", "ticker"], suffixes=("", "_spark"))
    assert len(both) == len(expected) == len(scored)
    np.testing.assert_array_equal(both["prediction_spark"], both["prediction"])
