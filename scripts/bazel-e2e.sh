#!/usr/bin/env bash
# End-to-end proof of the Bazel rules in bazel/ with a real Bazel (Debian sid's bazel-bootstrap).
#
#   bash scripts/bazel-e2e.sh [all|setup|build|check]      (default: all; needs root)
#
#   setup  1. debootstrap --variant=minbase sid into $CACHE/rootfs (reused when present)
#          2. apt-get install bazel-bootstrap python3 (+ pyimg's Python dependencies) in it
#          3. install pyimg from this checkout into /opt/pyimg in it (pip --no-deps, offline)
#   build  4. copy bazel/ and e2e/ in and run `bazel --batch build //...` in a chroot, twice,
#             with `bazel clean` in between, recording every layer digest; pyimg runs as one
#             sandboxed process per action. Then a third build after `bazel clean` with the
#             pyimg actions in persistent workers (--strategy=<Mnemonic>=worker)
#   check  5. pyimg verify every layer (bazel-bin, runfiles and container views), compare the
#             three builds' digests, run buildifier -mode=check -lint=warn on every Starlark file
#
# CACHE is ${XDG_CACHE_HOME:-$HOME/.cache}/pyimg-bazel. Results go to $PYIMG_E2E_OUT (default
# $CACHE/out): digests-{1,2,worker}.txt, build-*.log, verify-*.txt, summary.txt.
# Exit codes: 0 all assertions hold; 1 an assertion failed; 3 the environment cannot run it
# (not root, no debootstrap, no network): the reason is printed on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/pyimg-bazel"
ROOT="$CACHE/rootfs"
OUT="${PYIMG_E2E_OUT:-$CACHE/out}"
MIRROR="${PYIMG_E2E_MIRROR:-http://deb.debian.org/debian}"
APT=(apt-get -o Acquire::Check-Valid-Until=false -o Dpkg::Use-Pty=0 -q)
STEP="${1:-all}"
WS_LIST=(e2e)
BAZEL_FLAGS=(--noenable_bzlmod)
PYIMG_MNEMONICS=(PyimgLayer PyimgMtreeMutate PyimgPyImageLayer)

say() { printf '[bazel-e2e %(%T)T] %s\n' -1 "$*" >&2; }
cannot() { echo "bazel-e2e: cannot run: $*" >&2; exit 3; }

[ "$(id -u)" = 0 ] || cannot "needs root (debootstrap and chroot)"

MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

mount_chroot() {
  [ "${#MOUNTS[@]}" -eq 0 ] || return 0
  local m
  for m in proc dev dev/pts sys; do
    mkdir -p "$ROOT/$m"
    if [ "$m" = proc ]; then mount -t proc proc "$ROOT/proc"; else mount --bind "/$m" "$ROOT/$m"; fi
    MOUNTS+=("$ROOT/$m")
  done
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

in_root() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/opt/pyimg/bin:/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 TERM=dumb "$@"
}

setup() {
  if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    command -v debootstrap >/dev/null || {
      apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 || true
    }
    command -v debootstrap >/dev/null || cannot "debootstrap is not installed and apt-get could not install it"
    say "1/3 debootstrap --variant=minbase sid (cached under $CACHE)"
    rm -rf "$ROOT.partial"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase sid "$ROOT.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -5 "$CACHE/debootstrap.log" >&2; cannot "debootstrap sid failed (network?); log: $CACHE/debootstrap.log"; }
    mv "$ROOT.partial" "$ROOT"
  fi
  mount_chroot
  if [ ! -e "$ROOT/.pyimg-provisioned" ]; then
    say "2/3 apt-get install bazel-bootstrap python3 (+ pyimg's dependencies) in the rootfs"
    in_root "${APT[@]}" update >/dev/null || cannot "apt-get update in the sid rootfs failed (network?)"
    in_root env DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends \
      bazel-bootstrap python3 python3-venv python3-pip python3-setuptools python3-zstandard \
      python3-jsonschema python3-docker >"$CACHE/apt.log" 2>&1 \
      || { tail -20 "$CACHE/apt.log" >&2; echo "bazel-e2e: apt-get install in the rootfs failed" >&2; exit 1; }
    touch "$ROOT/.pyimg-provisioned"
  fi
  say "3/3 install pyimg from $REPO into the rootfs (/opt/pyimg)"
  rm -rf "$ROOT/opt/pyimg-src"
  mkdir -p "$ROOT/opt/pyimg-src"
  tar -C "$REPO" -cf - pyproject.toml README.md mtree imagelayer \
    | tar -C "$ROOT/opt/pyimg-src" -xf -
  [ -x "$ROOT/opt/pyimg/bin/python" ] || in_root python3 -m venv --system-site-packages /opt/pyimg
  in_root /opt/pyimg/bin/pip install -q --no-deps --no-build-isolation --no-index \
    --force-reinstall /opt/pyimg-src >"$CACHE/pip.log" 2>&1 \
    || { tail -20 "$CACHE/pip.log" >&2; echo "bazel-e2e: pip install of pyimg failed" >&2; exit 1; }
  in_root pyimg --help >/dev/null
  in_root bazel --version >&2 || true
}

