install -m 0755 target/release/sluice /usr/local/bin/sluice
install -D -m 0644 systemd/sluice.sysusers /etc/sysusers.d/sluice.conf
systemd-sysusers /etc/sysusers.d/sluice.conf
install -d -o root -g sluice -m 0750 /etc/sluice /etc/sluice/certs
test -e /etc/sluice/sluice.toml ||
  install -o root -g sluice -m 0640 config/sluice.toml /etc/sluice/sluice.toml
install -m 0644 systemd/sluice.service systemd/sluice.socket /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now sluice.service
