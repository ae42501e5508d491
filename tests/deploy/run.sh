#!/usr/bin/env bash
# The deployment test: sluice installed on a real systemd by the README's own
# steps, then run the way an operator runs it.
#
#   tests/deploy/run.sh          as root; scripts/test.sh runs it (and so CI)
#
# systemd is the host's, booted as PID 1 in a throw-away sandbox
# (../shared/tools/systemd-sandbox.sh beside the checkout, or $SLUICE_SANDBOX):
# nothing reaches the host's /etc, and the network inside is loopback only.
# The README's install blocks are the files tests/deploy/{install,tls,socket,
# install-deb}.sh: each block follows a <!-- tests/deploy/NAME.sh --> marker
# in README.md and must equal its file, which is what runs here. Checks:
#   * the manual install (install.sh) gives a running sluice.service, the
#     sluice user, /etc/sluice root:sluice 0750 and the config 0640; a
#     WebSocket echo works through it; its loopback sockets do not pace
#     (cubic) when the system default is bbr;
#   * reload with a good config (tls.sh: a dev certificate and a TLS
#     listener) keeps an open tunnel and serves wss; the certbot hook
#     (certs/certbot-deploy-hook.sh) swaps the certificate the same way;
#   * reload with a broken config fails (systemctl reload exits non-zero,
#     the error is in the journal) and the old config keeps serving;
#   * stop sends Close 1001 to the open tunnel and the unit ends inactive,
#     not failed;
#   * socket activation (socket.sh): sluice takes both sockets from systemd,
#     also after a restart;
#   * in a fresh sandbox, the .deb (install-deb.sh) installs, starts, serves,
#     leaves sluice.socket disabled, and purges cleanly.
# First it builds what it installs: `cargo build --release` (the README's
# build step) and `cargo deb --no-build` (the package of that binary). The
# sandbox part is bounded to $SLUICE_DEPLOY_TIMEOUT seconds (300), and the
# sandbox is stopped whatever happens. A sandbox that cannot boot fails the
# test: nothing here is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."

export SYSTEMD_SANDBOX_DIR=${SYSTEMD_SANDBOX_DIR:-/tmp/sluice-deploy-test}
STEPS=(install tls socket install-deb)

fail() {
  echo "deploy test: FAIL: $*" >&2
  exit 1
}

# The fenced block after README.md's <!-- tests/deploy/NAME.sh --> marker.
readme_block() {
  awk -v marker="<!-- $1 -->" '
    $0 == marker { found = 1; next }
    found == 1 && /^```/ { found = 2; next }
    found == 2 && /^```/ { exit }
    found == 2 { print }' README.md
}

outer() {
  [ "$(id -u)" = 0 ] || fail "needs root (the systemd sandbox does)"
  local src=${SLUICE_SANDBOX:-../shared/tools/systemd-sandbox.sh}
  [ -f "$src" ] || fail "no systemd sandbox at $src"
  local step
  for step in "${STEPS[@]}"; do
    diff -u <(readme_block "tests/deploy/$step.sh") "tests/deploy/$step.sh" >&2 ||
      fail "README.md's block <!-- tests/deploy/$step.sh --> differs from the file"
  done
  command -v cargo-deb >/dev/null || fail "cargo-deb is missing: cargo install cargo-deb --locked"
  echo "deploy test: building (cargo build --release; cargo deb --no-build)"
  cargo build --release --quiet
  cargo deb --no-build --quiet >/dev/null

  # The sandbox runs its own path as a program: a copy with the execute bit,
  # whatever the modes of shared/ are.
  tmp=$(mktemp -d)    # global, like rc: the EXIT trap reads both
  install -m 0755 "$src" "$tmp/systemd-sandbox.sh"
  export SB=$tmp/systemd-sandbox.sh
  local limit=${SLUICE_DEPLOY_TIMEOUT:-300} started=$SECONDS
  rc=0
  trap 'cleanup "$rc"; rm -rf "$tmp"' EXIT
  trap 'exit 130' INT TERM
  timeout -k 10 "$limit" "$BASH" "$0" --steps || rc=$?
  [ "$rc" = 124 ] && echo "deploy test: FAIL: not done within ${limit}s" >&2
  [ "$rc" = 0 ] && echo "deploy test: passed in $((SECONDS - started))s (sandbox part)"
  return "$rc"
}

