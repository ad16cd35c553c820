#!/usr/bin/env bash
# End-to-end self test of the js-libp2p 0.42 circuit relay v1 test peer: relay,
# listen and dial all as js processes on loopback. Prints "N passed, N failed"
# and exits non-zero on any failure. Needs `npm ci` to have been run here.
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
  for ((i = 0; i < ${3:-30} * 10; i++)); do
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
NOBODY=12D3KooWD9jDfCXyzCTqz3HG7FxrTQsWU2AeJN9iuxmvGx41gX4h

# --- v1 relay on TCP and WS -------------------------------------------------
start relay relay --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/tcp/0/ws
if wait_line relay '^READY$'; then ok "relay READY"; else bad "relay READY"; fi
relay_tcp=$(grep -E '^LISTEN /ip4/127.0.0.1/tcp/[0-9]+/p2p/' "$work/relay.out" | cut -d' ' -f2)
relay_ws=$(grep -E '^LISTEN /ip4/127.0.0.1/tcp/[0-9]+/ws/p2p/' "$work/relay.out" | cut -d' ' -f2)
[ -n "$relay_tcp" ] && [ -n "$relay_ws" ] && ok "relay LISTEN tcp+ws" || bad "relay LISTEN tcp+ws"

# listener connected to the relay over TCP
start lt listen --relay "$relay_tcp"
if wait_line lt '^LISTENING '; then ok "listen (tcp) LISTENING"; else bad "listen (tcp) LISTENING"; fi
circ_tcp=$(field lt '^LISTENING ')
lt_id=$(field lt '^PEER ')
[ "$circ_tcp" = "$relay_tcp/p2p-circuit/p2p/$lt_id" ] && ok "LISTENING addr shape" || bad "LISTENING addr shape: $circ_tcp"

DEBUG='libp2p:upgrader,libp2p:circuit*' timeout 90 "$peer" dial "$circ_tcp" --bytes $MIB >"$work/d1.out" 2>"$work/d1.err"
rc=$?
if [ $rc = 0 ] && grep -qE "^ECHO OK $MIB\$" "$work/d1.out"; then ok "dial-tcp-1mib (rc=0)"; else bad "dial-tcp-1mib rc=$rc"; sed 's/^/    /' "$work/d1.out"; fi
grep -qE "^CONNECTED $lt_id\$" "$work/d1.out" && ok "CONNECTED names listener" || bad "CONNECTED names listener"
[ "$(grep -c '^PING [0-9.]*$' "$work/d1.out")" = 3 ] && ok "3 PING lines" || bad "3 PING lines"
grep -q "starting new stream on \[ '/libp2p/circuit/relay/0.1.0' \]" "$work/d1.err" && grep -q 'write message type HOP' "$work/d1.err" \
  && ok "dial used /libp2p/circuit/relay/0.1.0 HOP" || bad "dial used /libp2p/circuit/relay/0.1.0 HOP"
# two muxer negotiations: dialer->relay and the relayed dialer->listener connection
[ "$(grep -c '/yamux/1.0.0 selected as muxer protocol' "$work/d1.err")" = 2 ] && ok "yamux on both hops" || bad "yamux on both hops"
if wait_line lt "^PIPE $MIB\$" 5 && grep -q '^INBOUND ' "$work/lt.out"; then ok "listener INBOUND + PIPE $MIB"; else bad "listener INBOUND + PIPE"; fi

# listener connected over WS, dialer reaches the relay over TCP, then over WS
start lw listen --relay "$relay_ws"
if wait_line lw '^LISTENING '; then ok "listen (ws) LISTENING"; else bad "listen (ws) LISTENING"; fi
lw_id=$(field lw '^PEER ')
dial_expect dial-ws-listener-1mib 0 "^ECHO OK $MIB\$" "$relay_tcp/p2p-circuit/p2p/$lw_id" --bytes $MIB --pings 2
dial_expect dial-via-ws-relay 0 "^ECHO OK 1000\$" "$(field lw '^LISTENING ')" --bytes 1000 --pings 1
dial_expect dial-zero-bytes 0 '^ECHO OK 0$' "$circ_tcp" --bytes 0 --pings 0

# two dialers at once through the same relay to the same listener
timeout 90 "$peer" dial "$circ_tcp" --bytes 200000 >"$work/c1.out" 2>"$work/c1.err" &
c1=$!
timeout 90 "$peer" dial "$circ_tcp" --bytes 300000 >"$work/c2.out" 2>"$work/c2.err" &
c2=$!
wait $c1; r1=$?; wait $c2; r2=$?
[ $r1 = 0 ] && [ $r2 = 0 ] && grep -q '^ECHO OK 200000$' "$work/c1.out" && grep -q '^ECHO OK 300000$' "$work/c2.out" \
  && ok "two concurrent dials" || bad "two concurrent dials (rc $r1 $r2)"

# error paths: v1 relay without a connection to the target answers HOP_NO_CONN_TO_DST (260)
dial_expect dial-no-conn-to-dst 1 '^ERROR HOP request failed with code "HOP_NO_CONN_TO_DST"' "$relay_tcp/p2p-circuit/p2p/$NOBODY"
dial_expect dial-not-circuit 1 '^ERROR ' "$relay_tcp" --pings 1 --bytes 10

# --- relay hop timeout caps the circuit lifetime ---------------------------
start srelay relay --listen /ip4/127.0.0.1/tcp/0 --hop-timeout-secs 3
wait_line srelay '^READY$' || bad "short-hop relay READY"
start ls listen --relay "$(field srelay '^LISTEN ')"
if wait_line ls '^LISTENING '; then ok "listen on short-hop relay"; else bad "listen on short-hop relay"; fi
dial_expect dial-within-hop-timeout 0 '^ECHO OK 1000$' "$(field ls '^LISTENING ')" --bytes 1000 --pings 1
dial_expect dial-past-hop-timeout 1 '^ERROR ' "$(field ls '^LISTENING ')" --bytes 1000 --pings 1 --wait-secs 5

# --- whole-run timeout ------------------------------------------------------
# A TCP server that accepts and never answers stands in for the relay; the
# dialer must give up with exit 2 (60 s bound shortened via the env override).
python3 -c '
import socket, time
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
  "/ip4/127.0.0.1/tcp/$silent_port/p2p/$NOBODY/p2p-circuit/p2p/$lt_id"

# --- SIGTERM ends relay/listen with exit 0 ---------------------------------
kill -TERM "${pids[1]}"
wait "${pids[1]}"
rc=$?
[ $rc = 0 ] && ok "listen exits 0 on SIGTERM" || bad "listen exit on SIGTERM rc=$rc"
kill -TERM "${pids[0]}"
wait "${pids[0]}"
rc=$?
[ $rc = 0 ] && ok "relay exits 0 on SIGTERM" || bad "relay exit on SIGTERM rc=$rc"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
