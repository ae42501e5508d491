#!/usr/bin/env bash
# Makes a self-signed development certificate for localhost and 127.0.0.1.
#
#   certs/make-dev-cert.sh        in the checkout: certs/dev.pem and
#                                 certs/dev-key.pem (the key 0600), the paths
#                                 config/sluice.toml's [tls] comments name
#   certs/make-dev-cert.sh DIR    for an installed sluice, e.g. /etc/sluice/certs:
#                                 DIR/fullchain.pem (0644) and DIR/privkey.pem,
#                                 root:sluice 0640 when the sluice group exists
#                                 (run as root), else 0600
#
# The files are written beside their targets and renamed over them, so a
# reload never reads half a file. Never commit a key: certs/.gitignore keeps
# *.pem out of git.
set -euo pipefail
if [ $# -gt 0 ]; then
  dir=$1 cert=fullchain.pem key=privkey.pem
else
  dir=$(dirname "$0") cert=dev.pem key=dev-key.pem
fi
cd "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$key.new" -out "$cert.new" -days 30 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
chmod 0644 "$cert.new"
if [ $# -gt 0 ] && [ "$(id -u)" = 0 ] && getent group sluice >/dev/null; then
  chown root:sluice "$key.new"
  chmod 0640 "$key.new"
fi
mv -f "$cert.new" "$cert"
mv -f "$key.new" "$key"
echo "wrote $(pwd)/$cert and $(pwd)/$key (valid 30 days)"
