#!/usr/bin/env bash
# The NAT test bed: network namespaces for public relays (each behind its own delay line),
# a DHT bootstrap host, a plain public host, and two hosts each behind its own NAT router.
# See tests/netbed/README.md for the picture.
#
#   netbed.sh up       build the bed (if it is already up and healthy, just print it)
#   netbed.sh down     remove everything the bed made, even a half-built bed
#   netbed.sh status   print the bed; exit 1 unless it is complete and healthy
#
# Environment (all optional):
#   CB_PREFIX     namespace name prefix            (default "cb-")
#   CB_DELAYS     one-way delay in ms per relay    (default "5 15 30 60": r1..r4)
#   CB_DELAYLINE  path of the circuit-delayline binary (default: target/debug, built if missing)
#   CB_FIREWALL   "nft" or "iptables"              (default: nft if present, else iptables)
#   CB_STATE_DIR  where hosts.env, pid and log files go (default /run/circuit-netbed/<prefix>)
#   CB_KEEP_ON_FAIL=1  leave a failed "up" half-built for debugging (default: clean it up)
#
# Nothing here touches the root namespace's interfaces, routes or firewall: every link is
# created inside the bed's namespaces, and only documentation/private ranges are used
# (198.18.0.0/24 for the "public" segment, 10.77.N.0/24 behind NAT router N).
set -euo pipefail

PREFIX=${CB_PREFIX:-cb-}
STATE_DIR=${CB_STATE_DIR:-/run/circuit-netbed/${PREFIX%-}}
read -r -a DELAYS <<<"${CB_DELAYS:-5 15 30 60}"
PUB_NET=198.18.0          # the "public" segment, a /24 of the benchmarking range
PUB_ADDR_DHT=$PUB_NET.2
PUB_ADDR_PUBHOST=$PUB_NET.3
NATS=(1 2)                # NAT router N: wan $PUB_NET.(100+N), lan 10.77.N.1, host 10.77.N.2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

ns() { printf '%s%s' "$PREFIX" "$1"; }
relay_addr() { printf '%s.%d' "$PUB_NET" $((10 + $1)); }
say() { printf 'netbed: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

require_tools() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
    command -v ip >/dev/null || die "'ip' not found: apt-get install iproute2"
}

pick_firewall() {
    local fw=${CB_FIREWALL:-}
    if [ -z "$fw" ]; then
        if command -v nft >/dev/null; then
            fw=nft
        elif command -v iptables >/dev/null; then
            fw=iptables
        else
            die "neither nft nor iptables found: apt-get install nftables (or iptables)"
        fi
    fi
    command -v "$fw" >/dev/null || die "CB_FIREWALL=$fw but '$fw' is not installed"
    printf '%s' "$fw"
}

find_delayline() {
    local bin=${CB_DELAYLINE:-$REPO/target/debug/circuit-delayline}
    if [ ! -x "$bin" ]; then
        [ -z "${CB_DELAYLINE:-}" ] || die "CB_DELAYLINE=$bin is not executable"
        say "building circuit-delayline (cargo build -p circuit-delayline)"
        (cd "$REPO" && cargo build -q -p circuit-delayline) || die "cargo build failed"
    fi
    printf '%s' "$bin"
}

# Every namespace the bed may have made: those recorded by "up", the fixed ones, and any
# relay namespace (the relay count depends on CB_DELAYS at the time of "up").
bed_namespaces() {
    {
        if [ -f "$STATE_DIR/namespaces" ]; then cat "$STATE_DIR/namespaces"; fi
        for n in pub dht pubhost rtr1 rtr2 nat1 nat2; do ns "$n"; echo; done
        ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX//./\\.}r[0-9]+\$" || true
    } | sort -u | while read -r n; do
        [ -n "$n" ] && [ -e "/var/run/netns/$n" ] && echo "$n"
    done
}

# Our own delay-line processes, by the pids they wrote themselves.
delayline_pids() {
    local f pid
    for f in "$STATE_DIR"/delayline-*.ready; do
        [ -f "$f" ] || continue
        pid=$(head -n1 "$f")
        [[ $pid =~ ^[0-9]+$ ]] || continue
        # Only a process that is still a delay line (the pid may have been reused) and
        # not a zombie (an init that does not reap leaves killed ones in /proc).
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "circuit-delayli" ] &&
            ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
            echo "$pid"
        fi
    done
}

cmd_down() {
    require_tools
    local pid n i
    for pid in $(delayline_pids); do kill "$pid" 2>/dev/null || true; done
    for i in $(seq 1 40); do
        [ -z "$(delayline_pids)" ] && break
        sleep 0.05
    done
    for pid in $(delayline_pids); do kill -9 "$pid" 2>/dev/null || true; done
    for n in $(bed_namespaces); do
        # Processes started inside the bed (relays, listeners) would keep the namespace
        # alive after "ip netns del"; they belong to the bed, so they go with it.
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    for n in $(bed_namespaces); do
        ip netns del "$n" 2>/dev/null || say "could not delete namespace $n"
    done
    rm -rf "$STATE_DIR"
    say "down (prefix $PREFIX)"
}

