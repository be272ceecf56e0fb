"""
The probe's start without a reactor (``_sockets.start_connect``), and the
checks built on it that need no waiting: ``probe_now`` and
``assert_free_now``, which must say exactly what their reactor twins say.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

import txportend
from txportend import Outcome, PortNotFree
from txportend._probe import probe_now
from txportend._sockets import connect_now, start_connect
from txportend._wait import assert_free_now

from .fakes import assert_closed_at_once, has_ipv6_loopback

needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1")
loopback = pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)]
)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@pytest.fixture
def listening(request: Any) -> Iterator[socket.socket]:
    host = getattr(request, "param", "127.0.0.1")
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        s.listen()
        yield s


def _closed_port(host: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """A bound, never listening socket: its port refuses connections."""
    s = socket.socket(_family(host))
    s.bind((host, 0))
    return s, s.getsockname()[1]


class InFlight:
    """A socket whose handshake never answers (what loopback can't show)."""

    def __init__(self, code: int = errno.EINPROGRESS) -> None:
        self.code = code
        self.closed = False

    def connect_ex(self, address: object) -> int:
        return self.code

    def getsockopt(self, level: int, option: int) -> int:
        return 0

    def getpeername(self) -> tuple[str, int]:
        raise OSError(errno.ENOTCONN, "not connected")

    def setsockopt(self, level: int, option: int, value: object) -> None:
        pass

    def close(self) -> None:
        self.closed = True


# -- start_connect / connect_now ----------------------------------------------------


def test_a_refused_connection_is_answered_within_connect() -> None:
    holder, port = _closed_port()
    with holder:
        assert start_connect("127.0.0.1", port) == (None, Outcome.REFUSED)
        assert connect_now("127.0.0.1", port) is Outcome.REFUSED


def test_an_accepted_connection_is_answered_and_reset(
    listening: socket.socket,
) -> None:
    port = listening.getsockname()[1]
    assert start_connect("127.0.0.1", port) == (None, Outcome.ACCEPTED)
    assert_closed_at_once(listening)


def test_a_handshake_under_way_hands_back_its_socket() -> None:
    sock = InFlight()
    assert start_connect("127.0.0.1", 1, lambda family: sock) == (sock, None)  # type: ignore[arg-type,return-value]
    assert not sock.closed


def test_connect_now_abandons_a_handshake_under_way() -> None:
    sock = InFlight()
    assert connect_now("127.0.0.1", 1, lambda family: sock) is None  # type: ignore[arg-type,return-value]
    assert sock.closed


@pytest.mark.parametrize("code", [errno.EADDRNOTAVAIL, errno.EAGAIN, errno.ENOBUFS])
def test_a_local_error_raises_and_closes_the_socket(code: int) -> None:
    sock = InFlight(code)
    with pytest.raises(OSError) as caught:
        start_connect("127.0.0.1", 1, lambda family: sock)  # type: ignore[arg-type,return-value]
    assert caught.value.errno == code
    assert sock.closed


def test_no_socket_to_be_had_raises() -> None:
    def no_socket(family: int) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    with pytest.raises(OSError) as caught:
        start_connect("127.0.0.1", 1, no_socket)
    assert caught.value.errno == errno.EMFILE


# -- probe_now and assert_free_now, against their reactor twins ----------------------


@pytest.mark.parametrize("name", ["localhost", "db..local"])
def test_probe_now_leaves_names_to_the_reactor(name: str) -> None:
    assert probe_now(name, 1) is None
    assert assert_free_now(name, 1) is False


@loopback
@pytest_twisted.ensureDeferred
async def test_probe_now_says_what_probe_says(host: str, reactor: Any) -> None:
    holder, port = _closed_port(host)
    with holder:
        now = probe_now(host, port)
        later = await txportend.probe(host, port, reactor=reactor)
    assert now == later
    assert now is not None and now.outcomes == {host: Outcome.REFUSED}
    with socket.socket(_family(host)) as server:
        server.bind((host, 0))
        server.listen()
        port = server.getsockname()[1]
        now = probe_now(host, port)
        later = await txportend.probe(host, port, reactor=reactor)
    assert now == later
    assert now is not None and now.accepted


def test_probe_now_maps_bind_addresses_to_loopback(listening: socket.socket) -> None:
    result = probe_now("0.0.0.0", listening.getsockname()[1])
    assert result is not None
    assert result.outcomes == {"127.0.0.1": Outcome.ACCEPTED}


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest_twisted.ensureDeferred
async def test_assert_free_now_raises_what_assert_free_raises(
    host: str, listening: socket.socket, reactor: Any
) -> None:
    port = listening.getsockname()[1]
    with pytest.raises(PortNotFree) as now:
        assert_free_now(host, port)
    with pytest.raises(PortNotFree) as later:
        await txportend.assert_free(host, port, reactor=reactor)
    assert str(now.value) == str(later.value) == f"Port {port} is in use on {host}."


def test_assert_free_now_decides_a_closed_port_and_takes_a_tuple() -> None:
    holder, port = _closed_port()
    with holder:
        assert assert_free_now("127.0.0.1", port) is True
        assert assert_free_now(("127.0.0.1", port)) is True


@pytest.mark.parametrize(
    ("host", "port", "timeout"),
    [("", 1, 1.0), ("127.0.0.1", 70000, 1.0), ("127.0.0.1", 1, float("nan"))],
)
def test_assert_free_now_checks_its_arguments_as_assert_free_does(
    host: str, port: int, timeout: float
) -> None:
    with pytest.raises(ValueError):
        assert_free_now(host, port, timeout)
    with pytest.raises(ValueError):
        txportend.assert_free(host, port, timeout)
