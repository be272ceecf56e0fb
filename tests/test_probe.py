"""
probe() on a MemoryReactorClock; can_bind() and find_available_local_port()
on scripted sockets (``bind_script``) and on real loopback ones.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import txportend
from txportend import Outcome, _sockets

from .conftest import BindScript, open_fds
from .fakes import (
    accept,
    attempts,
    has_ipv6_loopback,
    memory_reactor,
    refuse,
    time_out,
    unreachable,
)

_tc = SynchronousTestCase()
success = _tc.successResultOf
failure = _tc.failureResultOf


def test_probe_reports_each_address() -> None:
    reactor = memory_reactor({"multi": ["127.0.0.1", "::1", "127.0.0.2", "127.0.0.3"]})
    d = txportend.probe("multi", 443, timeout=2.5, reactor=reactor)
    assert [c[2].timeout for c in reactor.tcpClients] == [2.5] * 4
    accept(reactor, 0)
    refuse(reactor, 1)
    time_out(reactor, 2)
    unreachable(reactor, 3)
    result = success(d)
    assert result.host == "multi"
    assert result.port == 443
    assert result.outcomes == {
        "127.0.0.1": Outcome.ACCEPTED,
        "::1": Outcome.REFUSED,
        "127.0.0.2": Outcome.TIMED_OUT,
        "127.0.0.3": Outcome.UNREACHABLE,
    }
    assert result.accepted
    assert result.first_accepting() == "127.0.0.1"
    assert reactor.getDelayedCalls() == []


def test_probe_duplicate_addresses_are_probed_once() -> None:
    reactor = memory_reactor({"dup": ["127.0.0.1", "127.0.0.1", "::1"]})
    txportend.probe("dup", 1, reactor=reactor)
    assert attempts(reactor) == [("127.0.0.1", 1), ("::1", 1)]


def test_probe_of_an_address_literal_skips_the_resolver() -> None:
    reactor = memory_reactor()
    d = txportend.probe("::1", 22, reactor=reactor)
    refuse(reactor)
    result = success(d)
    assert result.outcomes == {"::1": Outcome.REFUSED}
    assert not result.accepted
    assert result.first_accepting() is None
    assert reactor.nameResolver.asked == []


def test_probe_cancel_stops_every_attempt() -> None:
    reactor = memory_reactor({"both": ["127.0.0.1", "::1"]})
    d = txportend.probe("both", 22, reactor=reactor)
    refuse(reactor, 0)
    d.cancel()
    failure(d, CancelledError)
    assert reactor.connectors[1].stoppedConnecting
    assert reactor.getDelayedCalls() == []


@pytest.fixture
def no_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine can't try IPv6 addresses (IPv6 switched off): connect()
    says EADDRNOTAVAIL for ::1, as Linux does then."""
    from twisted.internet.defer import fail

    from txportend import _probe

    real = _probe.connect_once

    def connect_once(reactor: Any, address: str, port: int, timeout: float) -> Any:
        if ":" in address:
            return fail(OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))
        return real(reactor, address, port, timeout)

    monkeypatch.setattr(_probe, "connect_once", connect_once)


@pytest.mark.usefixtures("no_ipv6")
def test_an_address_this_machine_cant_try_is_unreachable_if_another_answers() -> None:
    reactor = memory_reactor({"localhost": ["::1", "127.0.0.1"]})
    d = txportend.probe("localhost", 22, reactor=reactor)
    accept(reactor)
    assert success(d).outcomes == {
        "::1": Outcome.UNREACHABLE,
        "127.0.0.1": Outcome.ACCEPTED,
    }
    d = txportend.probe("localhost", 22, reactor=reactor)
    refuse(reactor)
    assert not success(d).accepted


@pytest.mark.usefixtures("no_ipv6")
def test_a_probe_no_address_of_which_can_be_tried_fails_with_the_error() -> None:
    reactor = memory_reactor({"v6only": ["::1", "::2"]})
    d = txportend.probe("v6only", 22, reactor=reactor)
    assert failure(d, OSError).value.errno == errno.EADDRNOTAVAIL


