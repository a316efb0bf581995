"""Screenshots of the MLflow UI for reports/: a study's trials table, as `tune`'s saved view opens
it, and the tear sheet of the study's best trial, as its run page shows it.

    pip install selenium                      # plus Chromium and its driver:
    apt-get install chromium chromium-driver  # (Debian)
    mlflow server --backend-store-uri sqlite:///mlflow.db --port 5055 &
    python reports/ui_screenshot.py --url http://127.0.0.1:5055 \
        --experiment stocklab-tune-cnn2d-sp500_5yr --out-dir reports

The browser starts with an empty profile, as a newcomer's would: the columns come from the view
`tune` saves on the experiment (experiment tag `mlflow.sharedViewState.<id>`, listed under
"Views"), and the model-training page from the experiment's `mlflow.experimentKind` tag. The
only thing closed by hand is MLflow's assistant panel, which opens itself on a first visit.
"""

from __future__ import annotations

import argparse
import time

import mlflow

from stocklab.tracking import VIEW_TAG_PREFIX


def close_assistant(driver, width: int) -> None:
    """Close the chat panel MLflow opens on the right on a first visit (it covers the table)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(3):  # the panel re-renders: look the buttons up afresh each time
        try:
            close = [
                b
                for b in driver.find_elements(By.CSS_SELECTOR, "button[aria-label]")
                if b.is_displayed()
                and "close" in (b.get_attribute("aria-label") or "").lower()
                and b.location["x"] > width * 0.6
            ]
            if not close:
                return
            close[0].click()
            time.sleep(2)
        except StaleElementReferenceException:
            time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:5055")
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--out-dir", default="reports")
    ap.add_argument("--size", default="2000,760", help="window of the trials table")
    ap.add_argument("--sheet-size", default="1700,1300", help="window of the tear sheet")
    ap.add_argument("--sheet", default="tearsheet/returns.png", help="artifact shown for the best trial")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    mlflow.set_tracking_uri(args.url)
    exp = mlflow.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"experiment: no experiment '{args.experiment}' at {args.url}")
    views = [k[len(VIEW_TAG_PREFIX) :] for k in exp.tags if k.startswith(VIEW_TAG_PREFIX)]
    if not views:
        raise SystemExit(f"experiment: '{args.experiment}' has no saved view (run `tune` with this version)")
    parents = mlflow.search_runs([exp.experiment_id], filter_string="tags.`stocklab.role` = 'study'")
    if parents.empty or "metrics.best_trial" not in parents or parents["metrics.best_trial"].isna().all():
        raise SystemExit(f"experiment: '{args.experiment}' has no finished study with a best trial")
    number = int(parents["metrics.best_trial"].dropna().iloc[0])
    best = mlflow.search_runs(
        [exp.experiment_id], filter_string=f"tags.`stocklab.role` = 'trial' and tags.`stocklab.trial` = '{number}'"
    )["run_id"]

    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.size}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        shots = {
            "mlflow_ui_study.png": f"{args.url}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey={views[0]}"
            "&workflowType=machine_learning",
            "mlflow_ui_tearsheet.png": (
                f"{args.url}/#/experiments/{exp.experiment_id}/runs/{best.iloc[0]}/artifacts/{args.sheet}"
                "?workflowType=machine_learning"
            ),
        }
        sizes = {"mlflow_ui_study.png": args.size, "mlflow_ui_tearsheet.png": args.sheet_size}
        for name, url in shots.items():
            driver.set_window_size(*(int(v) for v in sizes[name].split(",")))
            width = int(sizes[name].split(",")[0])
            driver.get(url)
            time.sleep(8)  # tables and artifacts load asynchronously
            close_assistant(driver, width)
            driver.save_screenshot(f"{args.out_dir}/{name}")
            print(f"wrote {args.out_dir}/{name} ({url})")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
