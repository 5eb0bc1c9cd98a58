#!/usr/bin/env bash
# Start or stop a private docker engine for the container tests.
#   scripts/dockerd.sh start   -> dockerd in the background, data root and socket under a temp
#                                 dir; waits for `docker info`; prints `export DOCKER_HOST=...`
#                                 and writes it to $PYIMG_DOCKERD_DIR/env (default
#                                 ${TMPDIR:-/tmp}/pyimg-dockerd)
#   scripts/dockerd.sh stop    -> kills that dockerd (by its pid file) and removes the dir
# Tests read PYIMG_DOCKER_HOST, then DOCKER_HOST.
set -euo pipefail
DIR="${PYIMG_DOCKERD_DIR:-${TMPDIR:-/tmp}/pyimg-dockerd}"
SOCK="$DIR/docker.sock"

start() {
  command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd not installed (apt-get install docker.io)" >&2; exit 1; }
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
    echo "export DOCKER_HOST=unix://$SOCK"; return 0
  fi
  mkdir -p "$DIR/data" "$DIR/exec"
  dockerd --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$DIR/dockerd.pid" \
    --host "unix://$SOCK" --bridge none --iptables=false --ip-masq=false \
    >"$DIR/dockerd.log" 2>&1 &
  echo $! > "$DIR/pid"
  for _ in $(seq 1 60); do
    if DOCKER_HOST="unix://$SOCK" docker info >/dev/null 2>&1; then
      echo "export DOCKER_HOST=unix://$SOCK" > "$DIR/env"
      echo "export PYIMG_DOCKER_HOST=unix://$SOCK" >> "$DIR/env"
      cat "$DIR/env"
      return 0
    fi
    kill -0 "$(cat "$DIR/pid")" 2>/dev/null || break
    sleep 1
  done
  echo "dockerd.sh: dockerd did not come up; log:" >&2
  tail -20 "$DIR/dockerd.log" >&2 || true
  stop
  exit 1
}

stop() {
  if [ -f "$DIR/pid" ]; then
    pid="$(cat "$DIR/pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
    fi
  fi
  # overlay mounts under the data root must go before the directory can be removed
  if [ -d "$DIR" ]; then
    { grep -o " $DIR/[^ ]*" /proc/mounts 2>/dev/null || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$DIR"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
