#!/bin/sh
# initramfs.sh KERNEL_DIR INIT OUT_CPIO MODULE...
# Packs the init and the named kernel modules, with everything they depend
# on, into an uncompressed cpio archive (the kernel unpacks it without a
# decompressor, which is slow under TCG). The load order comes from
# modorder.py, which reads each module's own `depends=`; it is written to
# /lib/modules/order for the init to follow.
set -eu
KDIR=$1 INIT=$2 OUT=$3
shift 3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
R=$TMP/root
mkdir -p "$R/lib/modules" "$R/proc" "$R/sys" "$R/dev" "$R/run" "$R/tmp" "$R/mnt"
cp "$INIT" "$R/init"
chmod 0755 "$R/init"
python3 "$(dirname "$0")/modorder.py" "$KDIR/modules" "$@" > "$TMP/order"
: > "$R/lib/modules/order"
while read -r ko; do
  cp "$ko" "$R/lib/modules/"
  basename "$ko" >> "$R/lib/modules/order"
done < "$TMP/order"
(cd "$R" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "initramfs $OUT: modules $(tr '\n' ' ' < "$R/lib/modules/order")"
