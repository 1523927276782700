"""The freezable loopback proxy: forwards both ways, freezes without closing anything, thaws
without losing bytes, and freezes after an exact byte count."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from cloudckpt.testing.proxy import FreezableProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A loopback echo server (one thread per connection)."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()
    stop.set()
    t.join(2)
    srv.close()


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def connect(proxy: FreezableProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def test_forwards_both_ways_on_loopback_only(echo: tuple[str, int]) -> None:
    with FreezableProxy(f"http://{echo[0]}:{echo[1]}") as proxy:
        assert proxy.endpoint == f"http://127.0.0.1:{proxy.port}"
        with connect(proxy) as s:
            s.sendall(b"hello")
            assert recv_exactly(s, 5) == b"hello"
        assert proxy.bytes_up == 5 and proxy.bytes_down == 5 and proxy.connections == 1


def test_freeze_holds_everything_open_and_thaw_loses_nothing(echo: tuple[str, int]) -> None:
    with FreezableProxy(echo) as proxy, connect(proxy) as s:
        s.sendall(b"before")
        assert recv_exactly(s, 6) == b"before"
        proxy.freeze()
        s.sendall(b"during")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):  # no answer, and no error: like a frozen server
            s.recv(10)
        with connect(proxy) as s2:  # new connections are still accepted while frozen
            s2.sendall(b"x")
            s2.settimeout(0.2)
            with pytest.raises(TimeoutError):
                s2.recv(1)
        proxy.thaw()
        s.settimeout(5)
        assert recv_exactly(s, 6) == b"during"


def test_freeze_after_an_exact_number_of_upstream_bytes(echo: tuple[str, int]) -> None:
    with FreezableProxy(echo) as proxy, connect(proxy) as s:
        proxy.freeze_after(upstream_bytes=1000)
        payload = bytes(range(256)) * 20  # 5120 bytes
        s.sendall(payload)
        assert proxy.wait_frozen(5)
        s.settimeout(0.3)
        got = b""
        with pytest.raises(TimeoutError):  # at most the first 1000 bytes ever come back
            while True:
                got += s.recv(65536)
        assert proxy.bytes_up == 1000 and got == payload[:len(got)] and len(got) <= 1000
        proxy.thaw()  # everything held is delivered, in order
        s.settimeout(5)
        assert got + recv_exactly(s, len(payload) - len(got)) == payload


def test_freeze_after_downstream_bytes(echo: tuple[str, int]) -> None:
    with FreezableProxy(echo) as proxy, connect(proxy) as s:
        proxy.freeze_after(downstream_bytes=10)
        s.sendall(b"0123456789abcdef")
        assert recv_exactly(s, 10) == b"0123456789"
        assert proxy.wait_frozen(5)
        proxy.thaw()
        assert recv_exactly(s, 6) == b"abcdef"


def test_close_ends_clients_blocked_on_a_frozen_proxy(echo: tuple[str, int]) -> None:
    proxy = FreezableProxy(echo)
    s = connect(proxy)
    proxy.freeze()
    s.sendall(b"ping")
    got: list[bytes | BaseException] = []

    def reader() -> None:
        try:
            got.append(s.recv(10))
        except OSError as e:
            got.append(e)

    t = threading.Thread(target=reader)
    t.start()
    proxy.close()
    t.join(5)
    assert not t.is_alive(), "close() left a client blocked"
    assert got == [b""] or isinstance(got[0], OSError)
    with contextlib.suppress(OSError):
        s.close()


def test_bad_upstream_is_refused() -> None:
    with pytest.raises(ValueError):
        FreezableProxy("http://127.0.0.1")
