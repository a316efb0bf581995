"""The jobs, one module each, imported only by the CLI: train, tune, evaluate, promote, predict,
benchmark. A job never imports another job; what two jobs share lives below them (pipeline/,
study/, tracking.py, ...)."""