@pytest.mark.usefixtures("no_ipv6")
def test_waits_on_localhost_work_where_ipv6_is_off() -> None:
    """As portend's do: it skips an address whose connect() fails."""
    reactor = memory_reactor({"localhost": ["::1", "127.0.0.1"]})
    d = txportend.occupied("localhost", 22, timeout=5, reactor=reactor)
    accept(reactor)
    assert success(d) is None
    d = txportend.free("localhost", 22, timeout=5, reactor=reactor)
    refuse(reactor)
    assert success(d) is None
    assert reactor.getDelayedCalls() == []


def test_probe_unknown_name() -> None:
    d = txportend.probe("nowhere.invalid", 22, reactor=memory_reactor({}))
    failure(d, txportend.HostNotFound)


def _binds(script: BindScript) -> list[tuple[Any, ...]]:
    return [s.address for s in script.sockets]


def test_can_bind_binds_each_address_as_listen_tcp_then_closes(
    bind_script: BindScript,
) -> None:
    """Each address in turn: a TCP socket with SO_REUSEADDR, bound, listening,
    closed before the next; the reactor is used for the lookup only."""
    reactor = memory_reactor({"both": ["127.0.0.1", "::1"]})
    assert success(txportend.can_bind("both", 8080, reactor=reactor)) is True
    assert bind_script.calls == [
        ("socket", "tcp", "v4"),
        ("bind", "tcp", "127.0.0.1"),
        ("listen", "tcp", "127.0.0.1"),
        ("socket", "tcp", "v6"),
        ("bind", "tcp", "::1"),
        ("listen", "tcp", "::1"),
    ]
    assert _binds(bind_script) == [("127.0.0.1", 8080), ("::1", 8080, 0, 0)]
    assert [s.reuse_address for s in bind_script.sockets] == [  # type: ignore[attr-defined]
        os.name == "posix"
    ] * 2
    assert [s.fileno() for s in bind_script.sockets] == [-1, -1]  # closed
    assert reactor.tcpServers == []


def test_can_bind_a_bind_all_address_binds_it_as_is(bind_script: BindScript) -> None:
    assert success(txportend.can_bind("0.0.0.0", 8080)) is True
    assert success(txportend.can_bind("::", 8080)) is True
    assert _binds(bind_script) == [("0.0.0.0", 8080), ("::", 8080, 0, 0)]


def test_can_bind_a_scoped_ipv6_address_binds_its_scope(
    bind_script: BindScript,
) -> None:
    """As Twisted binds it: the scope becomes the sockaddr's scope id."""
    assert success(txportend.can_bind("fe80::1%1", 8080)) is True
    ((address, port, _flow, scope),) = _binds(bind_script)
    assert (address, port, scope) == ("fe80::1", 8080, 1)


def test_can_bind_a_scope_that_names_no_interface_is_cannot_listen() -> None:
    """listenTCP fails with CannotListenError there (ENODEV from bind()), and
    so does can_bind: the scope says nothing about the port."""
    d = txportend.can_bind("fe80::1%99999", 8080)
    assert failure(d, error.CannotListenError).value.socketError.errno not in (
        errno.EADDRINUSE,
        errno.EACCES,
        errno.EADDRNOTAVAIL,
    )


def test_a_scope_getaddrinfo_refuses_is_cannot_listen_before_any_socket(
    bind_script: BindScript,
) -> None:
    """As listenTCP: CannotListenError with getaddrinfo's error (check_host
    refuses such a scope first; an interface can go away in between)."""
    with pytest.raises(error.CannotListenError) as raised:
        _sockets.bind_now("fe80::1%no-such-interface", 8080)
    assert isinstance(raised.value.socketError, socket.gaierror)
    assert bind_script.calls == []


