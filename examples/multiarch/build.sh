#!/bin/sh
# build.sh ARCH OUT.shard: the multiarch example's program shard for ARCH.
# Cross-compiles checksum.c static for ARCH on this host and packs it with its
# tests into a program shard mounted at /opt/checksum. The shard's
# architecture comes from the binary inside (vmexec shard create reads it), so
# the aarch64 shard is refused by an x86_64 guest before boot, and the other
# way round. Then, in each guest, the same command runs the tests:
#   vmexec run --arch ARCH --shard OUT.shard -- /opt/checksum/tests/run-tests
set -eu
ARCH=$1 OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
VMEXEC=${VMEXEC:-vmexec}
case "$ARCH" in
  x86_64) CC=${CC_x86_64:-$( [ "$(uname -m)" = x86_64 ] && echo musl-gcc || echo x86_64-linux-gnu-gcc )} ;;
  aarch64) CC=${CC_aarch64:-$( [ "$(uname -m)" = aarch64 ] && echo musl-gcc || echo aarch64-linux-gnu-gcc )} ;;
  *) echo "build.sh: ARCH is x86_64 or aarch64, not $ARCH" >&2; exit 2 ;;
esac
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
chmod 0755 "$TREE"
mkdir -p "$TREE/bin" "$TREE/tests"
"$CC" -std=c11 -Wall -Wextra -Werror -O2 -static "$HERE/checksum.c" -o "$TREE/bin/checksum"
install -m 0755 "$HERE/run-tests" "$TREE/tests/run-tests"
"$VMEXEC" shard create "$TREE" -o "$OUT" --name checksum --version 1.0 --kind program --mount /opt/checksum \
  --env PATH=/opt/checksum/bin --root-owned
