"""
The probe's start without a reactor (``_sockets.start_connect``), and the
checks built on it that need no waiting: ``probe_now`` and
``assert_free_now``, which must say exactly what their reactor twins say.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

import txportend
from txportend import Outcome, PortNotFree
from txportend._probe import probe_now
from txportend._sockets import (
    bind_now,
    connect_now,
    lacks_family,
    settle,
    start_connect,
)
from txportend._wait import assert_free_now

from .fakes import has_ipv6_loopback

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


def assert_left_politely(listener: socket.socket) -> None:
    """The probe's connection waiting in ``listener``'s backlog was closed
    normally: accepted, it reads as a clean end of file (b""), never a
    reset (ECONNRESET)."""
    listener.settimeout(5)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        assert conn.recv(1) == b""  # ConnectionResetError after a reset


class InFlight:
    """A socket whose handshake never answers (what loopback can't show).

    ``bind_error``: the errno its ``bind()`` fails with (0: it succeeds),
    to play a machine without the address family."""

    def __init__(self, code: int = errno.EINPROGRESS, bind_error: int = 0) -> None:
        self.code = code
        self.bind_error = bind_error
        self.closed = False

    def bind(self, address: object) -> None:
        if self.bind_error:
            raise OSError(self.bind_error, os.strerror(self.bind_error))

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


def test_an_accepted_connection_is_answered_and_closed_politely(
    listening: socket.socket,
) -> None:
    port = listening.getsockname()[1]
    assert start_connect("127.0.0.1", port) == (None, Outcome.ACCEPTED)
    assert_left_politely(listening)


@pytest.mark.parametrize(
    ("family", "address"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_a_socket_connected_to_itself_is_refused_and_closed(
    family: int, address: str
) -> None:
    """The kernel may pick the port probed as the probe's own, when nothing
    listens there: TCP's simultaneous open connects the socket to itself,
    and nothing accepted it. The quick look, the blocking check and the
    socket transport all start here."""
    if family == socket.AF_INET6 and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    sock = socket.socket(family)
    sock.setblocking(False)
    sock.bind((address, 0))
    port = sock.getsockname()[1]
    assert start_connect(address, port, lambda f: sock) == (None, Outcome.REFUSED)
    assert sock.fileno() == -1
    # closed with a reset: the probed port is not left in TIME_WAIT
    assert bind_now(address, port) == port


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


# -- an address family this machine lacks ------------------------------------------


def _machine(connect_error: int, bind_error: int) -> Any:
    """make_socket for a machine where connect() fails with ``connect_error``
    and binding the family's loopback address with ``bind_error``."""
    made: list[InFlight] = []

    def make(family: int) -> InFlight:
        made.append(InFlight(connect_error, bind_error))
        return made[-1]

    make.made = made  # type: ignore[attr-defined]
    return make


@pytest.mark.parametrize("code", [errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT])
def test_an_ipv6_target_where_this_machine_has_no_ipv6_is_unreachable(
    code: int,
) -> None:
    """IPv6 switched off (no ::1): connect() to ::1 (or ::, which means ::1)
    fails with EADDRNOTAVAIL, and so does binding ::1. Nothing listens
    there: unreachable, not an error (portend's free returns)."""
    make = _machine(code, errno.EADDRNOTAVAIL)
    assert start_connect("::1", 1, make) == (None, Outcome.UNREACHABLE)
    assert connect_now("::1", 1, make) is Outcome.UNREACHABLE
    assert all(s.closed for s in make.made)


def test_an_ipv6_socket_that_cannot_be_made_is_unreachable() -> None:
    """A kernel without IPv6: socket(AF_INET6) fails with EAFNOSUPPORT."""

    def no_ipv6(family: int) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported")
        raise AssertionError("only IPv6 is asked for")

    assert start_connect("::1", 1, no_ipv6) == (None, Outcome.UNREACHABLE)


@pytest.mark.parametrize(
    ("host", "bind_error"),
    [
        ("::1", 0),  # ::1 exists: no local port left
        ("::1", errno.EADDRINUSE),  # what bind(port 0) says with no port left
        ("127.0.0.1", 0),
        ("127.0.0.1", errno.EADDRINUSE),
    ],
)
def test_no_local_port_left_stays_an_error_in_either_family(
    host: str, bind_error: int
) -> None:
    """EADDRNOTAVAIL also means "no local port left": where the family's
    loopback address exists, it stays this machine's error, never free."""
    make = _machine(errno.EADDRNOTAVAIL, bind_error)
    with pytest.raises(OSError) as caught:
        start_connect(host, 1, make)
    assert caught.value.errno == errno.EADDRNOTAVAIL
    assert all(s.closed for s in make.made)


def test_settle_reads_the_answers_and_raises_this_machines_errors() -> None:
    assert settle("127.0.0.1", errno.ECONNREFUSED) is Outcome.REFUSED
    assert settle("127.0.0.1", 0) is Outcome.ACCEPTED
    assert settle("127.0.0.1", errno.ENETUNREACH) is Outcome.UNREACHABLE
    for code in (errno.EMFILE, errno.EAGAIN, errno.EADDRNOTAVAIL):
        with pytest.raises(OSError):
            settle("127.0.0.1", code)


def test_this_machine_has_the_families_it_has() -> None:
    """The real check, on this machine: 127.0.0.1 exists, so EADDRNOTAVAIL
    is an error; ::1 likewise where it exists."""
    assert lacks_family(socket.AF_INET, errno.EADDRNOTAVAIL) is False
    assert lacks_family(socket.AF_INET6, errno.EADDRNOTAVAIL) is (
        not has_ipv6_loopback()
    )
    # Other errors are never taken for a missing family.
    assert lacks_family(socket.AF_INET6, errno.EMFILE) is False


def test_no_socket_to_be_had_raises() -> None:
    def no_socket(family: int) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    with pytest.raises(OSError) as caught:
        start_connect("127.0.0.1", 1, no_socket)
    assert caught.value.errno == errno.EMFILE


# -- probe_now and assert_free_now, against their reactor twins ----------------------


@pytest.mark.parametrize("name", ["localhost", "db.example"])
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


_NO_IPV6_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import txportend.blocking as portend
from txportend._probe import probe_now
from txportend._sockets import start_connect
results = {"connect": start_connect("::1", 9)[1].value, "any": str(probe_now("::", 9))}
portend.free("::1", 9, 1)
results["free"] = "returned"
try:
    portend.occupied("::1", 9, 0.2)
except Exception as e:
    results["occupied"] = type(e).__name__
print(json.dumps(results))
"""


def test_where_ipv6_is_switched_off_an_ipv6_target_has_nothing_listening() -> None:
    """The real thing, in a network namespace of its own with IPv6 switched
    off on its loopback (needs unshare and ip; skipped where they can't)."""
    import json
    import shutil
    import subprocess
    import sys

    if not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs unshare and ip")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    setup = "ip link set lo up && echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6"

    def in_namespace(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["unshare", "-rn", "sh", "-c", setup + ' && exec "$@"', "sh", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        possible = in_namespace("true")
    except OSError as e:
        pytest.skip(f"unshare: {e}")
    if possible.returncode != 0:
        pytest.skip(f"no network namespace here: {possible.stderr.strip()[-200:]}")
    done = in_namespace(sys.executable, "-c", _NO_IPV6_SCRIPT, root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "connect": "unreachable",
        "any": "ProbeResult(host='::1', port=9, outcomes={'::1': "
        "<Outcome.UNREACHABLE: 'unreachable'>})",
        "free": "returned",
        "occupied": "Timeout",
    }
