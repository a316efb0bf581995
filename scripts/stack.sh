#!/usr/bin/env bash
# A local scale-out stack (PostgreSQL for the Optuna study and the MLflow backend store, an MLflow
# tracking server serving the artifacts), in a folder of your choice:
#   scripts/stack.sh start [DIR]    # prints the exports for each worker's shell
#   scripts/stack.sh status [DIR]
#   scripts/stack.sh stop [DIR]
# See src/stocklab/stack.py and the README's "Scale out" section.
set -euo pipefail
action="${1:?usage: scripts/stack.sh start|stop|status|env [DIR]}"
dir="${2:-.stack}"
cd "$(dirname "$0")/.."
exec python -m stocklab.stack "$action" --dir "$dir" "${@:3}"
