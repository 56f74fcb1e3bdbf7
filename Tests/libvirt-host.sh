#!/bin/sh
# libvirt-host.sh: a libvirt host of the tests' (and make bench's) own, started
# without systemd, with everything it keeps under one folder.
#
#   libvirt-host.sh start DIR          a local host; prints its URI
#                                      (qemu:///system over DIR/run/libvirt-sock)
#   libvirt-host.sh start DIR N        a "remote" host: a network namespace of its
#                                      own (vmexec-lv-N), a veth pair 10.237.N.1 (this
#                                      side) / 10.237.N.2 (the host's), libvirtd
#                                      listening there over plain TCP; prints
#                                      qemu+tcp://10.237.N.2/system
#   libvirt-host.sh stop DIR           ends its guests and its daemon (and namespace)
#   libvirt-host.sh kill DIR           kills its daemon only, as a crash would
#   libvirt-host.sh restart DIR        starts its daemon again after kill
#
# LIBVIRT_HOST_TIMEOUT=S: the daemon ends by itself after S seconds without
# clients or guests (tests set it, so a host outlives no test run for long).
#
# The daemon runs in a mount namespace of its own where /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are folders under DIR:
# several hosts on one machine share nothing, and the machine's own libvirt (if
# any) is left alone. QEMU runs as root without cgroups, device namespaces or a
# security driver: a test host, not a field one (docs/SECURITY.md says what a
# field host needs). Plain TCP without authentication is only ever used inside a
# namespace this script made; no traffic leaves it and the veth pair.
set -eu
cmd=${1:?usage: libvirt-host.sh start|stop|kill|restart DIR [N]}
DIR=${2:?usage: libvirt-host.sh start|stop|kill|restart DIR [N]}
N=${3:-}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

uri() {
  if [ -s "$DIR/netns" ]; then
    echo "qemu+tcp://$(cat "$DIR/address")/system"
  else
    echo "qemu:///system?socket=$DIR/run/libvirt-sock"
  fi
}

configure() {
  mkdir -p "$DIR/etc" "$DIR/run" "$DIR/lib" "$DIR/log" "$DIR/cache"
  cat > "$DIR/etc/qemu.conf" <<'EOF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
  {
    echo 'unix_sock_rw_perms = "0700"'
    echo 'auth_unix_rw = "none"'
    echo 'auth_unix_ro = "none"'
    echo 'log_outputs = "2:stderr"'
    if [ -s "$DIR/netns" ]; then
      echo 'listen_tls = 0'
      echo 'listen_tcp = 1'
      echo 'auth_tcp = "none"'
      echo "listen_addr = \"$(cat "$DIR/address")\""
    fi
  } > "$DIR/etc/libvirtd.conf"
}

launch() {
  # The mounts are made in the daemon's own mount namespace (unshare -m), then it
  # replaces the shell: its pid is the one recorded.
  inner="mount --bind '$DIR/etc' /etc/libvirt && mount --bind '$DIR/run' /run/libvirt \
    && mount --bind '$DIR/lib' /var/lib/libvirt && mount --bind '$DIR/log' /var/log/libvirt \
    && mount --bind '$DIR/cache' /var/cache/libvirt && exec libvirtd --pid-file /run/libvirt/libvirtd.pid ${LIBVIRT_HOST_TIMEOUT:+--timeout $LIBVIRT_HOST_TIMEOUT}"
  [ -s "$DIR/netns" ] && inner="$inner --listen"
  mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
  rm -f "$DIR/run/libvirt-sock"
  if [ -s "$DIR/netns" ]; then
    setsid ip netns exec "$(cat "$DIR/netns")" unshare -m --propagation private sh -c "$inner" \
      > "$DIR/libvirtd.log" 2>&1 < /dev/null &
  else
    setsid unshare -m --propagation private sh -c "$inner" > "$DIR/libvirtd.log" 2>&1 < /dev/null &
  fi
  echo $! > "$DIR/libvirtd.pid"
  i=0
  until virsh -q -c "$(uri)" version > /dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$(cat "$DIR/libvirtd.pid")" 2> /dev/null; then
      echo "libvirt-host.sh: libvirtd did not answer at $(uri); its log:" >&2
      tail -20 "$DIR/libvirtd.log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

netns_up() {
  ns="vmexec-lv-$N"
  here="vxlv$N-h"
  there="vxlv$N-g"
  ip netns del "$ns" 2> /dev/null || true
  ip link del "$here" 2> /dev/null || true
  ip netns add "$ns"
  ip link add "$here" type veth peer name "$there"
  ip link set "$there" netns "$ns"
  ip addr add "10.237.$N.1/24" dev "$here"
  ip link set "$here" up
  ip -n "$ns" addr add "10.237.$N.2/24" dev "$there"
  ip -n "$ns" link set "$there" up
  ip -n "$ns" link set lo up
  echo "$ns" > "$DIR/netns"
  echo "10.237.$N.2" > "$DIR/address"
}

kill_daemon() {
  if [ -s "$DIR/libvirtd.pid" ]; then
    kill -9 "$(cat "$DIR/libvirtd.pid")" 2> /dev/null || true
    rm -f "$DIR/libvirtd.pid"
  fi
}

case "$cmd" in
  start)
    command -v libvirtd > /dev/null || { echo "libvirt-host.sh: no libvirtd; run make deps" >&2; exit 1; }
    rm -f "$DIR/netns" "$DIR/address"
    if [ -n "$N" ]; then netns_up; fi
    configure
    launch
    uri
    ;;
  restart)
    launch
    uri
    ;;
  kill)
    kill_daemon
    ;;
  stop)
    # Guests first (their QEMUs outlive a killed daemon), by the pid files libvirt keeps.
    for pid in "$DIR"/run/qemu/*.pid; do
      [ -s "$pid" ] && kill -9 "$(cat "$pid")" 2> /dev/null || true
    done
    kill_daemon
    if [ -s "$DIR/netns" ]; then
      ns=$(cat "$DIR/netns")
      ip netns del "$ns" 2> /dev/null || true
      ip link del "vxlv${ns#vmexec-lv-}-h" 2> /dev/null || true
    fi
    ;;
  *)
    echo "libvirt-host.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
