#!/usr/bin/env bash
# The main job on the shipped sample data. With a display: napari with the plugin's docks and the sample loaded.
# Headless: the same workflow through the CLI (train on the sample, predict its held-aside images, write results).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${DISPLAY:-}" ] && [ -z "${CI:-}" ]; then
  exec .venv/bin/python -m napari_bioflow.launch
fi
exec .venv/bin/napari-bioflow sample --output bioflow_runs "$@"
