#!/usr/bin/env bash
# End-to-end self test of the js-libp2p test peer: relay, listen and dial all
# as js processes on loopback. Prints "N passed, N failed" and exits non-zero
# on any failure. Needs `npm ci` to have been run in this folder.
set -u
dir=$(cd "$(dirname "$0")" && pwd)
peer="$dir/run-peer.sh"
work=$(mktemp -d)
pids=()
passed=0
failed=0

cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ok() { echo "ok   - $1"; passed=$((passed + 1)); }
bad() { echo "FAIL - $1"; failed=$((failed + 1)); }

# start NAME ARGS... : run the peer in the background, stdout to $work/NAME.out
start() {
  local name=$1; shift
  "$peer" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
}

# wait_line NAME REGEX [SECS] : wait until NAME's stdout has a matching line
wait_line() {
  local i
  for ((i = 0; i < ${3:-20} * 10; i++)); do
    grep -qE "$2" "$work/$1.out" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "  timed out waiting for /$2/ in $1; stdout:"; sed 's/^/    /' "$work/$1.out"
  echo "  stderr tail:"; tail -5 "$work/$1.err" | sed 's/^/    /'
  return 1
}

field() { grep -E "$2" "$work/$1.out" | head -1 | cut -d' ' -f2; }

# dial_expect NAME WANT_RC WANT_REGEX ARGS... : run a dialer to completion
dial_expect() {
  local name=$1 want_rc=$2 want=$3; shift 3
  timeout 90 "$peer" dial "$@" >"$work/$name.out" 2>"$work/$name.err"
  local rc=$?
  if [ "$rc" = "$want_rc" ] && grep -qE "$want" "$work/$name.out"; then
    ok "$name (rc=$rc)"
  else
    bad "$name: rc=$rc (want $want_rc), stdout:"; sed 's/^/    /' "$work/$name.out"
    tail -5 "$work/$name.err" | sed 's/^/    /'
  fi
}

MIB=1048576

# --- unlimited relay on TCP and WS ----------------------------------------
start relay relay --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/tcp/0/ws
if wait_line relay '^READY$'; then ok "relay READY"; else bad "relay READY"; fi
relay_tcp=$(grep -E '^LISTEN /ip4/127.0.0.1/tcp/[0-9]+/p2p/' "$work/relay.out" | cut -d' ' -f2)
relay_ws=$(grep -E '^LISTEN /ip4/127.0.0.1/tcp/[0-9]+/ws/p2p/' "$work/relay.out" | cut -d' ' -f2)
[ -n "$relay_tcp" ] && [ -n "$relay_ws" ] && ok "relay LISTEN tcp+ws" || bad "relay LISTEN tcp+ws"

# listener over TCP
start lt listen --relay "$relay_tcp"
if wait_line lt '^RESERVED '; then ok "listen (tcp) RESERVED"; else bad "listen (tcp) RESERVED"; fi
circ_tcp=$(field lt '^RESERVED ')
lt_id=$(field lt '^PEER ')
[ "$circ_tcp" = "$relay_tcp/p2p-circuit/p2p/$lt_id" ] && ok "RESERVED addr shape" || bad "RESERVED addr shape: $circ_tcp"

dial_expect dial-tcp-1mib 0 "^ECHO OK $MIB\$" "$circ_tcp" --bytes $MIB
grep -qE "^CONNECTED $lt_id\$" "$work/dial-tcp-1mib.out" && ok "CONNECTED names listener" || bad "CONNECTED names listener"
[ "$(grep -c '^PING [0-9.]*$' "$work/dial-tcp-1mib.out")" = 3 ] && ok "3 PING lines" || bad "3 PING lines"
if wait_line lt "^PIPE $MIB\$" 5 && grep -q '^INBOUND ' "$work/lt.out"; then ok "listener INBOUND + PIPE $MIB"; else bad "listener INBOUND + PIPE"; fi

# listener over WS, dialer reaches the relay over TCP
start lw listen --relay "$relay_ws"
if wait_line lw '^RESERVED '; then ok "listen (ws) RESERVED"; else bad "listen (ws) RESERVED"; fi
lw_id=$(field lw '^PEER ')
dial_expect dial-ws-listener-1mib 0 "^ECHO OK $MIB\$" "$relay_tcp/p2p-circuit/p2p/$lw_id" --bytes $MIB --pings 2
dial_expect dial-via-ws-relay 0 "^ECHO OK 1000\$" "$(field lw '^RESERVED ')" --bytes 1000 --pings 1

# error paths
dial_expect dial-no-reservation 1 '^ERROR .*NO_RESERVATION' \
  "$relay_tcp/p2p-circuit/p2p/12D3KooWD9jDfCXyzCTqz3HG7FxrTQsWU2AeJN9iuxmvGx41gX4h"
dial_expect dial-direct-relay-no-pipe 1 '^ERROR ' "$relay_tcp" --pings 1 --bytes 10

# --- limited relay ----------------------------------------------------------
start lrelay relay --listen /ip4/127.0.0.1/tcp/0 --max-circuit-bytes 300000 --max-circuit-secs 30 --max-reservations 1
wait_line lrelay '^READY$' || bad "limited relay READY"
lrelay_addr=$(field lrelay '^LISTEN ')
start ll listen --relay "$lrelay_addr"
if wait_line ll '^RESERVED '; then ok "listen on limited relay"; else bad "listen on limited relay"; fi
dial_expect dial-limited-small 0 '^ECHO OK 65536$' "$(field ll '^RESERVED ')"
dial_expect dial-limited-over 1 '^ERROR ' "$(field ll '^RESERVED ')" --bytes $MIB
# second reservation refused (--max-reservations 1): listener exits 1 with ERROR
timeout 30 "$peer" listen --relay "$lrelay_addr" >"$work/ll2.out" 2>"$work/ll2.err"
rc=$?
if [ $rc = 1 ] && grep -q '^ERROR .*RESERVATION_REFUSED' "$work/ll2.out"; then ok "max-reservations enforced"; else bad "max-reservations enforced (rc=$rc)"; fi

# --- whole-run timeout ------------------------------------------------------
# A TCP server that accepts and never answers; the dialer must give up with
# exit 2. The 60 s bound is shortened through the test-only env override.
python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
conns = []
end = time.time() + 20
s.settimeout(1)
while time.time() < end:
    try: conns.append(s.accept()[0])
    except socket.timeout: pass
' >"$work/silent.out" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/silent.out" ] && break; sleep 0.1; done
silent_port=$(head -1 "$work/silent.out")
JS_PEER_DIAL_TIMEOUT_MS=3000 dial_expect dial-timeout 2 '^ERROR timeout$' \
  "/ip4/127.0.0.1/tcp/$silent_port/p2p/12D3KooWD9jDfCXyzCTqz3HG7FxrTQsWU2AeJN9iuxmvGx41gX4h"

# --- SIGTERM ends relay/listen with exit 0 ---------------------------------
kill -TERM "${pids[1]}"
wait "${pids[1]}"
rc=$?
[ $rc = 0 ] && ok "listen exits 0 on SIGTERM" || bad "listen exit on SIGTERM rc=$rc"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
