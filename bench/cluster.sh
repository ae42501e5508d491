#!/usr/bin/env bash
# What [cluster] costs a WebSocket handshake, and what two instances sharing
# one Redis admit (issue 16). Real parts on loopback: Debian's redis-server
# (persistence off), the wsbench echo backend and client, release sluice.
#
# Part 1, cost: one sluice (taskset -c 0, one worker) with and without
# [cluster], alternating, ROUNDS rounds of HS_SECS s of `wsbench handshakes`
# (connect, upgrade, Close, close; HS_CONC at once). Per handshake: sluice
# CPU µs, Redis CPU µs and Redis round trips (EVALSHA calls in INFO
# commandstats: the check, the release on close, the heartbeats) and checks
# (GET calls: each check reads its GCRA state once, nothing else sluice runs
# does), counted against sluice's own sluice_ws_handshakes_total.
#
# Part 2, the two-instance example: two sluice processes on one Redis with
# the default limits (20 handshakes/s, burst 40 per client IP), each hammered
# by one client (same IP) for TWO_SECS s; admitted handshakes in total, with
# and without [cluster].
#
#   bench/cluster.sh            # ~1 minute after the build
#   ROUNDS=1 HS_SECS=2 bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
HS_SECS=${HS_SECS:-5}
HS_CONC=${HS_CONC:-20}
TWO_SECS=${TWO_SECS:-5}
OUT=${OUT:-target/bench-cluster}

