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
needlib libvirt libvirt-dev
# The libvirt machine's tests and benches start libvirt daemons of their own
# (Tests/libvirt-host.sh): libvirtd with its QEMU driver, virsh, ip.
need libvirtd libvirt-daemon
[ -e /usr/lib/$(uname -m)-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ] || MISSING="$MISSING libvirt-daemon-driver-qemu"
need virsh libvirt-clients
need ip iproute2
# A guest of another architecture than the host's (aarch64 on x86_64): a cross
# compiler with a static C library for the init and its helpers, the foreign
# architecture in dpkg (the kernel package), and qemu-user-static registered
# with binfmt_misc so that debootstrap's second stage runs the guest's binaries.
FOREIGN=""
if [ "$ARCH" != "$(uname -m)" ]; then
  case "$ARCH" in
    aarch64) FOREIGN=arm64 ;;
    *) echo "deps.sh: building $ARCH guests on a $(uname -m) host is not supported (aarch64 on x86_64 is)" >&2; exit 1 ;;
  esac
  need "$ARCH-linux-gnu-gcc" "gcc-$ARCH-linux-gnu"
  [ -e "/usr/$ARCH-linux-gnu/lib/libc.a" ] || MISSING="$MISSING libc6-dev-$FOREIGN-cross"
  need "qemu-$ARCH-static" qemu-user-static
  need update-binfmts binfmt-support
fi
MISSING=$(echo "$MISSING" | tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' ')
as_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: $1; run make deps ARCH=$ARCH as root" >&2
    exit 1
  fi
}
if [ -n "$MISSING" ]; then
  as_root "missing packages: $MISSING (apt-get install $MISSING)"
  echo "installing:$MISSING"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
fi
# libvirtd resolves its QEMU user before it reads qemu.conf; libvirt-daemon-system
# (which would make it) pulls in systemd as init, so the user is made here.
if ! getent passwd libvirt-qemu >/dev/null; then
  as_root "libvirtd needs the user libvirt-qemu"
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
  echo "made the system user libvirt-qemu"
fi
if [ -n "$FOREIGN" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx "$FOREIGN"; then
    as_root "dpkg does not know the $FOREIGN architecture (dpkg --add-architecture $FOREIGN)"
    echo "adding the $FOREIGN architecture to dpkg"
    dpkg --add-architecture "$FOREIGN"
    apt-get update -qq
  fi
  # Containers and machines without systemd have binfmt_misc unmounted and
  # nothing registered: debootstrap's second stage would fail with "Exec format error".
  if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$ARCH" ]; then
    as_root "qemu-$ARCH is not registered with binfmt_misc"
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable "qemu-$ARCH"
    echo "registered qemu-$ARCH with binfmt_misc"
  fi
fi