start_delayline() { # index delay_ms
    local i=$1 d=$2 bin=$3 ready=$STATE_DIR/delayline-r$1.ready t
    rm -f "$ready"
    setsid "$bin" --a-netns "$(ns pub)" --a-tap "tap-r$i" --b-netns "$(ns "r$i")" --b-tap eth0 \
        --delay-ms "$d" --stats-secs 30 --ready-file "$ready" \
        </dev/null >>"$STATE_DIR/delayline-r$i.log" 2>&1 &
    for t in $(seq 1 100); do
        [ -s "$ready" ] && return 0
        if ! kill -0 $! 2>/dev/null; then
            cat "$STATE_DIR/delayline-r$i.log" >&2
            die "delay line for r$i exited"
        fi
        sleep 0.05
    done
    die "delay line for r$i not ready after 5 s"
}

nat_rules() { # router namespace, firewall
    local r=$1 fw=$2
    if [ "$fw" = nft ]; then
        # MASQUERADE out of wan0; forward only what lan0 starts (and its replies), so the
        # inside host cannot be reached from outside even by a host that routes to it.
        ip netns exec "$r" nft -f - <<'EOF'
table ip cbnat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
    }
}
EOF
    else
        ip netns exec "$r" iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
        ip netns exec "$r" iptables -P FORWARD DROP
        ip netns exec "$r" iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        ip netns exec "$r" iptables -A FORWARD -i lan0 -o wan0 -j ACCEPT
    fi
}

add_ns() {
    ip netns add "$1"
    echo "$1" >>"$STATE_DIR/namespaces"
    ip -n "$1" link set lo up
}

# A host on the public segment through a plain veth: "v-NAME" on the bridge, "eth0" inside.
add_public_veth() { # ns port-name addr
    ip -n "$(ns pub)" link add "$2" type veth peer name eth0 netns "$1"
    ip -n "$(ns pub)" link set "$2" master br0 up
    ip -n "$1" addr add "$3/24" dev eth0
    ip -n "$1" link set eth0 up
}

build() {
    local fw=$1 bin=$2 i n r d
    mkdir -p "$STATE_DIR"
    : >"$STATE_DIR/namespaces"

    add_ns "$(ns pub)"
    ip -n "$(ns pub)" link add br0 type bridge
    ip -n "$(ns pub)" link set br0 up

    add_ns "$(ns dht)"
    add_public_veth "$(ns dht)" v-dht "$PUB_ADDR_DHT"
    add_ns "$(ns pubhost)"
    add_public_veth "$(ns pubhost)" v-pubhost "$PUB_ADDR_PUBHOST"

    for i in "${!DELAYS[@]}"; do
        n=$((i + 1))
        d=${DELAYS[$i]}
        [[ $d =~ ^[0-9]+$ ]] || die "CB_DELAYS: '$d' is not a whole number of ms"
        add_ns "$(ns "r$n")"
        # The delay line is the relay's only link: all its traffic takes the delay.
        start_delayline "$n" "$d" "$bin"
        ip -n "$(ns pub)" link set "tap-r$n" master br0 up
        ip -n "$(ns "r$n")" addr add "$(relay_addr "$n")/24" dev eth0
        ip -n "$(ns "r$n")" link set eth0 up
    done

    for n in "${NATS[@]}"; do
        r=$(ns "rtr$n")
        add_ns "$r"
        add_ns "$(ns "nat$n")"
        ip -n "$(ns pub)" link add "v-rtr$n" type veth peer name wan0 netns "$r"
        ip -n "$(ns pub)" link set "v-rtr$n" master br0 up
        ip -n "$r" addr add "$PUB_NET.$((100 + n))/24" dev wan0
        ip -n "$r" link set wan0 up
        ip -n "$r" link add lan0 type veth peer name eth0 netns "$(ns "nat$n")"
        ip -n "$r" addr add "10.77.$n.1/24" dev lan0
        ip -n "$r" link set lan0 up
        ip -n "$(ns "nat$n")" addr add "10.77.$n.2/24" dev eth0
        ip -n "$(ns "nat$n")" link set eth0 up
        ip -n "$(ns "nat$n")" route add default via "10.77.$n.1"
        ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
        nat_rules "$r" "$fw"
    done

    write_state "$fw"
}

