#!/usr/bin/env python3
"""A WebSocket echo backend and clients for the deployment test (tests/deploy/run.sh).

Standard library only, because inside the systemd sandbox there is no
network to install anything from and python3 comes from the host.

  ws.py serve HOST:PORT            echo backend (text, binary, ping -> pong, close)
  ws.py echo URL [--ca PEM]        one tunnel: a message and its echo, then Close 1000;
                                   exit 0 and print "echo ok", or exit 1 with the reason
  ws.py hold URL LOG               one tunnel held open: a message and its echo every
                                   0.2 s, each appended to LOG as "echo N"; a Close from
                                   the proxy is logged as "close CODE" and ends it
                                   ("eof" / "error ..." when the tunnel ends otherwise)

URL is ws://HOST:PORT/PATH or wss://HOST:PORT/PATH; with wss, --ca names the
PEM certificate to trust (the server name checked is "localhost"), so
connecting proves which certificate is served.
"""

import base64
import hashlib
import os
import select
import socket
import socketserver
import ssl
import struct
import sys
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def read_head(sock):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError("connection closed during the handshake")
        head += chunk
        if len(head) > 65536:
            raise ValueError("handshake head too long")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


def read_frame(sock):
    b0, b1 = recv_exact(sock, 2)
    opcode = b0 & 0x0F
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", recv_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", recv_exact(sock, 8))
    mask = recv_exact(sock, 4) if b1 & 0x80 else None
    payload = recv_exact(sock, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def send_frame(sock, opcode, payload, masked):
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if masked:
        mask = os.urandom(4)
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(head + payload)


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        try:
            _, headers = read_head(sock)
            key = headers["sec-websocket-key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            sock.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            while True:
                opcode, payload = read_frame(sock)
                if opcode == 0x8:
                    send_frame(sock, 0x8, payload[:2], masked=False)
                    return
                if opcode == 0x9:
                    send_frame(sock, 0xA, payload, masked=False)
                elif opcode in (0x1, 0x2):
                    send_frame(sock, opcode, payload, masked=False)
        except (EOFError, OSError, KeyError, ValueError):
            return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def connect(url, ca):
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    if u.scheme == "wss":
        ctx = ssl.create_default_context(cafile=ca)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status, headers = read_head(sock)
    if " 101 " not in status + " ":
        raise ValueError(f"handshake answered {status!r}")
    want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != want:
        raise ValueError("wrong Sec-WebSocket-Accept")
    return sock


def round_trip(sock, text):
    send_frame(sock, 0x1, text.encode(), masked=True)
    opcode, payload = read_frame(sock)
    if opcode == 0x8:
        return close_code(payload)
    if (opcode, payload) != (0x1, text.encode()):
        raise ValueError(f"expected the echo of {text!r}, got opcode {opcode} {payload[:40]!r}")
    return None


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def echo(url, ca):
    sock = connect(url, ca)
    code = round_trip(sock, "hello through sluice")
    if code is not None:
        raise ValueError(f"Close {code} instead of the echo")
    send_frame(sock, 0x8, struct.pack("!H", 1000), masked=True)
    opcode, payload = read_frame(sock)
    if opcode != 0x8:
        raise ValueError(f"expected a Close, got opcode {opcode}")
    print("echo ok")


def hold(url, log_path):
    with open(log_path, "a", buffering=1) as log:
        try:
            sock = connect(url, None)
            n = 0
            while True:
                n += 1
                code = round_trip(sock, f"message {n}")
                if code is not None:
                    log.write(f"close {code}\n")
                    return
                log.write(f"echo {n}\n")
                # Wait between messages, but see a Close the moment it comes.
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable:
                    opcode, payload = read_frame(sock)
                    if opcode == 0x8:
                        log.write(f"close {close_code(payload)}\n")
                        send_frame(sock, 0x8, payload[:2], masked=True)
                        return
                    raise ValueError(f"unexpected frame, opcode {opcode}")
        except EOFError:
            log.write("eof\n")
        except (OSError, ValueError) as e:
            log.write(f"error {e}\n")


def main(argv):
    if len(argv) >= 2 and argv[0] == "serve":
        host, port = argv[1].rsplit(":", 1)
        Server((host, int(port)), Echo).serve_forever()
    elif len(argv) >= 2 and argv[0] == "echo":
        ca = argv[3] if len(argv) >= 4 and argv[2] == "--ca" else None
        try:
            echo(argv[1], ca)
        except (OSError, EOFError, ValueError) as e:
            print(f"echo failed: {argv[1]}: {e}", file=sys.stderr)
            return 1
    elif len(argv) >= 3 and argv[0] == "hold":
        hold(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
