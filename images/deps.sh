#!/bin/sh
# deps.sh [ARCH]: installs the host packages vmexec needs that are missing.
# Idempotent, and silent when everything is already there.
set -eu
ARCH=${1:-x86_64}
need() { command -v "$1" >/dev/null 2>&1 || MISSING="$MISSING $2"; }
MISSING=""
need "qemu-system-$ARCH" "$( [ "$ARCH" = aarch64 ] && echo qemu-system-arm || echo qemu-system-x86 )"
need qemu-img qemu-utils
need mksquashfs squashfs-tools
need debootstrap debootstrap
need cpio cpio
need musl-gcc musl-tools
need lz4 lz4
need modinfo kmod
need mkfs.ext4 e2fsprogs
need python3 python3
need rdsquashfs squashfs-tools-ng
# pip fetches the libs shard's wheel (numpy) from PyPI; make test-api puts
# schemathesis in a venv, and its script reaches the daemon with curl.
python3 -m pip --version >/dev/null 2>&1 || MISSING="$MISSING python3-pip"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || MISSING="$MISSING python3-venv"
need curl curl
# Tests/deadline.sh prints a hung test's threads with gdb.
need gdb gdb
# Libraries the host binaries link (system-library targets in Package.swift).
needlib() { pkg-config --exists "$1" 2>/dev/null || MISSING="$MISSING $2"; }
need pkg-config pkg-config
needlib libsquashfs1 libsquashfs-dev
needlib libarchive libarchive-dev
needlib ext2fs libext2fs-dev
needlib sqlite3 libsqlite3-dev
MISSING=$(echo "$MISSING" | tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' ')
[ -z "$MISSING" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "deps.sh: missing packages: $MISSING; install them as root (apt-get install $MISSING)" >&2
  exit 1
fi
echo "installing:$MISSING"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
