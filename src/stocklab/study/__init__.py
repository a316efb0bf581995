"""Tuning by concern: the objective, the workers sharing a study, its budget, storage and report
(see jobs/tune.py for how they fit together)."""
