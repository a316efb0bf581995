"""Latency of `mlflow models serve` on raw bars: time to first answer and request times.

    python scripts/serve_latency.py --data ../shared/data/sp500_5yr --tickers 400 --days 60

Trains a 1-epoch model on `--data` into a private sqlite store (the weights do not matter for
latency), registers it as `stocklab-<model>@champion`, starts `mlflow models serve --env-manager
local` on a loopback port and times (1) start to the first answered request, (2) `--requests`
requests of the last `--days` bars of `--tickers` tickers as `dataframe_split` JSON, and
(3) one request with their whole history. Prints one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow

from stocklab import registry
from stocklab.config import TrainConfig
from stocklab.data import load_panel
from stocklab.jobs.train import run_train


def _post(url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        answer = json.loads(r.read())
    assert answer["predictions"], "empty answer"
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/sp500_5yr")
    ap.add_argument("--model", default="lstm")
    ap.add_argument("--tickers", type=int, default=400)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = TrainConfig(data=args.data, model=args.model, epochs=1, tear_sheet=False, cache_dir=str(tmp / "cache"))
    run_id = run_train(cfg)["run_id"]
    name = registry.registered_name(args.model)
    version, _ = registry.register_run_model(name, run_id)
    registry.set_alias(name, registry.CHAMPION, version)

    bars, _ = load_panel(args.data, str(tmp / "cache"))
    keep = sorted(bars["ticker"].unique())[: args.tickers]
    bars = bars[bars["ticker"].isin(keep)][["date", "ticker", "open", "high", "low", "close", "volume"]]
    bars = bars.assign(date=bars["date"].dt.strftime("%Y-%m-%d"))
    recent = bars.groupby("ticker").tail(args.days)

    def body(frame) -> bytes:
        return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/invocations"
    cmd = ["mlflow", "models", "serve", "-m", registry.champion_uri(args.model), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    t0 = time.perf_counter()
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        recent_body = body(recent)
        while True:
            try:
                _post(url, recent_body)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("server exited before answering") from None
                time.sleep(0.2)
        first = time.perf_counter() - t0
        times = [_post(url, recent_body) for _ in range(args.requests)]
        full = _post(url, body(bars))
    finally:
        server.terminate()
        server.wait(30)
    print(
        json.dumps(
            {
                "model": args.model,
                "tickers": len(keep),
                "rows_per_request": len(recent),
                "request_mb": round(len(recent_body) / 1e6, 2),
                "time_to_first_answer_s": round(first, 2),
                "median_request_s": round(statistics.median(times), 3),
                "max_request_s": round(max(times), 3),
                "full_history_rows": len(bars),
                "full_history_request_s": round(full, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
