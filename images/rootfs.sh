#!/bin/sh
# rootfs.sh ARCH OUT_SQFS NOOP_BIN [EXTRA_PACKAGES] [SDK_DIR] [NODE_DIR]
# Builds the base root file system: a debootstrap minbase of Debian bookworm
# (plus EXTRA_PACKAGES, comma separated), the static no-op binary at
# /usr/lib/vmexec/noop, packed as a read-only squashfs image.
# With SDK_DIR, also installs python3 and pip into a copy and writes what that adds
# to SDK_DIR (the tree of the SDK layer shard) and its version to SDK_DIR.version.
# With NODE_DIR, the same for Debian's nodejs (the Node.js SDK shard's tree).
set -eu
ARCH=$1 OUT=$2 NOOP=$3 EXTRA=${4:-} SDK=${5:-} NODE=${6:-}
case "$ARCH" in
  x86_64) DEB=amd64 ;;
  aarch64) DEB=arm64 ;;
  *) echo "rootfs.sh: unsupported architecture $ARCH" >&2; exit 2 ;;
esac
MIRROR=${VMEXEC_MIRROR:-http://deb.debian.org/debian}
TMP=$(mktemp -d "$(dirname "$OUT")/rootfs.XXXXXX")
cleanup() {
  umount "$TMP/full/proc" 2>/dev/null || true
  umount "$TMP/node/proc" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
if ! debootstrap --arch="$DEB" --variant=minbase ${EXTRA:+--include="$EXTRA"} bookworm "$TMP/base" "$MIRROR" > "$TMP/log" 2>&1; then
  tail -n 20 "$TMP/log" >&2
  echo "rootfs.sh: debootstrap failed" >&2
  exit 1
fi
# The unprivileged user commands run as by default (uid and gid 1000), with a home.
chroot "$TMP/base" useradd --uid 1000 --user-group --create-home --shell /bin/sh vmexec
# What Debian's installer would leave in /etc, where debootstrap copies the
# build host's own files: the guest's name, its hosts (localhost and the
# name, IPv4 and IPv6), /etc/mtab. No resolv.conf: the guest has no DNS.
echo vmexec > "$TMP/base/etc/hostname"
cat > "$TMP/base/etc/hosts" <<'HOSTS'
127.0.0.1	localhost
127.0.1.1	vmexec
::1	localhost ip6-localhost ip6-loopback vmexec
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
HOSTS
chmod 0644 "$TMP/base/etc/hostname" "$TMP/base/etc/hosts"
ln -sfn ../proc/self/mounts "$TMP/base/etc/mtab"
if [ -n "$SDK" ]; then
  cp -a "$TMP/base" "$TMP/full"
  cp /etc/resolv.conf "$TMP/full/etc/resolv.conf"
  mount -t proc proc "$TMP/full/proc"
  if ! DEBIAN_FRONTEND=noninteractive chroot "$TMP/full" apt-get install -y -qq --no-install-recommends python3 python3-pip > "$TMP/log" 2>&1; then
    tail -n 20 "$TMP/log" >&2
    echo "rootfs.sh: installing python3 for the SDK shard failed" >&2
    exit 1
  fi
  chroot "$TMP/full" python3 -c 'import platform; print(platform.python_version())' > "$TMP/version"
  umount "$TMP/full/proc"
fi
if [ -n "$NODE" ]; then
  cp -a "$TMP/base" "$TMP/node"
  cp /etc/resolv.conf "$TMP/node/etc/resolv.conf"
  mount -t proc proc "$TMP/node/proc"
  if ! DEBIAN_FRONTEND=noninteractive chroot "$TMP/node" apt-get install -y -qq --no-install-recommends nodejs > "$TMP/log" 2>&1; then
    tail -n 20 "$TMP/log" >&2
    echo "rootfs.sh: installing nodejs for the Node.js SDK shard failed" >&2
    exit 1
  fi
  chroot "$TMP/node" node -p 'process.versions.node' > "$TMP/node-version"
  umount "$TMP/node/proc"
fi
# Trim what a guest never reads: package caches, docs, man pages.
for T in "$TMP/base" "$TMP/full" "$TMP/node"; do
  [ -d "$T" ] || continue
  rm -rf "$T"/var/cache/apt/* "$T"/var/lib/apt/lists/* "$T"/usr/share/doc/* "$T"/usr/share/man/* "$T"/usr/share/info/*
  rm -f "$T/etc/resolv.conf"
done
install -D -m 0755 "$NOOP" "$TMP/base/usr/lib/vmexec/noop"
if [ -n "$SDK" ]; then
  rm -rf "$SDK" "$SDK.version"
  python3 "$(dirname "$0")/treediff.py" "$TMP/base" "$TMP/full" "$SDK"
  mv "$TMP/version" "$SDK.version"
fi
if [ -n "$NODE" ]; then
  rm -rf "$NODE" "$NODE.version"
  python3 "$(dirname "$0")/treediff.py" "$TMP/base" "$TMP/node" "$NODE"
  mv "$TMP/node-version" "$NODE.version"
fi
# LZ4: the guest decompresses on every cold read and TCG makes heavier
# codecs slow; the image stays on the host, so its size matters little.
rm -f "$OUT.tmp"
mksquashfs "$TMP/base" "$OUT.tmp" -comp lz4 -Xhc -noappend -quiet -no-progress >/dev/null
mv "$OUT.tmp" "$OUT"
echo "rootfs $OUT (minbase${EXTRA:+,$EXTRA}): $(du -h "$OUT" | cut -f1)${SDK:+; SDK tree $SDK (python $(cat "$SDK.version"))}${NODE:+; Node.js tree $NODE (node $(cat "$NODE.version"))}"
