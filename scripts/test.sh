#!/usr/bin/env bash
# The README's test command: install what is missing, then run the whole test suite (GUI tests under Xvfb).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh testing || { echo "test.sh: installation failed" >&2; exit 1; }
export MPLBACKEND=Agg
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
