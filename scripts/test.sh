#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Extra arguments go to pytest.
#   - a virtualenv at .venv with pyimg (editable) and the test dependencies
#   - the reference tools the differential tests compare against (gawk, bsdtar 3.6 and 3.8)
#   - docker.io (plus skopeo and umoci when apt has them) for the container tests; a private
#     dockerd (scripts/dockerd.sh) runs for the duration of pytest and is stopped on exit
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# The atheris fuzz entry point runs for a bounded time when atheris installs. Tolerated here
# (it has no wheel for every Python); test_atheris_bounded_run then skips, or fails under CI=true.
.venv/bin/python -m pip install -q atheris >/dev/null 2>&1 \
  || echo "test.sh: atheris did not install; its bounded fuzz run will skip (fail under CI=true)" >&2
bash scripts/install-references.sh

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v umoci >/dev/null || need_apt+=(umoci)
# zstd(1) reads pyimg's parallel zstd in test_compress.
command -v zstd >/dev/null || need_apt+=(zstd)
# localedef's sources, for the latin-1 locale test_determinism compiles.
[ -f /usr/share/i18n/locales/en_US ] || need_apt+=(locales)
# buildifier (the Bazel e2e test checks every Starlark file) comes from npm.
command -v buildifier >/dev/null || command -v npm >/dev/null || need_apt+=(npm)
# A self-contained CPython (no libpython*.so) for the tests that run the app from its layers.
[ -x /usr/bin/python3.11 ] || need_apt+=(python3.11)
# Go's archive/tar (what containerd and Docker read layers with) is the reference for
# imagelayer/tarread.py in test_tarread_go; Debian's golang-go puts go in /usr/lib/go/bin.
command -v go >/dev/null || [ -x /usr/lib/go/bin/go ] || need_apt+=(golang-go)
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
    || echo "test.sh: could not install ${need_apt[*]}; container tests will skip (fail under CI=true)" >&2
fi
if ! command -v buildifier >/dev/null && command -v npm >/dev/null; then
  npm install -g @bazel/buildifier >/dev/null 2>&1 \
    || echo "test.sh: buildifier did not install; the Bazel e2e test will report it" >&2
fi

if [ -z "${DOCKER_HOST:-}" ] && command -v dockerd >/dev/null; then
  trap 'bash scripts/dockerd.sh stop || true' EXIT
  if docker_env="$(bash scripts/dockerd.sh start)"; then
    eval "$docker_env"
    export DOCKER_HOST PYIMG_DOCKER_HOST
  else
    echo "test.sh: dockerd did not start; container tests will skip (fail under CI=true)" >&2
  fi
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
exit "$status"