# Whatever happened: what the journal says if it failed, then the sandbox stops.
cleanup() {
  if [ "$1" != 0 ] && "$SB" status >/dev/null 2>&1; then
    echo "--- sluice's journal in the sandbox:" >&2
    "$SB" sh journalctl -u sluice -u sluice.socket --no-pager -n 60 >&2 || true
  fi
  "$SB" stop >/dev/null || echo "deploy test: the sandbox did not stop cleanly" >&2
}

# ---- the steps, in the sandbox (run under timeout by outer) ----

in_sb() { "$SB" sh "$@"; }
share=$SYSTEMD_SANDBOX_DIR/share
t0=$SECONDS
say() { printf 'deploy test: [%3ss] %s\n' "$((SECONDS - t0))" "$*"; }

# Poll up to $1 seconds for the command to succeed (quietly).
wait_for() {
  local secs=$1 i
  shift
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

boot() {
  "$SB" stop >/dev/null 2>&1 || true    # a leftover of an earlier run, if any
  "$SB" start >/dev/null || fail "the systemd sandbox did not boot (see $SYSTEMD_SANDBOX_DIR/console.log)"
  in_sb mkdir -p /root/sluice
  tar -cf - --exclude='*.pem' target/release/sluice target/debian config systemd certs tests/deploy |
    in_sb tar -C /root/sluice -xf -
  cp tests/deploy/ws.py "$share/ws.py"
  rm -f "$share/hold.log" "$share/apt.err"
}

# Runs README block NAME.sh as written, as root, in the copied checkout.
readme_step() {
  in_sb bash -ec "cd /root/sluice && . tests/deploy/$1.sh" </dev/null ||
    fail "README step tests/deploy/$1.sh failed"
}

expect_modes() {
  local got
  got=$(in_sb stat -c '%U:%G %a %n' "${@:2}")
  [ "$got" = "$1" ] || fail "modes: expected
$1
got
$got"
}

echo_through() {
  in_sb python3 /srv/sandbox-share/ws.py echo "$@" >/dev/null
}

start_backend() {
  in_sb systemd-run --quiet --unit=ws-echo python3 /srv/sandbox-share/ws.py serve 127.0.0.1:9100
  wait_for 10 in_sb sh -c 'ss -ltnH "sport = :9100" | grep -q .' || fail "the echo backend did not listen"
}

is_active() { [ "$(in_sb systemctl is-active "$1")" = active ]; }

# One property of a unit.
prop() { in_sb systemctl show "$1" -p "$2" --value; }

# Echoes the held tunnel has logged (tests/deploy/ws.py hold).
echoes() { grep -c '^echo ' "$share/hold.log" || true; }
echoes_above() { [ "$(echoes)" -gt "$1" ]; }

# Fails unless the held tunnel is open and keeps echoing.
expect_tunnel_alive() {
  local before
  before=$(echoes)
  wait_for 5 echoes_above "$before" || fail "the held tunnel stopped echoing $1"
  if grep -v '^echo ' "$share/hold.log" >&2; then
    fail "the held tunnel ended $1 (its log's last line above)"
  fi
}

steps() {
  boot
  say "sandbox booted; manual install (README: tests/deploy/install.sh)"
  readme_step install
  is_active sluice || fail "sluice.service is not active after the install steps"
  local start active
  start=$(prop sluice InactiveExitTimestampMonotonic)
  active=$(prop sluice ActiveEnterTimestampMonotonic)
  say "sluice.service active; start to active (ExecStartPre included): $(((active - start) / 1000)) ms"
  in_sb id sluice >/dev/null || fail "no sluice user"
  expect_modes "root:sluice 750 /etc/sluice
root:sluice 750 /etc/sluice/certs
root:sluice 640 /etc/sluice/sluice.toml" /etc/sluice /etc/sluice/certs /etc/sluice/sluice.toml

  start_backend
  echo_through ws://127.0.0.1:8080/ || fail "no WebSocket echo through the installed sluice"
  say "WebSocket echo through sluice works"

  in_sb systemd-run --quiet --unit=ws-hold python3 /srv/sandbox-share/ws.py hold ws://127.0.0.1:8080/ /srv/sandbox-share/hold.log
  wait_for 10 echoes_above 1 || fail "the held tunnel did not echo"

  # sluice's two sockets of the held tunnel: from the client (local port
  # 8080) and to the backend (remote port 9100).
  local system allowed sockets algos want
  system=$(in_sb cat /proc/sys/net/ipv4/tcp_congestion_control)
  allowed=$(in_sb cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)
  sockets=$(in_sb ss -tniH state established '( sport = :8080 or dport = :9100 )')
  algos=$(grep -oE '(^|[[:space:]])(bbr|bbr2|cubic|reno|htcp|vegas|westwood|dctcp)([[:space:]]|$)' <<<"$sockets" |
    sort | uniq -c | xargs || true)
  # Pacing default: cubic, or reno when the unprivileged unit may not use
  # cubic (src/socket.rs, NON_PACING); otherwise the default is kept.
  case $system in
    bbr*) case " $allowed " in *" cubic "*) want=cubic ;; *) want=reno ;; esac ;;
    *) want=$system ;;
  esac
  [ "$algos" = "2 $want" ] ||
    fail "system default $system: sluice's two loopback sockets should use $want; ss says: $algos
