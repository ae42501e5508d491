#!/usr/bin/env bash
# Makes a self-signed development certificate for localhost and 127.0.0.1:
#   certs/dev.pem      certificate (PEM)
#   certs/dev-key.pem  private key (PKCS#8 PEM), mode 0600
# Never commit the key; certs/.gitignore keeps it out of git.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout dev-key.pem -out dev.pem -days 30 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
chmod 644 dev.pem
echo "wrote $(pwd)/dev.pem and $(pwd)/dev-key.pem (valid 30 days)"
