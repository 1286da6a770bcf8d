#!/usr/bin/env bash
# Two test hosts on this machine for remote lazy restore: network namespaces fl-src (the page
# server's side) and fl-dst (the restoring side), joined by a veth pair. Traffic stays between their
# own addresses, 10.77.0.1 (src) and 10.77.0.2 (dst); nothing is routed anywhere else.
#   scripts/netns.sh up [RATE]   create (idempotent); RATE (e.g. 200mbit) caps both directions with tbf
#   scripts/netns.sh down        remove
#   scripts/netns.sh check       exit 0 if namespaces can be made here, else say why (exit 2)
# FL_NETNS=NAME FL_NETNS_NET=A.B.C make another pair, NAME-src/NAME-dst on A.B.C.1/2 (tests that run
# at the same time as others keep to their own pair; default fl / 10.77.0).
# FL_NETNS_HOSTS=3 with `up` adds a second restoring host, NAME-dst2 on A.B.C.3, joined to NAME-src
# by a veth pair of its own (NAME-src answers on A.B.C.1 there too): one server address, two client
# hosts. `down` removes it whenever it exists.
set -u
NAME=${FL_NETNS:-fl} NET=${FL_NETNS_NET:-10.77.0}
SRC=$NAME-src DST=$NAME-dst DST2=$NAME-dst2
SRC_IP=$NET.1 DST_IP=$NET.2 DST2_IP=$NET.3
# veth names are per host, at most 15 characters
VSRC=${NAME}-vs VDST=${NAME}-vd VSRC2=${NAME}-vs2 VDST2=${NAME}-vd2
[ "$NAME" = fl ] && VSRC=fl-veth-src VDST=fl-veth-dst VSRC2=fl-veth-src2 VDST2=fl-veth-dst2
HOSTS=${FL_NETNS_HOSTS:-2}

need() {
  if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y iproute2 >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y iproute2 >/dev/null 2>&1; }
    fi
  fi
  command -v ip >/dev/null 2>&1 || { echo "netns: 'ip' (Debian's iproute2) is missing and could not be installed" >&2; exit 2; }
  [ "$(id -u)" -eq 0 ] || { echo "netns: network namespaces need root (or CAP_NET_ADMIN)" >&2; exit 2; }
}

case "${1:-}" in
  check)
    need
    ip netns add "$NAME-probe" 2>/tmp/fl-netns-probe.err || { echo "netns: this machine does not allow network namespaces: $(cat /tmp/fl-netns-probe.err)" >&2; exit 2; }
    ip netns del "$NAME-probe"
    ;;
  up)
    need
    rate="${2:-}"
    if ! ip netns list | grep -qw "$SRC"; then
      ip netns add "$SRC" && ip netns add "$DST" || exit 2
      ip link add "$VSRC" type veth peer name "$VDST" || exit 2
      ip link set "$VSRC" netns "$SRC"
      ip link set "$VDST" netns "$DST"
      ip -n "$SRC" addr add "$SRC_IP/24" dev "$VSRC"
      ip -n "$DST" addr add "$DST_IP/24" dev "$VDST"
      for ns in "$SRC" "$DST"; do ip -n "$ns" link set lo up; done
      ip -n "$SRC" link set "$VSRC" up
      ip -n "$DST" link set "$VDST" up
    fi
    pairs=("$SRC $VSRC" "$DST $VDST")
    if [ "$HOSTS" -ge 3 ]; then
      if ! ip netns list | grep -qw "$DST2"; then
        ip netns add "$DST2" || exit 2
        ip link add "$VSRC2" type veth peer name "$VDST2" || exit 2
        ip link set "$VSRC2" netns "$SRC"
        ip link set "$VDST2" netns "$DST2"
        # The source keeps its one address on this link too; a host route sends DST2's replies here.
        ip -n "$SRC" addr add "$SRC_IP/32" dev "$VSRC2"
        ip -n "$DST2" addr add "$DST2_IP/24" dev "$VDST2"
        ip -n "$DST2" link set lo up
        ip -n "$SRC" link set "$VSRC2" up
        ip -n "$DST2" link set "$VDST2" up
        ip -n "$SRC" route add "$DST2_IP/32" dev "$VSRC2"
      fi
      pairs+=("$SRC $VSRC2" "$DST2 $VDST2")
    fi
    for pair in "${pairs[@]}"; do
      set -- $pair
      tc -n "$1" qdisc del dev "$2" root 2>/dev/null || true
      # This kernel has no netem: bandwidth is capped with tbf, delay comes from scripts/delay-relay.mjs.
      [ -n "$rate" ] && tc -n "$1" qdisc add dev "$2" root tbf rate "$rate" burst 256kb latency 50ms
    done
    ip -n "$DST" route get "$SRC_IP" >/dev/null 2>&1 || { echo "netns: $DST has no route to $SRC_IP" >&2; exit 2; }
    if [ "$HOSTS" -ge 3 ]; then
      ip -n "$DST2" route get "$SRC_IP" >/dev/null 2>&1 || { echo "netns: $DST2 has no route to $SRC_IP" >&2; exit 2; }
    fi
    ;;
  down)
    ip netns del "$SRC" 2>/dev/null
    ip netns del "$DST" 2>/dev/null
    ip netns del "$DST2" 2>/dev/null
    true
    ;;
  *)
    echo "usage: $0 up [RATE] | down | check" >&2
    exit 64
    ;;
esac