def test_find_available_local_port_binds_port_zero_on_loopback(
    bind_script: BindScript,
) -> None:
    port = success(txportend.find_available_local_port())
    assert port == 0  # what the scripted socket says it got
    assert bind_script.calls == [
        ("socket", "tcp", "v4"),
        ("bind", "tcp", "127.0.0.1"),
        ("listen", "tcp", "127.0.0.1"),
    ]
    (sock,) = bind_script.sockets
    assert (sock.address, sock.reuse_address) == (  # type: ignore[attr-defined]
        ("127.0.0.1", 0),
        os.name == "posix",
    )
    assert sock.fileno() == -1


def test_find_available_local_port_gives_a_port_nothing_holds() -> None:
    port = success(txportend.find_available_local_port())
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("host", [None, ""])
def test_can_bind_refuses_empty_host(host: Any) -> None:
    with pytest.raises(ValueError, match="Host values"):
        txportend.can_bind(host, 80, reactor=memory_reactor())


def test_cancel_after_the_connection_is_made_closes_it() -> None:
    """A real connector raises NotConnectingError from stopConnecting once
    connected; the canceller then disconnects instead of raising."""
    reactor = memory_reactor()
    d = txportend.probe("127.0.0.1", 22, reactor=reactor)
    connector = reactor.connectors[0]
    disconnected: list[bool] = []

    def stop_connecting() -> None:
        raise error.NotConnectingError()

    connector.stopConnecting = stop_connecting
    connector.disconnect = lambda: disconnected.append(True)
    d.cancel()
    failure(d, CancelledError)
    assert disconnected == [True]


def _timer_fires(reactor: Any) -> None:
    """The probe's handshake timer fires, as a real reactor runs it: in
    runUntilCurrent, before the poll that reads socket events. (A Clock's
    advance() would also run the call it schedules for the next turn.)"""
    (timer,) = reactor.getDelayedCalls()
    reactor.calls.remove(timer)
    timer.func(*timer.args, **timer.kw)


def test_handshake_timeout_gives_io_one_more_turn() -> None:
    """When the probe's timer fires, one more reactor turn passes before the
    attempt is stopped and counted as timed out."""
    reactor = memory_reactor()
    d = txportend.probe("127.0.0.1", 22, timeout=1.0, reactor=reactor)
    _timer_fires(reactor)
    assert not reactor.connectors[0].stoppedConnecting
    _tc.assertNoResult(d)
    reactor.advance(0)  # the next turn
    assert reactor.connectors[0].stoppedConnecting
    factory, connector = reactor.tcpClients[0][2], reactor.connectors[0]
    factory.clientConnectionFailed(connector, Failure(error.UserError()))
    assert success(d).outcomes == {"127.0.0.1": Outcome.TIMED_OUT}
    assert reactor.getDelayedCalls() == []


def test_an_answer_read_in_that_turn_wins_over_the_timeout() -> None:
    """Under load the timer can fire before the reactor reads an answer the
    kernel already has; that answer is what the probe reports."""
    reactor = memory_reactor()
    d = txportend.probe("127.0.0.1", 22, timeout=1.0, reactor=reactor)
    _timer_fires(reactor)
    accept(reactor)  # read by the poll in that turn
    assert success(d).outcomes == {"127.0.0.1": Outcome.ACCEPTED}
    assert reactor.getDelayedCalls() == []
    reactor.advance(0)
    assert not reactor.connectors[0].stoppedConnecting


@pytest.mark.parametrize("call", ["bind", "listen"])
@pytest.mark.parametrize("code", [errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL])
def test_can_bind_says_false_for_address_errors(
    bind_script: BindScript, call: str, code: int
) -> None:
    """In use, not permitted, not local: the port can't be had here now."""
    bind_script.errors[(call, "tcp", "127.0.0.1")] = code
    assert success(txportend.can_bind("127.0.0.1", 80)) is False


def test_a_name_is_bindable_only_on_every_address(bind_script: BindScript) -> None:
    reactor = memory_reactor({"both": ["127.0.0.1", "::1"]})
    bind_script.errors[("bind", "tcp", "::1")] = errno.EADDRINUSE
    assert success(txportend.can_bind("both", 80, reactor=reactor)) is False


