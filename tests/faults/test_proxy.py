"""The fault proxy itself, against a threaded echo server on loopback (no database needed)."""

import socket
import socketserver
import threading
import time

import pytest

from tests.faults.proxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    """Echo every chunk; `BLAST <n>\\n` answers n bytes at once instead."""

    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            if data.startswith(b"BLAST "):
                self.request.sendall(b"x" * int(data.split()[1]))
            else:
                self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_port():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_port):
    with FaultProxy("127.0.0.1", echo_port) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    return sock


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return sock.recv(65536)


def receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_passthrough_forwards_both_ways(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        sock.sendall(b"BLAST 200000")
        assert receive(sock, 200000) == b"x" * 200000
    assert proxy.stats.accepted == 1


def test_drop_resets_open_connections_and_new_ones_pass(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.drop()
        with pytest.raises(ConnectionResetError):
            roundtrip(sock)
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
    assert proxy.stats.resets == 1


def test_refuse_resets_new_connections_until_passthrough(proxy):
    with connect(proxy) as open_sock:
        assert roundtrip(open_sock) == b"ping"
        proxy.refuse()
        with pytest.raises(ConnectionResetError):
            roundtrip(open_sock)
    with pytest.raises(ConnectionResetError), connect(proxy) as sock:  # at connect or read
        time.sleep(0.05)
        roundtrip(sock)
    proxy.passthrough()
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
    assert proxy.stats.refused == 1


def test_blackhole_accepts_and_never_answers(proxy):
    with connect(proxy) as live:
        assert roundtrip(live) == b"ping"
        proxy.blackhole()
        with connect(proxy, timeout=0.5) as sock:
            sock.sendall(b"anyone?")
            with pytest.raises(TimeoutError):
                sock.recv(100)
            assert roundtrip(live) == b"ping"  # open connections keep working
            proxy.passthrough()
            sock.settimeout(5)
            with pytest.raises(ConnectionResetError):  # the healed link knows it no more
                sock.recv(100)
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


def test_stall_freezes_traffic_then_delivers_it(proxy):
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.stall(0.8)
        started = time.monotonic()
        sock.sendall(b"late")
        with connect(proxy) as fresh:
            fresh.sendall(b"new")
            assert sock.recv(100) == b"late"
            assert time.monotonic() - started >= 0.7
            assert fresh.recv(100) == b"new"


def test_reset_after_n_bytes(proxy):
    with connect(proxy) as sock:
        proxy.reset_after(1000)
        sock.sendall(b"BLAST 50000")
        data = b""
        with pytest.raises(ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert len(data) == 1000
    proxy.passthrough()
    with connect(proxy) as sock:
        sock.sendall(b"BLAST 50000")
        assert receive(sock, 50000) == b"x" * 50000


def test_unreachable_target_resets_the_client():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead_port = free.getsockname()[1]
    with (
        FaultProxy("127.0.0.1", dead_port) as proxy,
        pytest.raises(ConnectionResetError),
        connect(proxy) as sock,
    ):
        time.sleep(0.05)
        roundtrip(sock)
