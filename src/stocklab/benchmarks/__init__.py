"""The `benchmark` job's suites: speed (speed.py) and models (models.py, written up by report.py)."""