copy_sources() {
  rm -rf "$ROOT/work"
  mkdir -p "$ROOT/work"
  tar -C "$REPO" -cf - bazel e2e | tar -C "$ROOT/work" -xf -
}

# bazel in the chroot; $1 = workspace dir under /work
bz() {
  local ws="$1"; shift
  in_root sh -c 'cd "$0" && exec bazel --batch "$@"' "/work/$ws" "$@"
}

# Record "<label-ish path> <sha256>" for every layer blob, layers.json and mtree the e2e builds.
digests() {
  local ws="$1" bin
  bin="$(bz "$ws" info "${BAZEL_FLAGS[@]}" bazel-bin 2>/dev/null)"
  (cd "$ROOT$bin" && find . \( -name '*.tar' -o -name '*.tar.gz' -o -name '*.tar.zst' \
      -o -name 'layers.json' -o -name '*.mtree' -o -name '*.spec' -o -name '*.descriptor.json' \) \
      -not -path '*.runfiles/*' -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
    | sed "s|^|$ws |"
}

# $1 = build name, $2 = the spawn strategy of the pyimg actions (sandboxed or worker)
build_once() {
  local n="$1" ws t0 t1 m strategy=()
  for m in "${PYIMG_MNEMONICS[@]}"; do strategy+=("--strategy=$m=$2"); done
  : >"$OUT/digests-$n.txt"
  for ws in "${WS_LIST[@]}"; do
    t0=$(date +%s)
    say "4/5 bazel build //... in $ws (build $n, pyimg actions: $2)"
    bz "$ws" build "${BAZEL_FLAGS[@]}" "${strategy[@]}" //... >"$OUT/build-$ws-$n.log" 2>&1 \
      || { tail -40 "$OUT/build-$ws-$n.log" >&2; echo "bazel-e2e: bazel build failed in $ws" >&2; exit 1; }
    t1=$(date +%s)
    say "   built in $((t1 - t0))s: $(grep -E 'actions|Build completed' "$OUT/build-$ws-$n.log" | tail -2 | tr '\n' ' ')"
    digests "$ws" >>"$OUT/digests-$n.txt"
    local bin
    bin="$(bz "$ws" info "${BAZEL_FLAGS[@]}" bazel-bin 2>/dev/null)"
    mkdir -p "$OUT/specs-$ws"
    find "$ROOT$bin/" \( -name '*.spec' -o -name '*.mtree' -o -name layers.json -o -name 'app_layer*.tar.gz' \) \
      -not -path '*.runfiles/*' \
      -exec sh -c 'b="$1"; shift; for f; do cp "$f" "$0/$(echo "${f#"$b"/}" | tr / _)"; done' \
        "$OUT/specs-$ws" "$ROOT$bin" {} +
  done
}

build() {
  mount_chroot
  mkdir -p "$OUT"
  copy_sources
  build_once 1 sandboxed
  local ws
  for ws in "${WS_LIST[@]}"; do bz "$ws" clean "${BAZEL_FLAGS[@]}" >/dev/null 2>&1; done
  build_once 2 sandboxed
  for ws in "${WS_LIST[@]}"; do bz "$ws" clean "${BAZEL_FLAGS[@]}" >/dev/null 2>&1; done
  build_once worker worker
}

check() {
  mount_chroot
  local fail=0 ws bin exe
  if cmp -s "$OUT/digests-1.txt" "$OUT/digests-2.txt" && [ -s "$OUT/digests-1.txt" ]; then
    say "5/5 digests identical across bazel clean: $(wc -l <"$OUT/digests-1.txt") outputs"
  else
    say "FAIL: outputs differ after bazel clean (or none were built):"
    diff "$OUT/digests-1.txt" "$OUT/digests-2.txt" >&2 || true
    fail=1
  fi
  local workers
  workers="$(grep -hoE '[0-9]+ worker' "$OUT"/build-*-worker.log | head -1 || true)"
  if cmp -s "$OUT/digests-1.txt" "$OUT/digests-worker.txt" && [ -n "$workers" ]; then
    say "   persistent workers ($workers actions) wrote the same bytes"
  else
    say "FAIL: the worker build differs from the process build (or ran no worker action: '${workers}'):"
    diff "$OUT/digests-1.txt" "$OUT/digests-worker.txt" >&2 || true
    fail=1
  fi
  for ws in "${WS_LIST[@]}"; do
    bin="$(bz "$ws" info "${BAZEL_FLAGS[@]}" bazel-bin 2>/dev/null)"
    exe="$(bz "$ws" info "${BAZEL_FLAGS[@]}" execution_root 2>/dev/null)"
    # Every verify case: "<name> <layers (dir, layers.json or tars, space separated)> <mtree> [extra args]"
    # listed by the workspace in verify_cases.txt, paths relative to bazel-bin.
    while read -r name layers mtree extra; do
      case "$name" in ''|'#'*) continue ;; esac
      local args=() l
      for l in $layers; do args+=("$bin/$l"); done
      local rc=0 verdict
      # A stale result must never stand in for this run's: verify writes the file anew or not at all.
      rm -f "$ROOT/tmp/verify.json" "$OUT/verify-$ws-$name.json"
      # shellcheck disable=SC2086
      in_root pyimg verify "${args[@]}" --mtree "$bin/$mtree" --execroot "$exe" $extra \
        --json /tmp/verify.json >"$OUT/verify-$ws-$name.txt" 2>&1 || rc=$?
      cp "$ROOT/tmp/verify.json" "$OUT/verify-$ws-$name.json" 2>/dev/null || true
      # Allowed: relative (declare_symlink) links that only resolve inside runfiles, as rules_py's
      # venv bin/python and single-hop site-packages links do: bazel-bin dangles, while the
      # container and the runfiles tree agree. Anything else fails.
      if [ "$rc" -le 1 ] && verdict="$(python3 - "$OUT/verify-$ws-$name.json" "$rc" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad, ok = [], 0
for f in d.get("findings", []):
    v = f.get("views", {})
    c, b, r = v.get("container", {}), v.get("bazel-bin", {}), v.get("runfiles", {})
    same = c.get("status") == r.get("status") and c.get("status") in ("file", "dir", "directory") \
        and c.get("sha256") == r.get("sha256")
    if f.get("kind") == "view-mismatch" and b.get("status") == "dangling" and same \
            and not str(f.get("link", "/")).startswith("/"):
        ok += 1
    else:
        bad.append(f.get("kind", "?") + ": " + f.get("path", "?"))
if sys.argv[2] == "1" and not d.get("findings"):
    bad.append("exit 1 without findings")
print("%d runfiles-only relative links" % ok)
for b in bad:
    print("BAD " + b)
sys.exit(1 if bad else 0)
PY
)"; then
        say "   pyimg verify $name: ok ($(tail -1 "$OUT/verify-$ws-$name.txt" | cut -c1-80); $verdict)"
      else
        say "FAIL: pyimg verify $name (exit $rc):"; cat "$OUT/verify-$ws-$name.txt" >&2
        echo "${verdict:-}" >&2; fail=1
      fi
    done <"$REPO/$ws/verify_cases.txt"
  done
  local bfy
  bfy="$(command -v buildifier || true)"
  if [ -z "$bfy" ] && command -v npm >/dev/null; then
    npm install -g @bazel/buildifier >/dev/null 2>&1 || true
    bfy="$(command -v buildifier || true)"
  fi
  if [ -z "$bfy" ]; then
    say "FAIL: buildifier not available (npm install -g @bazel/buildifier)"; fail=1
  else
    local files=()
    mapfile -t files < <(find bazel e2e -type f \( -name '*.bzl' -o -name 'BUILD' -o -name 'BUILD.bazel' \
      -o -name 'WORKSPACE' -o -name 'WORKSPACE.bazel' -o -name '*.BUILD' \) | LC_ALL=C sort)
    if "$bfy" -mode=check -lint=warn "${files[@]}" >"$OUT/buildifier.txt" 2>&1; then
      say "   buildifier -mode=check -lint=warn: ${#files[@]} files clean"
    else
      say "FAIL: buildifier:"; cat "$OUT/buildifier.txt" >&2; fail=1
    fi
  fi
  if [ "$fail" = 0 ]; then echo "bazel-e2e: PASS" | tee "$OUT/summary.txt"; else echo "bazel-e2e: FAIL" | tee "$OUT/summary.txt"; fi
  return "$fail"
}

case "$STEP" in
  setup) setup ;;
  build) setup; build ;;
  check) check ;;
  all) setup; build; check ;;
  *) echo "usage: $0 [all|setup|build|check]" >&2; exit 2 ;;
esac
