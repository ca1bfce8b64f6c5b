#!/usr/bin/env bash
# Sets up everything a fresh Debian machine with Python 3.11 needs: the X libraries napari renders with,
# a virtual environment in .venv with torch (CPU-capable build from the local pip cap) and the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! command -v Xvfb >/dev/null || ! dpkg -s libxcb-cursor0 >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
    libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-xinput0 libxcb-xfixes0 libxcb-cursor0 libxkbcommon-x11-0 \
    libdbus-1-3 libegl1 libopengl0 libgl1-mesa-dri >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls a multi-GB build; 2.14.1/0.29.1 are the pair that work here on CPU
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[testing]"
