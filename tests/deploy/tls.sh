certs/make-dev-cert.sh /etc/sluice/certs
sed -i -e 's|^# listen = |listen = |' -e 's|^# \[tls\]|[tls]|' \
  -e 's|^# cert = .*|cert = "certs/fullchain.pem"|' \
  -e 's|^# key = .*|key = "certs/privkey.pem"|' /etc/sluice/sluice.toml
systemctl reload sluice
