"""
probe(), can_bind() and find_available_local_port() on a MemoryReactorClock.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

import txportend
from txportend import Outcome

from .fakes import accept, attempts, memory_reactor, refuse, time_out, unreachable

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


def test_can_bind_binds_then_closes() -> None:
    reactor = memory_reactor({"both": ["127.0.0.1", "::1"]})
    assert success(txportend.can_bind("both", 8080, reactor=reactor)) is True
    assert [(p, i) for p, _f, _b, i in reactor.tcpServers] == [
        (8080, "127.0.0.1"),
        (8080, "::1"),
    ]


def test_can_bind_a_bind_all_address_binds_it_as_is() -> None:
    reactor = memory_reactor()
    assert success(txportend.can_bind("0.0.0.0", 8080, reactor=reactor)) is True
    assert reactor.tcpServers[0][3] == "0.0.0.0"


def test_find_available_local_port_uses_listen_tcp_zero() -> None:
    reactor = MemoryReactorClock()
    d = txportend.find_available_local_port(reactor=reactor)
    assert reactor.tcpServers[0][0] == 0
    assert reactor.tcpServers[0][3] == "127.0.0.1"
    assert isinstance(success(d), int)


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


def test_can_bind_reports_only_address_errors_as_false() -> None:
    """EMFILE says nothing about the port: the Deferred fails with it."""
    import errno as errno_

    busy: Any = RaisingMemoryReactor(
        listenException=error.CannotListenError(
            "127.0.0.1", 80, OSError(errno_.EADDRINUSE, "in use")
        )
    )
    assert success(txportend.can_bind("127.0.0.1", 80, reactor=busy)) is False
    full: Any = RaisingMemoryReactor(
        listenException=error.CannotListenError(
            "127.0.0.1", 80, OSError(errno_.EMFILE, "Too many open files")
        )
    )
    failure(txportend.can_bind("127.0.0.1", 80, reactor=full), error.CannotListenError)
    failure(txportend.find_available_local_port(reactor=full), error.CannotListenError)
    with pytest.raises(ValueError, match="port"):
        txportend.can_bind("127.0.0.1", 70000, reactor=busy)


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


def test_can_bind_timeout_bounds_the_name_lookup() -> None:
    reactor = memory_reactor({"slow": ["127.0.0.1"]}, hold=True)
    d = txportend.can_bind("slow", 80, timeout=2, reactor=reactor)
    reactor.advance(2)
    assert "did not finish within 2 s" in str(failure(d, txportend.HostNotFound).value)
    reactor.nameResolver.answer()
    assert reactor.tcpServers == []
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
