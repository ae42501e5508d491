#!/usr/bin/env bash
# Idle tunnels with sluice's keep-alive pings on and off (issue 17): the RSS
# per tunnel and the CPU sluice spends on N idle ws tunnels held HOLD
# seconds, once with ping_interval = "0s" (off) and once with a short
# PING_INTERVAL, each on a fresh sluice. The client (wsbench idle, HOLD)
# answers every Ping, as a live peer does. Prints one line per run and the
# CPU seconds per 10,000 tunnels per ping interval (on minus off).
#
#   bench/pings.sh                       # N=9000 HOLD=20 PING_INTERVAL=2s, ~2 minutes
#   N=2000 HOLD=10 bench/pings.sh        # quicker
#   BIN=/tmp/sluice-base OFF_ONLY=1 bench/pings.sh
#                                        # another binary (one without pings:
#                                        # one run, config without ping keys)
#
# Same setup as bench/compare.sh's idle scenario: sluice on CPU 0 with
# bench/conf/sluice.toml, wsbench echo and the client on CPU 1, plain ws.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-9000}
HOLD=${HOLD:-20}
PING_INTERVAL=${PING_INTERVAL:-2s}
OFF_ONLY=${OFF_ONLY:-0}
ulimit -n "$(ulimit -Hn)" 2>/dev/null
tmp=$(mktemp -d /tmp/sluice-pings.XXXXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin sluice --example wsbench || exit 1
  BIN=$ROOT/target/release/sluice
fi
WSB=${WSB:-$ROOT/target/release/examples/wsbench}
cp "$BIN" "$tmp/sluice"; cp "$WSB" "$tmp/wsbench"
ECHO=127.0.0.1:19401; WS=127.0.0.1:19411

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

taskset -c 1 "$tmp/wsbench" echo $ECHO >>"$tmp/echo.log" 2>&1 & PIDS+=($!)
wait_port $ECHO || { echo "echo backend did not start" >&2; exit 1; }

run() { # LABEL PING_INTERVAL
  # TLS is not used here: the [tls] table and listen are dropped.
  sed -e "s|@ECHO@|$ECHO|g" -e "s|@WS@|$WS|g" -e '/^listen = /d' -e '/^\[tls\]/,/^key = /d' \
      bench/conf/sluice.toml > "$tmp/$1.toml"
  [ -n "$2" ] && printf '\n[websocket]\nping_interval = "%s"\n' "$2" >> "$tmp/$1.toml"
  RUST_LOG=warn taskset -c 0 "$tmp/sluice" run -c "$tmp/$1.toml" >>"$tmp/$1.log" 2>&1 & local p=$!
  PIDS+=($p)
  wait_port $WS || { echo "sluice did not start: $(cat "$tmp/$1.log")" >&2; exit 1; }
  sleep 1
  local line
  line=$(taskset -c 1 "$tmp/wsbench" idle "ws://$WS" "$N" "$p" "$HOLD")
  echo "$1 ping_interval=${2:-default} $line"
  kill "$p"; wait "$p" 2>/dev/null
  [ -s "$tmp/$1.log" ] && echo "  $1 logged: $(head -c 300 "$tmp/$1.log")"
  sleep 1
}

if [ "$OFF_ONLY" = 1 ]; then run base ""; exit 0; fi
off=$(run off 0s); echo "$off"
on=$(run on "$PING_INTERVAL"); echo "$on"
python3 - "$off" "$on" "$N" "$HOLD" "$PING_INTERVAL" <<'PY'
import sys
def kv(line):
    return dict(p.split("=", 1) for p in line.split() if "=" in p)
off, on = kv(sys.argv[1]), kv(sys.argv[2])
n, hold = int(sys.argv[3]), float(sys.argv[4])
interval = float(sys.argv[5].rstrip("s"))
extra_s = (float(on["cpu_ms_hold"]) - float(off["cpu_ms_hold"])) / 1000
per = extra_s / (hold / interval) * 10000 / n
print(f"RSS KiB/tunnel: off {off['kib_per_tunnel']} on {on['kib_per_tunnel']} (after the hold: off {off['kib_per_tunnel_after_hold']} on {on['kib_per_tunnel_after_hold']})")
print(f"CPU over {hold:.0f} s idle: off {off['cpu_ms_hold']} ms, on {on['cpu_ms_hold']} ms ({on['pings_answered']} pings answered)")
print(f"CPU seconds per 10,000 tunnels per ping interval: {per:.3f} ({1e6 * extra_s / max(1, int(on['pings_answered'])):.1f} us per ping, both sides)")
print(f"still echoing: off {off['still_echoing']}/{n}, on {on['still_echoing']}/{n}")
PY
