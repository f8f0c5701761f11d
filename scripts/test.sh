#!/usr/bin/env bash
# The test command of the README (`make test`): set up what is missing, lint, type-check,
# then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== mypy" >&2
.venv/bin/python scripts/typecheck.py
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