@pytest.mark.parametrize(
    "where",
    [
        ("socket", "tcp", "v4"),
        ("bind", "tcp", "127.0.0.1"),
        ("listen", "tcp", "127.0.0.1"),
    ],
)
def test_errors_that_say_nothing_about_the_port_fail_with_cannot_listen(
    bind_script: BindScript, where: tuple[str, str, str]
) -> None:
    """EMFILE says nothing about the port: the Deferred fails with
    CannotListenError(interface, port, the OSError), as listenTCP raises."""
    bind_script.errors[where] = errno.EMFILE
    e = failure(txportend.can_bind("127.0.0.1", 80), error.CannotListenError).value
    assert (e.interface, e.port, e.socketError.errno) == ("127.0.0.1", 80, errno.EMFILE)
    e = failure(txportend.find_available_local_port(), error.CannotListenError).value
    assert (e.interface, e.port, e.socketError.errno) == ("127.0.0.1", 0, errno.EMFILE)


def test_can_bind_refuses_a_bad_port_before_binding(bind_script: BindScript) -> None:
    with pytest.raises(ValueError, match="port"):
        txportend.can_bind("127.0.0.1", 70000)
    assert bind_script.calls == []


# -- binding leaves nothing behind and logs nothing -----------------------------

needs_proc_fd = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd"
)


@needs_proc_fd
@pytest.mark.parametrize(
    ("where", "code", "result"),
    [
        (None, None, True),
        (("socket", "tcp", "v4"), errno.EMFILE, error.CannotListenError),
        (("bind", "tcp", "127.0.0.1"), errno.EADDRINUSE, False),
        (("bind", "tcp", "127.0.0.1"), errno.ENOBUFS, error.CannotListenError),
        (("listen", "tcp", "127.0.0.1"), errno.EADDRINUSE, False),
        (("listen", "tcp", "127.0.0.1"), errno.ENOBUFS, error.CannotListenError),
    ],
)
def test_no_fd_is_left_behind(
    bind_script: BindScript,
    where: tuple[str, str, str] | None,
    code: int | None,
    result: object,
) -> None:
    """Whichever call fails, the socket is closed."""
    if where is not None and code is not None:
        bind_script.errors[where] = code
    before = open_fds()
    d = txportend.can_bind("127.0.0.1", 80)
    if isinstance(result, type):
        failure(d, result)
    else:
        assert success(d) is result
    d = txportend.find_available_local_port()  # any error fails it
    if result is True:
        success(d)
    else:
        failure(d, error.CannotListenError)
    assert open_fds() - before == set()
    assert all(s.fileno() == -1 for s in bind_script.sockets)
    assert len(bind_script.sockets) == (0 if where and where[0] == "socket" else 2)


@needs_proc_fd
def test_no_fd_is_left_behind_by_real_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    """On real sockets: free, in use, a scope that names no interface."""
    made: list[socket.socket] = []
    real = _sockets.new_socket

    def recording(family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
        made.append(real(family, kind))
        return made[-1]

    monkeypatch.setattr(_sockets, "new_socket", recording)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        held = holder.getsockname()[1]
        before = open_fds()
        assert success(txportend.can_bind("127.0.0.1", held)) is False
        free = success(txportend.find_available_local_port())
        assert success(txportend.can_bind("127.0.0.1", free)) is True
        failure(txportend.can_bind("fe80::1%99999", free), error.CannotListenError)
        assert open_fds() - before == set()
    assert len(made) >= 3  # 4 where IPv6 sockets can be made
    assert all(s.fileno() == -1 for s in made)


@pytest_twisted.ensureDeferred
async def test_binding_logs_nothing(reactor: Any) -> None:
    """Not even Twisted's "starting on" and "Port closed" lines: a check
    that only looks must not write to the application's log."""
    hosts = ["127.0.0.1", "::1"] if has_ipv6_loopback() else ["127.0.0.1"]
    with capturedLogs() as events:
        port = await txportend.find_available_local_port(reactor=reactor)
        for host in hosts:
            assert await txportend.can_bind(host, port, reactor=reactor) is True
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            assert await txportend.can_bind("127.0.0.1", port, reactor=reactor) is False
    assert events == []


@pytest.mark.parametrize(
    "holder",
    ["listening", "bound", "bound with SO_REUSEADDR", "bound on 0.0.0.0", "none"],
)
@pytest_twisted.ensureDeferred
async def test_can_bind_answers_as_listen_tcp_does(reactor: Any, holder: str) -> None:
    """The same answer as Twisted's listenTCP for the same port, which it
    used to call: a port held in each way, and a free one."""
    from twisted.internet.protocol import Factory, Protocol

    with socket.socket() as other:
        if holder == "bound with SO_REUSEADDR":
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("0.0.0.0" if holder == "bound on 0.0.0.0" else "127.0.0.1", 0))
        port = other.getsockname()[1]
        if holder == "listening":
            other.listen(1)
        if holder == "none":
            other.close()
        ours = await txportend.can_bind("127.0.0.1", port)
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        try:
            listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except error.CannotListenError:
            twisteds = False
        else:
            await listening.stopListening()
            twisteds = True
    assert ours is twisteds
    assert ours is (holder in ("bound with SO_REUSEADDR", "none"))


