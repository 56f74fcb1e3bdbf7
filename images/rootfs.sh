#!/bin/sh
# rootfs.sh ARCH OUT_SQFS NOOP_BIN [EXTRA_PACKAGES]
# Builds the base root file system: a debootstrap minbase of Debian bookworm
# with python3 (plus EXTRA_PACKAGES, comma separated), the static no-op
# binary at /usr/lib/vmexec/noop, packed as a read-only squashfs image.
set -eu
ARCH=$1 OUT=$2 NOOP=$3 EXTRA=${4:-}
case "$ARCH" in
  x86_64) DEB=amd64 ;;
  aarch64) DEB=arm64 ;;
  *) echo "rootfs.sh: unsupported architecture $ARCH" >&2; exit 2 ;;
esac
MIRROR=${VMEXEC_MIRROR:-http://deb.debian.org/debian}
INCLUDE=python3${EXTRA:+,$EXTRA}
TMP=$(mktemp -d "$(dirname "$OUT")/rootfs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
if ! debootstrap --arch="$DEB" --variant=minbase --include="$INCLUDE" bookworm "$TMP" "$MIRROR" > "$TMP.log" 2>&1; then
  tail -n 20 "$TMP.log" >&2
  echo "rootfs.sh: debootstrap failed (full log: $TMP.log)" >&2
  exit 1
fi
rm -f "$TMP.log"
# Trim what a guest never reads: package caches, docs, man pages.
rm -rf "$TMP"/var/cache/apt/* "$TMP"/var/lib/apt/lists/* "$TMP"/usr/share/doc/* "$TMP"/usr/share/man/* "$TMP"/usr/share/info/*
install -D -m 0755 "$NOOP" "$TMP/usr/lib/vmexec/noop"
echo vmexec > "$TMP/etc/hostname"
# LZ4: the guest decompresses on every cold read and TCG makes heavier
# codecs slow; the image stays on the host, so its size matters little.
rm -f "$OUT.tmp"
mksquashfs "$TMP" "$OUT.tmp" -comp lz4 -Xhc -noappend -quiet -no-progress -all-root >/dev/null
mv "$OUT.tmp" "$OUT"
echo "rootfs $OUT ($INCLUDE): $(du -h "$OUT" | cut -f1)"