$sockets"
  say "congestion control of sluice's loopback sockets (system default $system, allowed: $allowed): $algos"

  say "reload with a good config: dev certificate and TLS listener (README: tests/deploy/tls.sh)"
  readme_step tls
  wait_for 5 echo_through wss://127.0.0.1:8443/ --ca /etc/sluice/certs/fullchain.pem ||
    fail "no wss echo after the reload that added the TLS listener"
  expect_tunnel_alive "across the reload"
  expect_modes "root:sluice 640 /etc/sluice/sluice.toml
root:root 644 /etc/sluice/certs/fullchain.pem
root:sluice 640 /etc/sluice/certs/privkey.pem" \
    /etc/sluice/sluice.toml /etc/sluice/certs/fullchain.pem /etc/sluice/certs/privkey.pem
  say "wss works, the open tunnel kept echoing"

  in_sb bash -ec 'cd /root/sluice
    install -D -m 0755 certs/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/sluice.sh
    mkdir -p /root/lineage && certs/make-dev-cert.sh /root/lineage >/dev/null
    RENEWED_LINEAGE=/root/lineage /etc/letsencrypt/renewal-hooks/deploy/sluice.sh' ||
    fail "the certbot deploy hook failed"
  wait_for 5 echo_through wss://127.0.0.1:8443/ --ca /root/lineage/fullchain.pem ||
    fail "the renewed certificate is not served after the deploy hook"
  expect_tunnel_alive "across the certificate renewal"
  say "certbot deploy hook: the renewed certificate is served, the tunnel kept echoing"

  local pid
  pid=$(prop sluice MainPID)
  in_sb sh -c 'echo "no_such_key = true" >> /etc/sluice/sluice.toml'
  if in_sb systemctl reload sluice 2>/dev/null; then
    fail "systemctl reload succeeded with a broken config"
  fi
  grep -q 'sluice.toml:.*no_such_key' <<<"$(in_sb journalctl -u sluice --no-pager -o cat)" ||
    fail "the journal does not name the broken key"
  is_active sluice || fail "sluice.service is not active after the refused reload"
  [ "$(prop sluice MainPID)" = "$pid" ] || fail "sluice restarted on a refused reload"
  echo_through ws://127.0.0.1:8080/ || fail "no ws echo after the refused reload"
  echo_through wss://127.0.0.1:8443/ --ca /root/lineage/fullchain.pem || fail "no wss echo after the refused reload"
  expect_tunnel_alive "across the refused reload"
  in_sb sed -i '/^no_such_key = true$/d' /etc/sluice/sluice.toml
  say "reload with a broken config: systemctl reload failed, the journal names the key, the old config serves"

  in_sb systemctl stop sluice
  wait_for 5 grep -q '^close' "$share/hold.log" || fail "the held tunnel got no Close on stop"
  grep -qx 'close 1001' "$share/hold.log" || fail "the held tunnel ended with $(grep -v '^echo' "$share/hold.log")"
  local state
  state="$(prop sluice ActiveState) $(prop sluice Result) $(prop sluice ExecMainStatus)"
  [ "$state" = "inactive success 0" ] || fail "after stop: ActiveState Result ExecMainStatus = $state"
  say "stop: Close 1001 on the open tunnel; unit inactive, result success, exit 0"

  say "socket activation (README: tests/deploy/socket.sh)"
  readme_step socket
  is_active sluice.socket || fail "sluice.socket is not active"
  is_active sluice || fail "sluice.service is not active after the socket steps"
  local run inv
  for run in first restarted; do
    inv=$(prop sluice InvocationID)
    wait_for 5 in_sb sh -c "journalctl _SYSTEMD_INVOCATION_ID=$inv -o cat | grep -c 'inherited socket from systemd' | grep -qx 2" ||
      fail "sluice ($run) did not take both sockets from systemd"
    echo_through ws://127.0.0.1:8080/ || fail "no ws echo over the inherited socket ($run)"
    echo_through wss://127.0.0.1:8443/ --ca /root/lineage/fullchain.pem || fail "no wss echo over the inherited socket ($run)"
    if [ $run = first ]; then in_sb systemctl restart sluice; fi
  done
  in_sb systemctl stop sluice.socket sluice.service
  say "both sockets inherited from systemd, also after a restart; echo over both"

  "$SB" stop >/dev/null
  boot
  say "fresh sandbox; Debian package (README: tests/deploy/install-deb.sh)"
  # Container images (Docker's, and so perhaps this host's) have a
  # policy-rc.d that forbids maintainer scripts to start services; a Debian
  # system has none. The sandbox's copy goes, the host's stays.
  in_sb rm -f /usr/sbin/policy-rc.d
  in_sb bash -ec "cd /root/sluice && . tests/deploy/install-deb.sh" </dev/null >/dev/null 2>"$share/apt.err" || {
    cat "$share/apt.err" >&2
    fail "README step tests/deploy/install-deb.sh failed"
  }
  is_active sluice || fail "the package's sluice.service is not active"
  local exe
  exe=$(in_sb readlink "/proc/$(prop sluice MainPID)/exe")
  [ "$exe" = /usr/bin/sluice ] || fail "the package's unit runs $exe, not /usr/bin/sluice"
  [ "$(in_sb systemctl is-enabled sluice.service)" = enabled ] || fail "the package did not enable sluice.service"
  [ "$(in_sb systemctl is-enabled sluice.socket)" = disabled ] || fail "the package enabled sluice.socket"
  expect_modes "root:sluice 750 /etc/sluice
root:sluice 750 /etc/sluice/certs
root:sluice 640 /etc/sluice/sluice.toml" /etc/sluice /etc/sluice/certs /etc/sluice/sluice.toml
  start_backend
  echo_through ws://127.0.0.1:8080/ || fail "no WebSocket echo through the packaged sluice"
  in_sb systemctl reload sluice || fail "reload of the packaged sluice failed"
  say "package installed: service enabled and active (/usr/bin/sluice), socket disabled, echo and reload work"
  in_sb apt-get purge -y -qq sluice >/dev/null 2>&1 || fail "apt-get purge sluice failed"
  ! is_active sluice || fail "sluice still active after purge"
  in_sb test ! -e /etc/sluice || fail "/etc/sluice left after purge"
  say "package purged: service gone, /etc/sluice removed"
}

if [ "${1:-}" = --steps ]; then
  steps
else
  outer
fi
