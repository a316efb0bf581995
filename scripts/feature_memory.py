"""Time and memory of the alpha158 features, measured, and projected to a larger universe.

Each case runs in a fresh process so that its peak resident memory (ru_maxrss) is its own:
- `real`: sp500_5yr read and cleaned by the loader, then `build_panel(features=alpha158)`;
- `synthetic N D`: random-walk OHLCV bars of N tickers x D days (no loader), the alpha158 panel,
  then the scaled windows as training builds them for a large panel (`WindowSet` with
  scale_in_place=True: the panel is scaled in place and shared with the tensor, not copied).

    python scripts/feature_memory.py --data ../shared/data/sp500_5yr --synthetic 2000x2500

The projection to 4,000 tickers x 5,000 days multiplies the measured bytes per ticker-day of the
largest case (features, working set and windows together) by 20 million ticker-days.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

GIB = 2**30


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def case_real(data: str) -> dict:
    from stocklab.data import ReadOptions, load_panel
    from stocklab.features import build_panel

    raw, _ = load_panel(data, "", ReadOptions())
    before = _peak_bytes()
    t0 = time.perf_counter()
    panel = build_panel(raw, "alpha158", 20, 1.0)
    seconds = time.perf_counter() - t0
    n, d, f = panel.X.shape
    return {"case": "real", "tickers": n, "days": d, "features": f, "build_s": seconds,
            "panel_bytes": panel.X.nbytes, "peak_before": before, "peak": _peak_bytes()}  # fmt: skip


def case_synthetic(n: int, d: int) -> dict:
    import numpy as np
    import pandas as pd

    from stocklab.alpha158 import alpha158
    from stocklab.features import Panel
    from stocklab.windows import WindowSet

    rng = np.random.default_rng(0)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, d)), axis=1))  # (N, D)
    spread = np.abs(rng.normal(0, 0.01, (n, d)))
    open_ = close * (1 + rng.normal(0, 0.005, (n, d)))
    high, low = np.maximum(open_, close) * (1 + spread), np.minimum(open_, close) * (1 - spread)
    volume = rng.lognormal(13, 0.5, (n, d))
    before = _peak_bytes()
    t0 = time.perf_counter()
    names, X = alpha158(open_, high, low, close, volume)
    build_s = time.perf_counter() - t0
    del open_, high, low, volume, spread
    after_build = _peak_bytes()
    y = np.full((n, d), np.nan, np.float32)
    y[:, :-20] = (close[:, 20:] / close[:, :-20] - 1).astype(np.float32)
    panel = Panel([f"T{i}" for i in range(n)], pd.bdate_range("2000-01-03", periods=d), X, y, close, names, [], [])
    t1 = time.perf_counter()
    ws = WindowSet(panel, 20, 20, (0.6, 0.2, 0.2), "robust", scale_in_place=True, label="cs_rank")
    windows_s = time.perf_counter() - t1
    return {"case": "synthetic", "tickers": n, "days": d, "features": len(names), "build_s": build_s,
            "windows_s": windows_s, "panel_bytes": X.nbytes, "shared": bool(ws.X.data_ptr() == X.ctypes.data),
            "peak_before": before, "peak_after_build": after_build, "peak": _peak_bytes()}  # fmt: skip


def run_case(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/sp500_5yr")
    p.add_argument("--synthetic", default="2000x2500", help="NxD of the synthetic panel")
    p.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:  # the child: one case, one JSON line
        kind, *rest = args.case
        result = case_real(rest[0]) if kind == "real" else case_synthetic(int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return
    n, d = (int(v) for v in args.synthetic.lower().split("x"))
    rows = [run_case(["real", args.data]), run_case(["synthetic", str(n), str(d)])]
    for r in rows:
        cells = r["tickers"] * r["days"]
        print(
            f"{r['case']}: {r['tickers']} tickers x {r['days']} days x {r['features']} features; alpha158 "
            f"{r['build_s']:.1f} s; panel {r['panel_bytes'] / GIB:.2f} GiB ({r['panel_bytes'] / cells:.0f} B per "
            f"ticker-day); peak RSS {r['peak'] / GIB:.2f} GiB (inputs alone {r['peak_before'] / GIB:.2f} GiB)"
            + (
                f"; windows {r['windows_s']:.1f} s, panel shared with the tensor: {r['shared']}"
                if "shared" in r
                else ""
            )
        )
    big = rows[-1]
    per_cell = (big["peak"] - big["peak_before"]) / (big["tickers"] * big["days"])
    cells = 4000 * 5000
    print(
        f"projection, 4000 tickers x 5000 days: {per_cell:.0f} B per ticker-day above the inputs (features, "
        f"working set, scaled windows) -> {per_cell * cells / GIB:.1f} GiB, plus the bars "
        f"(5 float64 columns: {5 * 8 * cells / GIB:.1f} GiB, freed after the build)"
    )


if __name__ == "__main__":
    main()
