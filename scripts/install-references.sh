#!/usr/bin/env bash
# Install the reference tools that the differential tests and benchmarks compare against:
#   - gawk and Debian's bsdtar 3.6 (apt)
#   - bsdtar 3.8 from Debian sid, unpacked into a cache dir and run through sid's own loader
# Prints nothing on success except progress; writes a wrapper at $PYIMG_REF_DIR/bin/bsdtar38.
set -euo pipefail

REF_DIR="${PYIMG_REF_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pyimg-references}"
mkdir -p "$REF_DIR"

need_apt=()
command -v gawk >/dev/null || need_apt+=(gawk)
command -v bsdtar >/dev/null || need_apt+=(libarchive-tools)
command -v apt-get >/dev/null || { echo "install-references: apt-get not found" >&2; exit 1; }
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

WRAPPER="$REF_DIR/bin/bsdtar38"
if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  echo "install-references: bsdtar 3.8 already at $WRAPPER"
  exit 0
fi

ROOT="$REF_DIR/sid-root"
APT="$REF_DIR/apt"
rm -rf "$ROOT" "$APT"
mkdir -p "$ROOT" "$APT/lists/partial" "$APT/archives/partial" "$APT/debs" "$REF_DIR/bin"
# Reuse the machine's Debian mirror, switched to sid.
mirror="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?$' | head -1 || true)"
[ -n "$mirror" ] || mirror="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)"
[ -n "$mirror" ] || { echo "install-references: cannot find a Debian mirror in apt sources" >&2; exit 1; }
echo "deb [trusted=yes] ${mirror%/} sid main" > "$APT/sources.list"
APT_OPTS=(-o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=- \
  -o Dir::State::Lists="$APT/lists" -o Dir::Cache::Archives="$APT/archives" \
  -o Acquire::Check-Valid-Until=false -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${APT_OPTS[@]}" update -qq
pkgs=(libarchive-tools libarchive13t64 libc6 libacl1 libbz2-1.0 liblz4-1 liblzma5 libxml2-16 libzstd1
      zlib1g libnettle8t64 libssl3t64 libicu76 libstdc++6 libgcc-s1 libattr1 libhogweed6t64 libgmp10)
( cd "$APT/debs" && for p in "${pkgs[@]}"; do apt-get "${APT_OPTS[@]}" download -qq "$p" || echo "install-references: note: $p not in sid, skipped" >&2; done )
for d in "$APT"/debs/*.deb; do dpkg -x "$d" "$ROOT"; done
loader="$ROOT/usr/lib64/ld-linux-x86-64.so.2"
[ -e "$loader" ] || loader="$ROOT/lib64/ld-linux-x86-64.so.2"
cat > "$WRAPPER" <<WRAP
#!/bin/sh
exec "$loader" --library-path "$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu" "$ROOT/usr/bin/bsdtar" "\$@"
WRAP
chmod +x "$WRAPPER"
"$WRAPPER" --version
echo "install-references: bsdtar 3.8 at $WRAPPER"
