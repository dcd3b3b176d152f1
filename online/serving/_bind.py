"""A listening address taken as the servers take it (SO_REUSEADDR), so ``serve`` and the gRPC
server can say in one line why a host and port cannot be served on."""

from __future__ import annotations

import socket


def bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound, not listening, to ``host:port`` with SO_REUSEADDR, as the servers bind
    (port 0: a free one). socket.gaierror when the host does not resolve, OSError when the
    address cannot be had."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock
