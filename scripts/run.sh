#!/usr/bin/env bash
# The README's run command: install what is missing, then open napari with the plugin's docks and the phantom.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh all
exec .venv/bin/napari-rverdict "$@"
