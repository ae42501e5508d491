#!/usr/bin/env bash
# The whole test suite, the README's test command: installs what the tests
# need when it is missing (quietly; nothing when all is there), then runs
# `cargo test` and the deployment test (tests/deploy/run.sh). Run it as root:
# apt-get, and the deployment test's systemd sandbox, need it. .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# Debian packages the tests use, each as PACKAGE:COMMAND (the command that
# shows it is installed).
need=(
  systemd:systemd-analyze           # unit checks; the sandbox boots the host's systemd
  systemd:systemd-socket-activate   # the socket-activation test (tests/daemon.rs)
  util-linux:nsenter                # the systemd sandbox
  iproute2:ss                       # the deployment test reads congestion control
  openssl:openssl                   # certs/make-dev-cert.sh
  chromium:chromium                 # the demo page in a real browser
  nodejs:node                       # the seed article's ws server (tests/node)
  npm:npm
  python3:python3                   # the deployment test's WebSocket backend and clients
  dpkg-dev:dpkg-shlibdeps           # cargo deb: the package's dependencies
  binutils:strip                    # cargo deb: strips the packaged binary
  pebble:pebble                     # the ACME server of tests/acme.rs (with pebble-challtestsrv)
  haproxy:haproxy                   # PROXY protocol interop (tests/proxy_protocol.rs)
  redis-server:redis-server         # [cluster] tests (tests/cluster.rs) start their own
)
missing=()
for entry in "${need[@]}"; do
  command -v "${entry#*:}" >/dev/null || missing+=("${entry%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  # shellcheck disable=SC2046 # one word per package
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

# The Node.js `ws` module for tests/node/server.js, when the lock file is newer.
if [ ! tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ]; then
  npm ci --prefix tests/node --no-audit --no-fund --silent
fi

# The deployment test builds the Debian package with it.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet

cargo test
tests/deploy/run.sh
