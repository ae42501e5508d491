#!/usr/bin/env bash
# Relay benchmark through real sockets, in one run: direct to the echo
# backend, through sluice (frame policy on), and through a plain byte-copy
# proxy (policy off). The proxy under test is pinned to CPU 0; the echo
# backend and the load generator to CPU 1. Rounds are interleaved and the
# median of each is reported, with ratios against the baselines.
#
#   bench/relay.sh [ROUNDS] [SECS] [CONNS] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-5}; CONNS=${3:-50}; SIZE=${4:-64}
cargo build --release -q --bin sluice --example wsbench
BIN=target/release/sluice; WSB=target/release/examples/wsbench
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

ECHO=127.0.0.1:19101; SLUICE=127.0.0.1:19102; COPY=127.0.0.1:19103
taskset -c 1 "$WSB" echo $ECHO & pids+=($!)
taskset -c 0 "$WSB" copy $COPY $ECHO & copy_pid=$!; pids+=($copy_pid)
cat > "$tmp/sluice.toml" <<TOML
[server]
listen_plain = ["$SLUICE"]
[limits]
# The benchmark measures the relay, not the rate limiter.
messages_per_second = 10000000
message_burst = 10000000
handshakes_per_second = 100000
handshake_burst = 100000
[[route]]
backends = ["$ECHO"]
TOML
RUST_LOG=warn taskset -c 0 "$BIN" run -c "$tmp/sluice.toml" & sluice_pid=$!; pids+=($sluice_pid)
sleep 1

declare -A results
for r in $(seq 1 "$ROUNDS"); do
  for target in direct sluice copy; do
    case $target in
      direct) addr=$ECHO; pid=0 ;;
      sluice) addr=$SLUICE; pid=$sluice_pid ;;
      copy) addr=$COPY; pid=$copy_pid ;;
    esac
    line=$(taskset -c 1 "$WSB" load "$addr" "$CONNS" "$SIZE" "$SECS" "$pid")
    echo "round $r $target: $line" >&2
    results[$target]+="$line"$'\n'
  done
done

median() { # field target
  printf '%s' "${results[$2]}" | grep -o "$1=[0-9.]*" | cut -d= -f2 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
printf '\n%d conns x %d-byte messages, %ds x %d rounds (medians)\n\n' "$CONNS" "$SIZE" "$SECS" "$ROUNDS"
printf '| path | msgs/s | MB/s | p50 us | p99 us | proxy CPU us/msg |\n|---|---|---|---|---|---|\n'
for t in direct sluice copy; do
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$(median msgs_per_s $t)" "$(median mb_per_s $t)" \
    "$(median p50_us $t)" "$(median p99_us $t)" "$(median cpu_us_per_msg $t || true)"
done
d=$(median msgs_per_s direct); s=$(median msgs_per_s sluice); c=$(median msgs_per_s copy)
printf '\nsluice/direct = %.3f   sluice/copy = %.3f\n' "$(echo "$s/$d" | bc -l)" "$(echo "$s/$c" | bc -l)"
