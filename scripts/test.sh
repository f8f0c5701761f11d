#!/usr/bin/env bash
# The test command of the README (`make test`): set up what is missing, lint, type-check,
# then run the whole suite. Extra arguments go to pytest, unchanged.
# Without arguments the suite runs in two pytest processes: everything but tests/browser,
# then tests/browser alone (Playwright's sync API runs an event loop of its own, which must
# not share a process with the asyncio tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== mypy" >&2
.venv/bin/python scripts/typecheck.py
if [ $# -gt 0 ]; then
    echo "== pytest" >&2
    exec .venv/bin/python -m pytest "$@"
fi
status=0
echo "== pytest (all but tests/browser)" >&2
.venv/bin/python -m pytest --ignore=tests/browser || status=$?
echo "== pytest tests/browser (headless Chromium, a process of its own)" >&2
.venv/bin/python -m pytest tests/browser || { code=$?; [ "$status" -ne 0 ] || status=$code; }
exit "$status"
