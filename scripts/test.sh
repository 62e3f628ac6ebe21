#!/usr/bin/env bash
# Set up everything the tests need and run the whole suite: lint, types, unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check node tests bench
.venv/bin/ruff format --check node tests bench
.venv/bin/mypy
.venv/bin/mypy tests bench
.venv/bin/python -m pytest "$@"
