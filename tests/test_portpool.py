"""
The portserver's pool: parsing the ranges, the reservation rules (live,
dead and reused pids faked through an injected process-info function), and
the check that a port is free right now.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from txportend._portpool import (
    PortPool,
    parse_port_ranges,
    port_is_free,
    process_start_time,
)

from .conftest import BindScript, open_fds
from .fakes import has_ipv6_loopback

_sync = SynchronousTestCase()


# Parsing


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        ("15000-15002", [15000, 15001, 15002]),
        ("7", [7]),
        ("30000-30001,15000-15000", [15000, 30000, 30001]),
        (" 1 - 2 , 65535 ", [1, 2, 65535]),
    ],
)
def test_ranges_parse(text: str, ports: list[int]) -> None:
    """Ranges N-P (ends included), single ports, commas, spaces around."""
    assert parse_port_ranges(text) == ports


def test_default_pool_is_portpickers() -> None:
    """15000-24999, both ends included, as portpicker's portserver."""
    ports = parse_port_ranges("15000-24999")
    assert (ports[0], ports[-1], len(ports)) == (15000, 24999, 10000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Port ranges '': an item is empty."),
        ("1-2,,5", "Port ranges '1-2,,5': an item is empty."),
        ("a-5", "Port range 'a-5': 'a' is not a port number."),
        ("5-", "Port range '5-': '' is not a port number."),
        ("-5", "Port range '-5': '' is not a port number."),
        ("1-2-3", "Port range '1-2-3': '2-3' is not a port number."),
        ("0-10", "Port range '0-10': 0 is not a port (1-65535)."),
        ("65000-65536", "Port range '65000-65536': 65536 is not a port (1-65535)."),
        ("20-10", "Port range '20-10' starts above its end."),
        ("10-20,20-30", "Port ranges '10-20' and '20-30' overlap."),
        ("10-20,15", "Port ranges '10-20' and '15' overlap."),
        (
            "\u0661\u0662",
            "Port range '\u0661\u0662': '\u0661\u0662' is not a port number.",
        ),
    ],
)
def test_ranges_refused(text: str, message: str) -> None:
    """Every problem is one ValueError with one line naming it."""
    with pytest.raises(ValueError) as caught:
        parse_port_ranges(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ([], "A port pool needs at least one port."),
        ([1, 1], "A port pool holds each port once."),
        ([0], "0 is not a port (1-65535)."),
        ([70000], "70000 is not a port (1-65535)."),
    ],
)
def test_pool_refuses(ports: list[int], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        PortPool(ports)
    assert str(caught.value) == message


# The reservation rules


class Processes:
    """Fake process facts: pid -> start time, for the live ones."""

    def __init__(self) -> None:
        self.live: dict[int, float] = {100: 1.0, 200: 2.0, 300: 3.0}

    def __call__(self, pid: int) -> float | None:
        return self.live.get(pid)


def always_free(port: int) -> Deferred[bool]:
    return succeed(True)


def allocate(pool: PortPool, pid: int, is_free: Any = always_free) -> int | None:
    result: int | None = _sync.successResultOf(pool.allocate(pid, is_free))
    return result


@pytest.fixture
def processes() -> Processes:
    return Processes()


def test_each_port_goes_to_one_live_process(processes: Processes) -> None:
    """Ports go round the pool; a held port is not handed out again."""
    pool = PortPool([20000, 20001, 20002], process_start=processes)
    assert [allocate(pool, 100), allocate(pool, 200), allocate(pool, 100)] == [
        20000,
        20001,
        20002,
    ]
    assert pool.allocated() == 3
    assert pool.holder(20001) == (200, 2.0)


def test_exhausted_while_holders_live(processes: Processes) -> None:
    pool = PortPool([20000, 20001], process_start=processes)
    allocate(pool, 100)
    allocate(pool, 200)
    assert allocate(pool, 300) is None
    assert pool.allocated() == 2


def test_dead_holder_gives_the_port_back(processes: Processes) -> None:
    """Once its process has died, a port is handed out again."""
    pool = PortPool([20000, 20001], process_start=processes)
    allocate(pool, 100)
    allocate(pool, 200)
    del processes.live[100]
    assert allocate(pool, 300) == 20000
    assert pool.holder(20000) == (300, 3.0)


def test_reused_pid_gives_the_port_back(processes: Processes) -> None:
    """A new process with the old pid (another start time) does not hold it."""
    pool = PortPool([20000, 20001], process_start=processes)
    allocate(pool, 100)
    allocate(pool, 200)
    processes.live[100] = 99.0  # pid 100 reused
    assert allocate(pool, 100) == 20000
    assert pool.holder(20000) == (100, 99.0)


def test_allocated_counts_only_live_holders(processes: Processes) -> None:
    pool = PortPool([20000, 20001, 20002], process_start=processes)
    allocate(pool, 100)
    allocate(pool, 200)
    processes.live[200] = 5.0
    assert pool.allocated() == 1
    assert pool.holder(20001) is None  # released on the way


def test_a_port_in_use_is_skipped(processes: Processes) -> None:
    """Only a port free right now is handed out; a busy one stays in the pool."""
    pool = PortPool([20000, 20001], process_start=processes)
    busy = {20000}
    checked: list[int] = []

    def is_free(port: int) -> Deferred[bool]:
        checked.append(port)
        return succeed(port not in busy)

    assert allocate(pool, 100, is_free) == 20001
    busy.clear()
    assert allocate(pool, 200, is_free) == 20000
    assert checked == [20000, 20001, 20000]


def test_all_busy_means_no_port(processes: Processes) -> None:
    pool = PortPool([20000, 20001], process_start=processes)
    assert allocate(pool, 100, lambda port: succeed(False)) is None
    assert pool.allocated() == 0


def test_requester_gone_gets_nothing(processes: Processes) -> None:
    pool = PortPool([20000], process_start=processes)
    assert allocate(pool, 999) is None
    assert pool.allocated() == 0


def test_one_allocation_at_a_time(processes: Processes) -> None:
    """A second allocation while one waits on a check is refused, not raced."""
    pool = PortPool([20000, 20001], process_start=processes)
    pending: Deferred[bool] = Deferred()
    first = pool.allocate(100, lambda port: pending)
    with pytest.raises(RuntimeError):
        pool.allocate(200, always_free)
    pending.callback(True)
    assert _sync.successResultOf(first) == 20000
    assert allocate(pool, 200) == 20001


def test_process_facts_asked_once_per_pid_per_allocation(processes: Processes) -> None:
    """Going round a pool held by a few processes costs a lookup per process."""
    asked: list[int] = []

    def start(pid: int) -> float | None:
        asked.append(pid)
        return processes(pid)

    pool = PortPool(range(20000, 20100), process_start=start)
    for _ in range(99):
        allocate(pool, 100)
    assert allocate(pool, 300) == 20099
    asked.clear()
    assert allocate(pool, 200) is None  # round the whole pool
    assert sorted(asked) == [100, 200, 300]


def test_process_start_time_through_psutil() -> None:
    """The default process facts: this process lives, a dead pid does not."""
    assert process_start_time(psutil.Process().pid) == psutil.Process().create_time()
    assert process_start_time(2**22 + 12345) is None  # above Linux's pid_max


# Is the port free right now?


ALL = [("tcp", "v6"), ("tcp", "v4"), ("udp", "v6"), ("udp", "v4")]


@pytest.mark.parametrize(
    ("errors", "free", "tried"),
    [
        ({}, True, ALL),
        ({("bind", "tcp", "0.0.0.0"): errno.EADDRINUSE}, False, ALL[:2]),
        ({("listen", "tcp", "::"): errno.EADDRINUSE}, False, ALL[:1]),
        ({("bind", "udp", "::"): errno.EADDRINUSE}, False, ALL[:3]),
        ({("bind", "tcp", "::"): errno.EACCES}, False, ALL[:1]),
        # No IPv6 here: skipped.
        (
            {("socket", "tcp", "v6"): errno.EAFNOSUPPORT},
            True,
            ALL,
        ),
        (
            {("bind", "tcp", "::"): errno.EADDRNOTAVAIL},
            True,
            ALL,
        ),
        # Neither family: nothing is free.
        (
            {
                ("socket", "tcp", "v6"): errno.EAFNOSUPPORT,
                ("socket", "tcp", "v4"): errno.EAFNOSUPPORT,
            },
            False,
            ALL[:2],
        ),
    ],
)
def test_port_is_free_checks_tcp_and_udp_on_both_families(
    bind_script: BindScript,
    errors: dict[tuple[str, str, str], int],
    free: bool,
    tried: list[tuple[str, str]],
) -> None:
    """TCP then UDP, IPv6 then IPv4, each on the wildcard address."""
    bind_script.errors.update(errors)
    assert _sync.successResultOf(port_is_free(20000)) is free
    assert [(k, w) for c, k, w in bind_script.calls if c == "socket"] == tried
    assert all(s.fileno() == -1 for s in bind_script.sockets)


def test_port_is_free_binds_as_listen_tcp_and_listen_udp(
    bind_script: BindScript,
) -> None:
    """TCP: SO_REUSEADDR (POSIX), bind, listen. UDP: bind only, without it."""
    assert _sync.successResultOf(port_is_free(20000)) is True
    assert bind_script.calls == [
        ("socket", "tcp", "v6"),
        ("bind", "tcp", "::"),
        ("listen", "tcp", "::"),
        ("socket", "tcp", "v4"),
        ("bind", "tcp", "0.0.0.0"),
        ("listen", "tcp", "0.0.0.0"),
        ("socket", "udp", "v6"),
        ("bind", "udp", "::"),
        ("socket", "udp", "v4"),
        ("bind", "udp", "0.0.0.0"),
    ]
    assert [s.reuse_address for s in bind_script.sockets] == [  # type: ignore[attr-defined]
        os.name == "posix",
        os.name == "posix",
        False,
        False,
    ]


@pytest.mark.parametrize("where", [("socket", "tcp", "v6"), ("bind", "udp", "0.0.0.0")])
def test_port_is_free_fails_on_errors_that_say_nothing_about_the_port(
    bind_script: BindScript, where: tuple[str, str, str]
) -> None:
    bind_script.errors[where] = errno.EMFILE
    failure = _sync.failureResultOf(port_is_free(20000), CannotListenError)
    assert failure.value.socketError.errno == errno.EMFILE
    assert all(s.fileno() == -1 for s in bind_script.sockets)


def _bound(kind: int, family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:  # this family only, as the check binds
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


_ALL_FOUR = [
    (socket.SOCK_STREAM, socket.AF_INET, "0.0.0.0"),
    (socket.SOCK_DGRAM, socket.AF_INET, "0.0.0.0"),
    (socket.SOCK_STREAM, socket.AF_INET6, "::"),
    (socket.SOCK_DGRAM, socket.AF_INET6, "::"),
]


def _quiet_port() -> int:
    """
    A port below Linux's ephemeral range (which the kernel never hands out
    by itself, unlike a port from bind(0), which a test running beside this
    one may get for another protocol next) that is free for TCP and UDP on
    both families right now.
    """
    import random

    for _ in range(200):  # bounded
        port = random.randrange(26000, 32000)
        held: list[socket.socket] = []
        try:
            for kind, family, address in _ALL_FOUR:
                if family == socket.AF_INET6 and not has_ipv6_loopback():
                    continue
                held.append(_bound(kind, family, address, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return port
    raise AssertionError("no quiet port found")


@pytest.mark.parametrize(
    ("kind", "family", "address"),
    [
        (socket.SOCK_STREAM, socket.AF_INET, "127.0.0.1"),
        (socket.SOCK_DGRAM, socket.AF_INET, "127.0.0.1"),
        (socket.SOCK_STREAM, socket.AF_INET6, "::1"),
        (socket.SOCK_DGRAM, socket.AF_INET6, "::1"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_port_is_free_on_real_sockets(
    reactor: Any, kind: int, family: int, address: str
) -> None:
    """A port held for TCP or UDP, on IPv4 or IPv6, is not free; once
    released it is (nothing else holds it: the kernel just gave it to us)."""
    if family == socket.AF_INET6 and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    port = _quiet_port()
    with _bound(kind, family, address, port):
        assert await port_is_free(port) is False
    assert await port_is_free(port) is True


@pytest_twisted.ensureDeferred
async def test_port_is_free_binds_udp_without_so_reuseaddr(reactor: Any) -> None:
    """As listenUDP: a UDP port held by a socket that set SO_REUSEADDR is
    busy (it would look free to a check that set it too)."""
    port = _quiet_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", port))
        assert await port_is_free(port) is False


@pytest_twisted.ensureDeferred
async def test_port_is_free_logs_nothing_and_leaves_no_fd(reactor: Any) -> None:
    """Eight binds per port, and not one line in twistd.log for them (the
    reactor's listenTCP/listenUDP logged two each), nor an fd left open."""
    port = _quiet_port()
    before = open_fds() if os.path.isdir("/proc/self/fd") else set()
    with capturedLogs() as events:
        assert await port_is_free(port) is True
        with _bound(socket.SOCK_DGRAM, socket.AF_INET, "127.0.0.1", port):
            assert await port_is_free(port) is False
    assert events == []
    if before:
        assert open_fds() - before == set()
