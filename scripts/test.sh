#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Extra arguments go to pytest.
#   - a virtualenv at .venv with pyimg (editable) and the test dependencies
#   - the reference tools the differential tests compare against (gawk, bsdtar 3.6 and 3.8)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
bash scripts/install-references.sh

status=0
.venv/bin/python -m pytest "$@" || status=$?
exit "$status"