# -- a timeout bounds the whole call, name lookup included -------------------------


def test_probe_timeout_bounds_the_name_lookup() -> None:
    reactor = memory_reactor({"slow": ["127.0.0.1"]}, hold=True)
    d = txportend.probe("slow", 80, timeout=1, reactor=reactor)
    reactor.advance(0.999)
    assert not d.called
    reactor.advance(0.001)
    error = failure(d, txportend.HostNotFound).value
    assert error.strerror == "The lookup of 'slow' did not finish within 1 s."
    reactor.nameResolver.answer()  # the late answer is dropped
    assert attempts(reactor) == []
    assert reactor.getDelayedCalls() == []


def test_the_connection_gets_what_the_lookup_left() -> None:
    reactor = memory_reactor({"slow": ["127.0.0.1"]}, hold=True)
    d = txportend.probe("slow", 80, timeout=1, reactor=reactor)
    reactor.advance(0.75)
    reactor.nameResolver.answer()
    assert [c[2].timeout for c in reactor.tcpClients] == [0.25]
    refuse(reactor)
    assert success(d).state is txportend.State.FREE
    assert reactor.getDelayedCalls() == []


def test_probe_takes_a_timedelta() -> None:
    import datetime

    reactor = memory_reactor()
    d = txportend.probe(
        "127.0.0.1", 80, timeout=datetime.timedelta(seconds=2), reactor=reactor
    )
    assert [c[2].timeout for c in reactor.tcpClients] == [2.0]
    refuse(reactor)
    success(d)


def test_can_bind_timeout_bounds_the_name_lookup(bind_script: BindScript) -> None:
    reactor = memory_reactor({"slow": ["127.0.0.1"]}, hold=True)
    d = txportend.can_bind("slow", 80, timeout=2, reactor=reactor)
    reactor.advance(2)
    assert "did not finish within 2 s" in str(failure(d, txportend.HostNotFound).value)
    reactor.nameResolver.answer()
    assert bind_script.calls == []
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ({"127.0.0.1": Outcome.ACCEPTED}, "occupied"),
        ({"127.0.0.1": Outcome.TIMED_OUT}, "occupied"),  # a full accept queue
        ({"::1": Outcome.TIMED_OUT, "10.0.0.1": Outcome.REFUSED}, "occupied"),
        ({"10.0.0.1": Outcome.TIMED_OUT}, "free"),  # as portend
        ({"127.0.0.1": Outcome.REFUSED, "::1": Outcome.UNREACHABLE}, "free"),
        ({"10.0.0.1": Outcome.REFUSED, "10.0.0.2": Outcome.ACCEPTED}, "occupied"),
    ],
)
def test_one_judgement_of_a_probe(outcomes: dict[str, Outcome], state: str) -> None:
    result = txportend.ProbeResult("h", 80, outcomes)
    assert result.state is txportend.State(state)
    assert (result.occupied_on() is None) == (state == "free")
