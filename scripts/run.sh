#!/usr/bin/env bash
# Set up segnode and run the node in the foreground with the default configuration (config/segnode.toml).
# Pass another config file as the first argument to use that instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/segnode run --config "${1:-config/segnode.toml}"
