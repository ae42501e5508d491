mkdir -p /etc/systemd/system/sluice.socket.d
cat > /etc/systemd/system/sluice.socket.d/listen.conf <<'END'
[Socket]
# Exactly the addresses of server.listen and server.listen_plain.
ListenStream=
ListenStream=127.0.0.1:8080
ListenStream=127.0.0.1:8443
END
systemctl daemon-reload
systemctl stop sluice.service
systemctl enable --now sluice.socket
systemctl start sluice.service
