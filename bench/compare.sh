#!/usr/bin/env bash
# sluice against nginx, HAProxy and Caddy, side by side, in one run (issue 6).
#
# Every target proxies WebSocket (ws and wss) to the same wsbench echo
# backend; "direct" is the client straight to that backend (its CPU and RSS
# figures are the echo server's own: the floor). Each proxy is pinned to
# CPU 0, the load generator and the backend to CPU 1. Rounds are interleaved
# (every scenario runs against every target in each round, in a rotating
# order) and medians are reported in one markdown table, with each figure's
# ratio to direct and sluice's ratio to each peer. See bench/README.md.
#
#   bench/compare.sh                 # full run: 3 rounds, ~20 minutes
#   QUICK=1 bench/compare.sh         # smoke test: 1 round, short runs (~3 min)
#
# Knobs (environment): ROUNDS ECHO_SECS SAT_SECS BULK_SECS HS_SECS IDLE_N
# RATE CONNS HS_CONC TARGETS SCENARIOS HS_RESUME=1 MAX_MINUTES OUT SKIP_BUILD=1
# BASE_BIN (a second sluice binary, run as target "base")
# SKIP_INSTALL=1 SLUICE_TCP_CONGESTION (e.g. bbr: sets sluice's
# server.tcp_congestion for all its sockets; unset = sluice's default, the
# system's algorithm but cubic on loopback when that is bbr).
# The run never exceeds MAX_MINUTES by more than one
# scenario: rounds that would not fit are skipped, and every client run has
# a timeout. Everything started here is stopped on exit (trap).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  ROUNDS=${ROUNDS:-1}; ECHO_SECS=${ECHO_SECS:-2}; SAT_SECS=${SAT_SECS:-2}
  BULK_SECS=${BULK_SECS:-2}; HS_SECS=${HS_SECS:-2}; IDLE_N=${IDLE_N:-1000}
fi
ROUNDS=${ROUNDS:-3}          # interleaved rounds (medians over these)
ECHO_SECS=${ECHO_SECS:-8}    # echo at a fixed offered rate
SAT_SECS=${SAT_SECS:-5}      # echo closed loop (saturation)
BULK_SECS=${BULK_SECS:-5}    # 4 tunnels x 1 MiB messages
HS_SECS=${HS_SECS:-5}        # handshakes
IDLE_N=${IDLE_N:-9000}       # idle tunnels held open
RATE=${RATE:-30000}          # fixed offered rate, messages/s in total
CONNS=${CONNS:-50}           # echo tunnels
HS_CONC=${HS_CONC:-50}       # handshake concurrency
HS_RESUME=${HS_RESUME:-0}    # 1: also a wss handshake run with session resumption
MAX_MINUTES=${MAX_MINUTES:-30}
TARGETS=${TARGETS:-"direct sluice nginx haproxy caddy"}
SCENARIOS=${SCENARIOS:-"echo_ws echo_wss sat_ws sat_wss bulk_ws bulk_wss hs_ws hs_wss idle_ws idle_wss"}
[ "$HS_RESUME" = 1 ] && SCENARIOS="$SCENARIOS hs_wss_resumed"
OUT=${OUT:-$ROOT/target/bench-compare}
SLUICE_TCP_CONGESTION=${SLUICE_TCP_CONGESTION:-}

log() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

