"""Screenshot of the MLflow UI comparing a study's runs (parent + nested trials) with the
params and metrics that matter as columns, for reports/.

    pip install selenium                      # plus Chromium and its driver:
    apt-get install chromium chromium-driver  # (Debian)
    mlflow server --backend-store-uri sqlite:///mlflow.db --port 5055 &
    python reports/ui_screenshot.py --url http://127.0.0.1:5055 \
        --experiment stocklab-tune-cnn2d-sp500_5yr --out reports/mlflow_ui_study.png

MLflow 3 keeps each experiment page's state (visible columns, expanded parent runs) in the
browser's localStorage; the script writes that state before loading the page, so the runs
table opens with the study's parent expanded and the chosen columns shown.
"""

from __future__ import annotations

import argparse
import json
import time

PARAMS = ("model", "variant", "hidden_size", "num_layers", "seq_len", "batch_size", "lr", "dropout", "batch_norm")
METRICS = ("valid_loss_min", "valid_rank_ic", "best_epoch", "train_time_s", "test_mse", "rank_ic")


def args_width(args) -> int:
    return int(args.size.split(",")[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:5055")
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default=",".join(PARAMS))
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--size", default="2200,800")
    args = ap.parse_args()

    import mlflow
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    mlflow.set_tracking_uri(args.url)
    exp = mlflow.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"experiment: no experiment '{args.experiment}' at {args.url}")
    parents = mlflow.search_runs([exp.experiment_id], filter_string="tags.`stocklab.role` = 'study'")
    state = {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": [f"params.`{p}`" for p in args.params.split(",") if p]
        + [f"metrics.`{m}`" for m in args.metrics.split(",") if m]
        + ["tags.`stocklab.trial_state`"],
        "columnOrder": [],
        "columnWidths": {},
        "runsExpanded": {run_id: True for run_id in parents["run_id"]},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runsHiddenMode": "FIRST_10_RUNS",
    }
    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.size}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(args.url)  # same origin first, so localStorage can be written
        key = f'MLflowLocalStorage-1.1-ExperimentPage-["{exp.experiment_id}"]-ReactComponentState'
        values = {
            key: json.dumps(state),
            f"MLflowLocalStorage-1.1-ExperimentView-{exp.experiment_id}-expandRows": "true",
            "mlflow.workflowType_v1": json.dumps("machine_learning"),  # the model-training UI
            "mlflow.assistant.panelOpen_v1": "false",
            "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
        }
        for k, v in values.items():
            driver.execute_script("window.localStorage.setItem(arguments[0], arguments[1]);", k, v)
        runs_url = f"{args.url}/#/experiments/{exp.experiment_id}/runs"
        driver.get(runs_url)
        time.sleep(6)  # the runs table loads asynchronously
        # a fresh browser profile opens MLflow 3 in its GenAI mode with the assistant panel:
        # switch to "Model training" and close the panel, as a user would
        for el in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Model training']"):
            if el.is_displayed():
                el.click()
                time.sleep(2)
                break
        driver.get(runs_url)
        time.sleep(6)
        for _ in range(3):  # the panel re-renders: look up the buttons afresh each time
            buttons = driver.find_elements(By.CSS_SELECTOR, "button[aria-label]")
            try:
                close = [
                    b
                    for b in buttons
                    if b.is_displayed()
                    and "close" in (b.get_attribute("aria-label") or "").lower()
                    and b.location["x"] > args_width(args) * 0.6
                ]
                if not close:
                    break
                close[0].click()
                time.sleep(2)
            except StaleElementReferenceException:
                time.sleep(1)
        driver.save_screenshot(args.out)
    finally:
        driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
