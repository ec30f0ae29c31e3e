#!/usr/bin/env python3
"""Per-query latency of `SELECT 1` over one MySQL connection: p50, p90, p99.

    latency.py HOST PORT USER [QUERIES]

Speaks just enough of the MySQL client protocol (protocol 41 handshake with an
empty password, COM_QUERY, text result set) to time each query alone, so the
tunnel's added latency can be read at the median rather than from a mean
(mariadb-slap only reports means). The account must have no password.
"""
import socket
import struct
import sys
import time

CLIENT_LONG_PASSWORD = 0x1
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_DEPRECATE_EOF = 0x1000000


def read_packet(sock):
    header = read_exact(sock, 4)
    length = header[0] | header[1] << 8 | header[2] << 16
    return header[3], read_exact(sock, length)


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed by the server")
        buf += chunk
    return bytes(buf)


def write_packet(sock, seq, payload):
    sock.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload)


def login(sock, user):
    seq, greeting = read_packet(sock)
    if greeting[0] == 0xFF:
        raise SystemExit("server refused: " + greeting[3:].decode(errors="replace"))
    flags = (
        CLIENT_LONG_PASSWORD
        | CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_DEPRECATE_EOF
    )
    payload = struct.pack("<IIB23x", flags, 1 << 24, 33)
    payload += user.encode() + b"\0"
    payload += b"\0"  # empty auth response
    payload += b"mysql_native_password\0"
    write_packet(sock, seq + 1, payload)
    _, reply = read_packet(sock)
    if reply[0] != 0x00:
        raise SystemExit("login failed: " + reply[1:].decode(errors="replace"))


def query(sock, sql):
    write_packet(sock, 0, b"\x03" + sql.encode())
    _, first = read_packet(sock)
    if first[0] == 0xFF:
        raise SystemExit("query failed: " + first[3:].decode(errors="replace"))
    # Column count, column definitions, rows, then an OK/EOF (0xFE) packet.
    while True:
        _, p = read_packet(sock)
        if p[0] == 0xFE and len(p) < 0xFFFFFF:
            return


def main():
    host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    login(sock, user)
    for _ in range(min(1000, n)):  # warm-up
        query(sock, "SELECT 1")
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        query(sock, "SELECT 1")
        samples.append(time.perf_counter_ns() - t)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1000.0
    print(f"p50 {pick(0.50):.1f} p90 {pick(0.90):.1f} p99 {pick(0.99):.1f} us ({n} queries)")


if __name__ == "__main__":
    main()
