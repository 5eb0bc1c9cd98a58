#!/usr/bin/env bash
# Build (or reuse) the offline Python base for the container tests; see fixtures/baseimage.py.
#   scripts/build-base-image.sh [--docker] [--force]
# Prints the cache dir (rootfs.tar, rootfs.tar.gz, layout/ = OCI layout for `pyimg image --base`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m fixtures.baseimage "$@"
