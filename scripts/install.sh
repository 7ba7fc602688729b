#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks: Xvfb + Mesa (napari needs OpenGL), a .venv,
# the CPU build of torch (first, so no CUDA wheels are pulled), then this package with its extras.
# Usage: bash scripts/install.sh [extra]   (extra: all | testing; default testing)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-testing}"

apt_packages=(xvfb libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4
  libxcb-keysyms1 libxcb-shape0 libdbus-1-3 libfontconfig1)
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); elif command -v sudo >/dev/null; then sudo_cmd=(sudo); else
    echo "install.sh: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; fi
  echo "install.sh: apt-get install ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch first: torch from PyPI on Linux brings several GB of CUDA packages. The CPU build: a local wheel where
# pip is configured with one (--find-links), else PyTorch's CPU index; then its pure-Python dependencies.
torch_pin="torch==2.13.0"
if ! .venv/bin/python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  .venv/bin/python -m pip install -q --no-deps --no-index "$torch_pin" 2>/dev/null ||
    .venv/bin/python -m pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu "$torch_pin"
fi
.venv/bin/python -m pip install -q "$torch_pin" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch" 
.venv/bin/python -m pip install -q -e ".[${extra}]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import napari_rverdict" 
echo "install.sh: ready (.venv, extra [${extra}])"
