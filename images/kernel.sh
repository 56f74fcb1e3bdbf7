#!/bin/sh
# kernel.sh ARCH OUT_DIR: fetch Debian's cloud kernel for ARCH and unpack it.
# Writes OUT_DIR/vmlinuz, OUT_DIR/vmlinux (x86_64: uncompressed, for PVH boot),
# OUT_DIR/kernel.version and OUT_DIR/modules/ (the kernel's module tree).
set -eu
ARCH=$1 OUT=$2
case "$ARCH" in
  x86_64) DEB=amd64 ;;
  aarch64) DEB=arm64 ;;
  *) echo "kernel.sh: unsupported architecture $ARCH" >&2; exit 2 ;;
esac
CACHE=${VMEXEC_CACHE:-$(dirname "$OUT")/cache}
mkdir -p "$CACHE" "$OUT"
# Resolve the metapackage to the versioned image package it depends on.
resolve() {
  apt-cache depends "linux-image-cloud-$DEB:$DEB" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)/\1/p' | sed 's/:.*//' | head -n1
}
PKG=$(resolve)
if [ -z "$PKG" ] && [ "$(id -u)" = 0 ]; then
  # A new machine may never have fetched its package lists.
  apt-get update -qq && PKG=$(resolve)
fi
if [ -z "$PKG" ]; then
  echo "kernel.sh: cannot resolve linux-image-cloud-$DEB; run apt-get update (and dpkg --add-architecture $DEB for a foreign one)" >&2
  exit 1
fi
DEBFILE=$(ls "$CACHE/${PKG}_"*"_$DEB.deb" 2>/dev/null | head -n1 || true)
if [ -z "$DEBFILE" ]; then
  (cd "$CACHE" && apt-get download -q "$PKG:$DEB" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  DEBFILE=$(ls "$CACHE/${PKG}_"*"_$DEB.deb" | head -n1)
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
dpkg-deb -x "$DEBFILE" "$TMP"
KVER=$(ls "$TMP/lib/modules" | head -n1)
cp "$TMP/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
rm -rf "$OUT/modules"
mv "$TMP/lib/modules/$KVER" "$OUT/modules"
if [ "$ARCH" = x86_64 ]; then
  # Debian compresses the x86 kernel with LZ4; unpack it once here so QEMU
  # can boot the ELF through PVH and the guest skips decompression.
  python3 "$(dirname "$0")/extract-vmlinux.py" "$OUT/vmlinuz" "$OUT/vmlinux"
fi
echo "$KVER" > "$OUT/kernel.version"
echo "kernel $KVER for $ARCH in $OUT"