write_state() {
    local fw=$1 i n relays="" f=$STATE_DIR/hosts.env
    {
        echo "# written by tests/netbed/netbed.sh up; KEY=VALUE, sourceable by sh"
        echo "CB_PREFIX=$PREFIX"
        echo "CB_FIREWALL=$fw"
        echo "CB_PUB_NS=$(ns pub)"
        echo "CB_PUB_NET=$PUB_NET.0/24"
        echo "CB_DHT_NS=$(ns dht)"
        echo "CB_DHT_ADDR=$PUB_ADDR_DHT"
        echo "CB_PUBHOST_NS=$(ns pubhost)"
        echo "CB_PUBHOST_ADDR=$PUB_ADDR_PUBHOST"
        for i in "${!DELAYS[@]}"; do
            n=$((i + 1))
            relays="$relays r$n"
            echo "CB_R${n}_NS=$(ns "r$n")"
            echo "CB_R${n}_ADDR=$(relay_addr "$n")"
            echo "CB_R${n}_DELAY_MS=${DELAYS[$i]}"
        done
        echo "CB_RELAYS=\"${relays# }\""
        for n in "${NATS[@]}"; do
            echo "CB_NAT${n}_NS=$(ns "nat$n")"
            echo "CB_NAT${n}_ADDR=10.77.$n.2"
            echo "CB_RTR${n}_NS=$(ns "rtr$n")"
            echo "CB_RTR${n}_PUBLIC_ADDR=$PUB_NET.$((100 + n))"
            echo "CB_RTR${n}_INSIDE_ADDR=10.77.$n.1"
        done
        echo "CB_NATS=\"nat1 nat2\""
    } >"$f.tmp"
    mv "$f.tmp" "$f"
}

summary() {
    local f=$STATE_DIR/hosts.env
    # shellcheck disable=SC1090
    . "$f"
    local r nsv addr delay n
    printf 'netbed up (state %s, firewall %s)\n' "$f" "$CB_FIREWALL"
    printf '  %-14s %-15s %s\n' namespace address role
    printf '  %-14s %-15s %s\n' "$CB_PUB_NS" "$CB_PUB_NET" "bridge br0: the public segment"
    printf '  %-14s %-15s %s\n' "$CB_DHT_NS" "$CB_DHT_ADDR" "public: DHT bootstrap"
    printf '  %-14s %-15s %s\n' "$CB_PUBHOST_NS" "$CB_PUBHOST_ADDR" "public: plain host"
    for r in $CB_RELAYS; do
        n=${r#r}
        nsv=CB_R${n}_NS addr=CB_R${n}_ADDR delay=CB_R${n}_DELAY_MS
        printf '  %-14s %-15s %s\n' "${!nsv}" "${!addr}" "public: relay, one-way delay ${!delay} ms (RTT ~$((2 * ${!delay})) ms)"
    done
    for n in 1 2; do
        nsv=CB_RTR${n}_NS addr=CB_RTR${n}_PUBLIC_ADDR
        printf '  %-14s %-15s %s\n' "${!nsv}" "${!addr}" "NAT router $n (inside 10.77.$n.1, MASQUERADE)"
        nsv=CB_NAT${n}_NS addr=CB_NAT${n}_ADDR
        printf '  %-14s %-15s %s\n' "${!nsv}" "${!addr}" "behind NAT router $n"
    done
}

# Healthy = state file present, every recorded namespace exists, every delay line alive.
healthy() {
    [ -f "$STATE_DIR/hosts.env" ] && [ -f "$STATE_DIR/namespaces" ] || return 1
    local n want have
    while read -r n; do
        [ -e "/var/run/netns/$n" ] || return 1
    done <"$STATE_DIR/namespaces"
    want=$(ls "$STATE_DIR"/delayline-*.ready 2>/dev/null | wc -l)
    have=$(delayline_pids | wc -l)
    [ "$want" -gt 0 ] && [ "$want" = "$have" ]
}

cmd_up() {
    require_tools
    if healthy; then
        say "already up"
        summary
        return 0
    fi
    local fw bin
    fw=$(pick_firewall)
    bin=$(find_delayline)
    cmd_down >/dev/null 2>&1 || true # clear any half-built leftovers first
    if [ "${CB_KEEP_ON_FAIL:-0}" != 1 ]; then
        trap 'say "up failed; cleaning up"; cmd_down' EXIT
    fi
    build "$fw" "$bin"
    trap - EXIT
    summary
}

cmd_status() {
    require_tools
    if healthy; then
        summary
        local f
        for f in "$STATE_DIR"/delayline-*.log; do
            printf '  %s: %s\n' "$(basename "$f" .log)" "$(tail -n1 "$f")"
        done
    else
        say "not up (or incomplete): namespaces present: $(bed_namespaces | tr '\n' ' ')"
        return 1
    fi
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    echo "usage: $0 up|down|status   (see the header of this file for the environment)" >&2
    exit 2
    ;;
esac