# ---------------------------------------------------------------- install
# nginx, haproxy and caddy from Debian's packages, never left running as
# services: policy-rc.d (if none exists) stops the packages from starting
# them, and anything a service manager started anyway is stopped and
# disabled. We run each proxy ourselves, in the foreground, with our config.
NOTES=()
install_peers() {
  local want=() p
  for p in nginx haproxy caddy; do
    case " $TARGETS " in *" $p "*) command -v "$p" >/dev/null || want+=("$p") ;; esac
  done
  [ ${#want[@]} = 0 ] && return 0
  log "installing from Debian's packages: ${want[*]}"
  $SUDO apt-get update -qq >&2 || true
  local have=()
  for p in "${want[@]}"; do
    if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then have+=("$p")
    else NOTES+=("$p: not in this machine's Debian repositories; skipped"); fi
  done
  [ ${#have[@]} = 0 ] && return 0
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${have[@]}" >&2 \
    || NOTES+=("apt-get install ${have[*]} failed")
  [ $made_policy = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
  for p in "${have[@]}"; do
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      $SUDO systemctl disable --now "$p" >/dev/null 2>&1 || true
    elif command -v service >/dev/null; then
      $SUDO service "$p" stop >/dev/null 2>&1 || true
    fi
  done
}
[ "${SKIP_INSTALL:-0}" = 1 ] || install_peers
for p in nginx haproxy caddy; do
  case " $TARGETS " in *" $p "*)
    if ! command -v "$p" >/dev/null; then
      TARGETS=$(echo " $TARGETS " | sed "s/ $p / /"); NOTES+=("$p: not installed; skipped")
    elif pgrep -x "$p" >/dev/null; then
      NOTES+=("$p: a $p process not started by this script is running (a service?); the figures of ours are unaffected, but check for port clashes")
    fi ;;
  esac
done
TARGETS=$(echo $TARGETS)

# ---------------------------------------------------------------- build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release (sluice, wsbench)"
  cargo build --release -q --bin sluice --example wsbench || { echo "build failed" >&2; exit 1; }
fi
tmp=$(mktemp -d /tmp/sluice-compare.XXXXXX)
mkdir -p "$OUT/logs"; rm -f "$OUT"/logs/* "$OUT/raw.txt"
RAW=$OUT/raw.txt; : > "$RAW"
# Private copies: a rebuild by someone else mid-run must not change what runs.
cp target/release/sluice "$tmp/sluice"; cp target/release/examples/wsbench "$tmp/wsbench"
BIN=$tmp/sluice; WSB=$tmp/wsbench
# BASE_BIN=path: a second sluice binary (e.g. main before a change) run as
# target "base" beside "sluice", with the same config, for side-by-side
# figures in one run.
if [ -n "${BASE_BIN:-}" ]; then
  cp "$BASE_BIN" "$tmp/sluice-base"
  case " $TARGETS " in *" base "*) ;; *) TARGETS="$TARGETS base" ;; esac
fi
REV="$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty src')"

declare -A PID     # target -> main pid we started
ALL_PIDS=()        # every pid we started (for the trap)
cleanup() {
  local p
  for p in "${ALL_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${ALL_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null; done
  cp "$tmp"/*.log "$OUT/logs/" 2>/dev/null
  cp "$tmp/nginx/error.log" "$OUT/logs/nginx-error.log" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Open files: 9000 idle tunnels are 18000 descriptors in a proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $((IDLE_N * 2 + 500)) -gt "$NOFILE" ]; then
  IDLE_N=$(((NOFILE - 500) / 2)); NOTES+=("open-file limit $NOFILE: idle scenario reduced to $IDLE_N tunnels")
fi

# ---------------------------------------------------------------- setup
# One self-signed ECDSA P-256 certificate for every TLS listener (and the
# client's root store). CA:FALSE, because webpki refuses a CA certificate as
# an end-entity certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=serverAuth" -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
cat "$tmp/cert.pem" "$tmp/key.pem" > "$tmp/haproxy.pem"
CA=(--ca "$tmp/cert.pem")

ECHO=127.0.0.1:19301; ECHO_TLS=127.0.0.1:19302
declare -A WS=([direct]=$ECHO [base]=127.0.0.1:19351 [sluice]=127.0.0.1:19311 [nginx]=127.0.0.1:19321 [haproxy]=127.0.0.1:19331 [caddy]=127.0.0.1:19341)
declare -A WSS=([direct]=$ECHO_TLS [base]=127.0.0.1:19352 [sluice]=127.0.0.1:19312 [nginx]=127.0.0.1:19322 [haproxy]=127.0.0.1:19332 [caddy]=127.0.0.1:19342)

wait_port() { # ADDR [PID]: until ADDR accepts (10 s at most, or PID exits)
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
    sleep 0.1
  done
  return 1
}

render() { # TEMPLATE TARGET > file
  sed -e "s|@TMP@|$tmp|g" -e "s|@ECHO@|$ECHO|g" -e "s|@WS@|${WS[$2]}|g" -e "s|@WSS@|${WSS[$2]}|g" \
      -e "s|@CERT@|$tmp/cert.pem|g" -e "s|@KEY@|$tmp/key.pem|g" -e "s|@PEM@|$tmp/haproxy.pem|g" "$1"
}

start() { # TARGET
  local t=$1 p
  case $t in
    echo)
      taskset -c 1 "$WSB" echo $ECHO >>"$tmp/echo.log" 2>&1 & PID[echo]=$!
      taskset -c 1 "$WSB" echo $ECHO_TLS --cert "$tmp/cert.pem" --key "$tmp/key.pem" >>"$tmp/echo.log" 2>&1 & PID[echo_tls]=$!
      ALL_PIDS+=("${PID[echo]}" "${PID[echo_tls]}")
      wait_port $ECHO && wait_port $ECHO_TLS || { echo "echo backend did not start" >&2; exit 1; }
      return ;;
    direct) return ;;
    sluice|base)
      render bench/conf/sluice.toml "$t" > "$tmp/$t.toml"
      if [ -n "$SLUICE_TCP_CONGESTION" ]; then
        sed -i "s|^\[tls\]|tcp_congestion = \"$SLUICE_TCP_CONGESTION\"\n\n[tls]|" "$tmp/$t.toml"
      fi
      local bin=$BIN; [ "$t" = base ] && bin=$tmp/sluice-base
      RUST_LOG=warn taskset -c 0 "$bin" run -c "$tmp/$t.toml" >>"$tmp/$t.log" 2>&1 & p=$! ;;
    nginx)
      mkdir -p "$tmp/nginx"; render bench/conf/nginx.conf nginx > "$tmp/nginx.conf"
      taskset -c 0 nginx -p "$tmp/nginx" -c "$tmp/nginx.conf" -e "$tmp/nginx/error.log" >>"$tmp/nginx.log" 2>&1 & p=$! ;;
    haproxy)
      render bench/conf/haproxy.cfg haproxy > "$tmp/haproxy.cfg"
      taskset -c 0 haproxy -db -f "$tmp/haproxy.cfg" >>"$tmp/haproxy.log" 2>&1 & p=$! ;;
    caddy)
      mkdir -p "$tmp/caddy"; render bench/conf/Caddyfile caddy > "$tmp/Caddyfile"
      XDG_DATA_HOME=$tmp/caddy XDG_CONFIG_HOME=$tmp/caddy GOMAXPROCS=1 \
        taskset -c 0 caddy run --adapter caddyfile --config "$tmp/Caddyfile" >>"$tmp/caddy.log" 2>&1 & p=$! ;;
  esac
  PID[$t]=$p; ALL_PIDS+=("$p")
  if ! wait_port "${WS[$t]}" "$p" || ! wait_port "${WSS[$t]}" "$p"; then
    log "$t did not start; see $OUT/logs/$t.log"; return 1
  fi
  # nginx's worker is a child of the pid we hold: track it for the trap too.
  if [ "$t" = nginx ]; then ALL_PIDS+=($(pgrep -P "$p")); fi
}

stop() { # TARGET
  local t=$1 p=${PID[$1]:-} i
  [ -z "$p" ] && return
  local kids; kids=$(pgrep -P "$p" 2>/dev/null)
  kill "$p" 2>/dev/null
  for i in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" $kids 2>/dev/null
  wait "$p" 2>/dev/null
  unset "PID[$t]"
}

pids_of() { # TARGET TLS(0/1): the processes whose CPU/RSS is measured
  case $1 in
    direct) [ "$2" = 1 ] && echo "${PID[echo_tls]}" || echo "${PID[echo]}" ;;
    nginx) echo "${PID[nginx]}$(pgrep -P "${PID[nginx]}" | sed 's/^/,/' | tr -d '\n')" ;;
    *) echo "${PID[$1]}" ;;
  esac
}

alive() { # TARGET
  case $1 in
    direct) kill -0 "${PID[echo]}" 2>/dev/null && kill -0 "${PID[echo_tls]}" 2>/dev/null ;;
    *) [ -n "${PID[$1]:-}" ] && kill -0 "${PID[$1]}" 2>/dev/null ;;
  esac
}

start echo
for t in $TARGETS; do start "$t" || NOTES+=("$t failed to start")
done
sleep 1

# ---------------------------------------------------------------- runs
measure() { # ROUND SCENARIO TARGET
  local r=$1 s=$2 t=$3 tls=0 url addr secs line rc cmd=()
  case $s in *wss*) tls=1 ;; esac
  if [ $tls = 1 ]; then url=wss://${WSS[$t]}; else url=ws://${WS[$t]}; fi
  case $s in
    idle_*)
      # A fresh process for every memory measurement: what earlier scenarios
      # left in the allocator must not hide (or inflate) the cost of a tunnel.
      if [ "$t" = direct ]; then kill "${PID[echo]}" "${PID[echo_tls]}" 2>/dev/null
        wait "${PID[echo]}" "${PID[echo_tls]}" 2>/dev/null; start echo
      else stop "$t"; start "$t" || true; fi
      sleep 1 ;;
  esac
  if ! alive "$t"; then
    log "$t is not running: restarting it"; echo "$r $s $t DOWN" >>"$RAW"
    NOTES+=("round $r $s: $t was found dead before the run (restarted)")
    if [ "$t" = direct ]; then start echo; else stop "$t"; start "$t" || return; fi
    sleep 1
  fi
  local pids; pids=$(pids_of "$t" $tls)
  case $s in
    echo_*) secs=$ECHO_SECS; cmd=(load "$url" "$CONNS" 64 "$ECHO_SECS" "$pids" "$RATE") ;;
    sat_*) secs=$SAT_SECS; cmd=(load "$url" "$CONNS" 64 "$SAT_SECS" "$pids") ;;
    bulk_*) secs=$BULK_SECS; cmd=(load "$url" 4 1048576 "$BULK_SECS" "$pids") ;;
    hs_wss_resumed) secs=$HS_SECS; cmd=(handshakes "$url" "$HS_CONC" "$HS_SECS" "$pids" --resume) ;;
    hs_*) secs=$HS_SECS; cmd=(handshakes "$url" "$HS_CONC" "$HS_SECS" "$pids") ;;
    idle_*) secs=30; cmd=(idle "$url" "$IDLE_N" "$pids") ;;
  esac
  [ $tls = 1 ] && cmd+=("${CA[@]}")
  line=$(timeout -k 5 $((secs + 120)) taskset -c 1 "$WSB" "${cmd[@]}" 2>>"$tmp/client.log"); rc=$?
  [ $rc = 0 ] && [ -n "$line" ] || line="FAILED rc=$rc $line"
  log "round $r $s $t: $line"
  echo "$r $s $t $line" >>"$RAW"
  alive "$t" || { echo "$r $s $t DIED" >>"$RAW"; NOTES+=("round $r $s: $t died during the run"); }
  sleep 0.5
}

round_secs=0
for r in $(seq 1 "$ROUNDS"); do
  elapsed=$(($(date +%s) - T0))
  if [ "$r" -gt 1 ] && [ $((elapsed + round_secs)) -gt $((MAX_MINUTES * 60)) ]; then
    NOTES+=("stopped after $((r - 1)) round(s): another would pass MAX_MINUTES=$MAX_MINUTES")
    break
  fi
  rs=$(date +%s)
  # Rotate the order of the targets each round.
  read -ra tl <<<"$TARGETS"; n=${#tl[@]}; k=$(((r - 1) % n))
  order=("${tl[@]:k}" "${tl[@]:0:k}")
  for s in $SCENARIOS; do
    for t in "${order[@]}"; do measure "$r" "$s" "$t"; done
  done
  round_secs=$(($(date +%s) - rs))
done
ROUNDS_DONE=$(cut -d' ' -f1 "$RAW" | sort -u | wc -l)

# Anything sluice logged at warn or above (it runs with RUST_LOG=warn).
SLUICE_WARN=$(grep -c . "$tmp/sluice.log" 2>/dev/null || echo 0)
[ "$SLUICE_WARN" -gt 0 ] 2>/dev/null && NOTES+=("sluice logged $SLUICE_WARN warning/error lines; first: $(head -c 300 "$tmp/sluice.log" | head -1)")

# ---------------------------------------------------------------- table
ELAPSED=$(($(date +%s) - T0))
NOTES_TXT=$(printf '%s\n' "${NOTES[@]:-}")
python3 - "$RAW" "$TARGETS" "$IDLE_N" "$RATE" "$CONNS" "$HS_CONC" <<'PY' > "$OUT/table.md"
import sys, statistics, re
raw, targets, idle_n, rate, conns, hsc = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
peers = [t for t in targets if t not in ("direct", "sluice")]
runs = {}   # (scenario, target) -> list of dicts
bad = []
for line in open(raw):
    parts = line.split(None, 3)
    if len(parts) < 4:
        if len(parts) == 3: bad.append(line.strip())
        continue
    r, s, t, rest = parts
    if rest.startswith("FAILED"):
        bad.append(line.strip()); continue
    kv = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', rest))
    runs.setdefault((s, t), []).append(kv)
    for k in ("broken", "errors"):
        if kv.get(k, "0") not in ("0",):
            bad.append(f"round {r} {s} {t}: {k}={kv[k]}" + (f" first_error={kv['first_error']}" if "first_error" in kv else ""))
    if s.startswith("idle") and int(kv.get("still_echoing", 0)) != int(kv.get("tunnels", 0)):
        bad.append(f"round {r} {s} {t}: only {kv.get('still_echoing')} of {kv.get('tunnels')} tunnels still echo (opened {kv.get('opened')})" + (f" first_error={kv['first_error']}" if "first_error" in kv else ""))

def med(s, t, k, agg="median"):
    v = [float(d[k]) for d in runs.get((s, t), []) if k in d]
    if not v: return None
    return min(v) if agg == "min" else statistics.median(v)

# (label, scenario, key, better, target rule, aggregate)
R = f"@{int(rate)//1000}k/s"
rows = [
  (f"echo ws {R}: proxy CPU us/round trip", "echo_ws", "cpu_us_per_msg", "low", "cpu067", "median"),
  (f"echo ws {R}: p50 us", "echo_ws", "p50_us", "low", None, "median"),
  (f"echo ws {R}: p99 us", "echo_ws", "p99_us", "low", "best", "median"),
  (f"echo ws {R}: p999 us", "echo_ws", "p999_us", "low", None, "median"),
  (f"echo wss {R}: proxy CPU us/round trip", "echo_wss", "cpu_us_per_msg", "low", "cpu067", "median"),
  (f"echo wss {R}: p50 us", "echo_wss", "p50_us", "low", None, "median"),
  (f"echo wss {R}: p99 us", "echo_wss", "p99_us", "low", "best", "median"),
  (f"echo wss {R}: p999 us", "echo_wss", "p999_us", "low", None, "median"),
  ("echo ws saturated: msgs/s", "sat_ws", "msgs_per_s", "high", None, "median"),
  ("echo ws saturated: p99 us", "sat_ws", "p99_us", "low", None, "median"),
  ("echo ws saturated: proxy CPU us/msg", "sat_ws", "cpu_us_per_msg", "low", None, "median"),
  ("echo wss saturated: msgs/s", "sat_wss", "msgs_per_s", "high", None, "median"),
  ("echo wss saturated: p99 us", "sat_wss", "p99_us", "low", None, "median"),
  ("echo wss saturated: proxy CPU us/msg", "sat_wss", "cpu_us_per_msg", "low", None, "median"),
  ("bulk ws 4x1MiB: MB/s", "bulk_ws", "mb_per_s", "high", "bulk08", "median"),
  ("bulk ws: proxy CPU ms/MiB", "bulk_ws", "cpu_ms_per_mib", "low", None, "median"),
  ("bulk wss 4x1MiB: MB/s", "bulk_wss", "mb_per_s", "high", None, "median"),
  ("bulk wss: proxy CPU ms/MiB", "bulk_wss", "cpu_ms_per_mib", "low", None, "median"),
  (f"handshakes ws (conc {hsc}): per s", "hs_ws", "handshakes_per_s", "high", None, "median"),
  ("handshakes ws: proxy CPU us each", "hs_ws", "cpu_us_per_handshake", "low", None, "median"),
  (f"handshakes wss full (conc {hsc}): per s", "hs_wss", "handshakes_per_s", "high", "best", "median"),
  ("handshakes wss full: proxy CPU us each", "hs_wss", "cpu_us_per_handshake", "low", "cpu067", "median"),
  ("handshakes wss resumed: per s", "hs_wss_resumed", "handshakes_per_s", "high", None, "median"),
  ("handshakes wss resumed: proxy CPU us each", "hs_wss_resumed", "cpu_us_per_handshake", "low", None, "median"),
  (f"idle ws x{idle_n}: proxy RSS KiB/tunnel", "idle_ws", "kib_per_tunnel", "low", "best", "median"),
  (f"idle ws: tunnels still echoing (min)", "idle_ws", "still_echoing", "high", "all", "min"),
  (f"idle wss x{idle_n}: proxy RSS KiB/tunnel", "idle_wss", "kib_per_tunnel", "low", "best", "median"),
  (f"idle wss: tunnels still echoing (min)", "idle_wss", "still_echoing", "high", "all", "min"),
]
def fmt(v):
    if v is None: return "–"
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}"
def ratio(a, b):
    return f"{a/b:.2f}" if a is not None and b not in (None, 0) else "–"
hdr = ["figure (median)"] + targets + [f"sluice/{p}" for p in ["direct"] + peers] + ["target", "met"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for label, s, k, better, rule, agg in rows:
    vals = {t: med(s, t, k, agg) for t in targets}
    if all(v is None for v in vals.values()): continue
    d = vals.get("direct")
    cells = []
    for t in targets:
        v = vals[t]
        c = fmt(v)
        if t != "direct" and v is not None and d:
            c += f" ({v/d:.2f}×d)"
        cells.append(c)
    sv = vals.get("sluice")
    ratios = [ratio(sv, vals.get(p)) for p in ["direct"] + peers]
    pv = [vals[p] for p in peers if vals.get(p) is not None]
    best = (min(pv) if better == "low" else max(pv)) if pv else None
    tgt, met = "", ""
    if rule and sv is not None:
        if rule == "cpu067" and best is not None:
            tgt, ok = f"≤ {0.67*best:.3g} (0.67×best peer)", sv <= 0.67 * best
        elif rule == "best" and best is not None:
            tgt, ok = (f"≤ {best:.4g} (best peer)" if better == "low" else f"≥ {best:.4g} (best peer)"), (sv <= best if better == "low" else sv >= best)
        elif rule == "bulk08" and d:
            tgt, ok = f"≥ {0.8*d:.4g} (0.8×direct)", sv >= 0.8 * d
        elif rule == "all":
            tgt, ok = f"= {idle_n}", sv >= idle_n
        else:
            ok = None
        if tgt: met = "yes" if ok else "**NO**"
    print("| " + " | ".join([label] + cells + ratios + [tgt, met]) + " |")
print()
print("Cells: median over rounds (idle 'still echoing': the minimum); (x×d) = ratio to direct. sluice/X = sluice's figure divided by X's.")
print("direct's CPU and RSS figures are the echo backend's own (wsbench echo; TLS by rustls/ring), not a proxy's.")
if bad:
    print("\nProblems seen:")
    for b in bad: print("- " + b)
PY
{
  echo
  echo "sluice $REV · targets: $TARGETS · rounds: $ROUNDS_DONE · echo $CONNS tunnels x 64 B, ${ECHO_SECS}s at $RATE msgs/s and ${SAT_SECS}s closed loop · bulk 4 x 1 MiB ${BULK_SECS}s · handshakes conc $HS_CONC ${HS_SECS}s · idle $IDLE_N tunnels"
  echo "sluice server.tcp_congestion: ${SLUICE_TCP_CONGESTION:-unset (system default $(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null); cubic on loopback sockets if that is bbr)}"
  echo "versions: $(nginx -v 2>&1 | sed 's/.*version: //') · $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3) · caddy $(caddy version 2>/dev/null | cut -d' ' -f1) · wall time ${ELAPSED}s"
  [ -n "$NOTES_TXT" ] && { echo; echo "Notes:"; printf '%s\n' "$NOTES_TXT" | sed 's/^/- /'; }
} >> "$OUT/table.md"
cat "$OUT/table.md"
echo >&2; log "raw results: $RAW; logs: $OUT/logs/; table: $OUT/table.md"