command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install -y redis-server" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -q --bin sluice --example wsbench
tmp=$(mktemp -d /tmp/sluice-cluster.XXXXXX)
mkdir -p "$OUT"
cp target/release/sluice "$tmp/sluice"; cp target/release/examples/wsbench "$tmp/wsbench"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  cp "$tmp"/*.log "$OUT/" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_us() { # PID: utime+stime in µs
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)*1000000/hz}' "/proc/$1/stat"
}
stat_calls() { # COMMAND: calls so far
  redis-cli -p "$RP" INFO commandstats | tr -d '\r' |
    awk -F'[=,:]' -v c="cmdstat_$1" '$1==c {print $3; f=1} END {if (!f) print 0}'
}
accepted() { # ADMIN_PORT
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^sluice_ws_handshakes_total\{/ && /outcome="accepted"/ {s+=$2} END {print s+0}'
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

RP=$(free_port)
redis-server --save "" --appendonly no --bind 127.0.0.1 --port "$RP" --dir "$tmp" >"$tmp/redis.log" 2>&1 &
PIDS+=($!); RPID=$!
EP=$(free_port)
"$tmp/wsbench" echo "127.0.0.1:$EP" >"$tmp/echo.log" 2>&1 &
PIDS+=($!)
wait_port "$RP"; wait_port "$EP"

# NAME CLUSTER(0|1) LIMITS: starts sluice, sets SPID, SPORT, SADMIN.
start_sluice() {
  SPORT=$(free_port); SADMIN=$(free_port)
  {
    printf '[server]\nlisten_plain = ["127.0.0.1:%s"]\nadmin = "127.0.0.1:%s"\n' "$SPORT" "$SADMIN"
    printf '[limits]\n%b\n[[route]]\nbackends = ["127.0.0.1:%s"]\n' "$3" "$EP"
    [ "$2" = 1 ] && printf '[cluster]\nredis = "redis://127.0.0.1:%s/0"\n' "$RP"
  } >"$tmp/$1.toml"
  RUST_LOG=warn,sluice::policy::cluster=info taskset -c 0 "$tmp/sluice" run -c "$tmp/$1.toml" >>"$tmp/$1.log" 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  wait_port "$SPORT"; wait_port "$SADMIN"
  if [ "$2" = 1 ]; then
    for _ in $(seq 100); do
      curl -s "http://127.0.0.1:$SADMIN/metrics" | grep -q '^sluice_cluster_redis_up 1' && return
      sleep 0.05
    done
    echo "$1: Redis never up" >&2; exit 1
  fi
}

HIGH='handshakes_per_second = 1000000\nhandshake_burst = 1000000\nmax_connections_per_ip = 100000'
RAW=$OUT/raw.txt; : >"$RAW"
for round in $(seq "$ROUNDS"); do
  for mode in local cluster; do
    c=0; [ $mode = cluster ] && c=1
    start_sluice "$mode" $c "$HIGH"
    acc0=$(accepted "$SADMIN"); ev0=$(stat_calls evalsha); get0=$(stat_calls get); r0=$(cpu_us "$RPID")
    line=$(taskset -c 1 "$tmp/wsbench" handshakes "ws://127.0.0.1:$SPORT" "$HS_CONC" "$HS_SECS" "$SPID")
    sleep 1   # the releases of the last tunnels
    acc=$(( $(accepted "$SADMIN") - acc0 )); ev=$(( $(stat_calls evalsha) - ev0 ))
    get=$(( $(stat_calls get) - get0 )); r=$(awk -v a="$r0" -v b="$(cpu_us "$RPID")" 'BEGIN {print b-a}')
    echo "$round $mode $line accepted=$acc evalsha=$ev checks=$get redis_cpu_us=$r" | tee -a "$RAW"
    kill "$SPID"; wait "$SPID" 2>/dev/null || true
  done
done

# Part 2: the two-instance example, default limits.
for c in 0 1; do
  start_sluice "two-a-$c" $c ''; A=$SPORT; AA=$SADMIN; AP=$SPID
  start_sluice "two-b-$c" $c ''; B=$SPORT; BA=$SADMIN; BP=$SPID
  redis-cli -p "$RP" FLUSHALL >/dev/null   # a fresh bucket for the one client IP
  taskset -c 1 "$tmp/wsbench" handshakes "ws://127.0.0.1:$A" 4 "$TWO_SECS" >/dev/null 2>&1 &
  w1=$!
  taskset -c 1 "$tmp/wsbench" handshakes "ws://127.0.0.1:$B" 4 "$TWO_SECS" >/dev/null 2>&1 &
  w2=$!
  wait $w1 $w2 || true
  echo "two cluster=$c secs=$TWO_SECS admitted_a=$(accepted "$AA") admitted_b=$(accepted "$BA")" | tee -a "$RAW"
  kill "$AP" "$BP"; wait "$AP" "$BP" 2>/dev/null || true
done

python3 - "$RAW" "$HS_SECS" "$TWO_SECS" <<'EOF' | tee "$OUT/table.md"
import sys, statistics as st
raw, hs_secs, two_secs = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {"local": [], "cluster": []}
two = {}
for line in open(raw):
    f = line.split()
    kv = dict(x.split("=", 1) for x in f if "=" in x)
    if f[0] == "two":
        two[kv["cluster"]] = int(kv["admitted_a"]) + int(kv["admitted_b"])
    else:
        runs[f[1]].append(kv)
def med(mode, key):
    return st.median(float(r[key]) for r in runs[mode])
def per(mode, key):
    return st.median(float(r[key]) / max(1, int(r["accepted"])) for r in runs[mode])
print(f"| handshake (ws, {hs_secs} s runs, median of {len(runs['local'])}) | without [cluster] | with [cluster] | ratio |")
print("| --- | --- | --- | --- |")
for label, a, b in [
    ("handshakes per second", med("local", "handshakes_per_s"), med("cluster", "handshakes_per_s")),
    ("sluice CPU µs per handshake", med("local", "cpu_us_per_handshake"), med("cluster", "cpu_us_per_handshake")),
    ("p50 latency µs", med("local", "p50_us"), med("cluster", "p50_us")),
]:
    print(f"| {label} | {a:.0f} | {b:.0f} | {b / a:.2f} |")
print(f"| Redis round trips per handshake | 0 | {per('cluster', 'evalsha'):.2f} | |")
print(f"| of which checks (admit script) | 0 | {per('cluster', 'checks'):.2f} | |")
print(f"| Redis CPU µs per handshake | 0 | {per('cluster', 'redis_cpu_us'):.1f} | |")
if two:
    print()
    print(f"Two instances, default limits (20/s, burst 40), one client IP hammering both for {two_secs} s:"
          f" {two.get('0')} admitted without [cluster], {two.get('1')} with it"
          f" (one shared bucket allows 40 + 20 × {two_secs} = {40 + 20 * int(two_secs)}).")
EOF
