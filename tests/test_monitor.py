"""
txportend.Monitor on a MemoryReactorClock, its shared Pacing, and one run on
real loopback sockets.
"""

from __future__ import annotations

import datetime
import errno
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IService, MultiService
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

import txportend
from txportend import Change, Monitor, Outcome, Pacing, State

from .fakes import accept, attempts, memory_reactor, refuse, time_out


def started(
    host: str = "127.0.0.1", port: int = 8080, **kw: Any
) -> tuple[Any, Monitor]:
    reactor = kw.pop("reactor", None) or memory_reactor()
    monitor = Monitor(host, port, reactor=reactor, **kw)
    monitor.startService()
    return reactor, monitor


def changes_of(monitor: Monitor) -> list[Change]:
    seen: list[Change] = []
    monitor.subscribe(seen.append)
    return seen


def test_a_monitor_is_a_service() -> None:
    monitor = Monitor("127.0.0.1", 8080, reactor=memory_reactor())
    assert verifyObject(IService, monitor)
    parent = MultiService()
    monitor.setServiceParent(parent)
    assert list(parent) == [monitor]


def test_unknown_until_the_first_probe_ends() -> None:
    reactor = memory_reactor()
    monitor = Monitor("127.0.0.1", 8080, reactor=reactor)
    seen = changes_of(monitor)
    assert (monitor.state, monitor.since, monitor.last_probe) == (
        State.UNKNOWN,
        None,
        None,
    )
    reactor.advance(5)
    monitor.startService()
    assert attempts(reactor) == [("127.0.0.1", 8080)]  # at once
    assert (monitor.state, monitor.since) == (State.UNKNOWN, 5)
    reactor.advance(0.25)
    refuse(reactor)
    assert monitor.state is State.FREE
    assert seen == [Change("127.0.0.1:8080", State.UNKNOWN, State.FREE, 5.25)]
    assert (monitor.since, monitor.changes) == (5.25, 1)
    last = monitor.last_probe
    assert last is not None and last.result is not None
    assert last.result.outcomes == {"127.0.0.1": Outcome.REFUSED}
    assert (last.at, last.duration, last.error) == (5.25, 0.25, None)
    monitor.stopService()


def test_probes_again_interval_after_each_probe_ends() -> None:
    reactor, monitor = started(interval=10)
    reactor.advance(0.5)
    refuse(reactor)
    reactor.advance(9.999)
    assert len(attempts(reactor)) == 1
    reactor.advance(0.001)
    assert len(attempts(reactor)) == 2
    monitor.stopService()


def test_interval_may_be_a_timedelta_or_a_policy() -> None:
    reactor, monitor = started(interval=datetime.timedelta(seconds=3))
    refuse(reactor)
    reactor.advance(3)
    assert len(attempts(reactor)) == 2
    monitor.stopService()
    reactor, monitor = started(interval=lambda attempt: 1.0 + attempt)
    for n in range(1, 4):  # pauses of 1, 2, 3 s
        refuse(reactor)
        reactor.advance(n - 0.001)
        assert len(attempts(reactor)) == n
        reactor.advance(0.001)
        assert len(attempts(reactor)) == n + 1
    monitor.stopService()


def test_probes_never_overlap_while_one_hangs() -> None:
    """A probe that gets no answer holds the next one back until its own
    timeout ends it."""
    reactor, monitor = started(interval=0.1, timeout=5)
    reactor.advance(4.9)
    assert len(attempts(reactor)) == 1
    reactor.advance(0.1)  # the probe's timeout: one more turn to read it
    reactor.advance(0)
    assert monitor.state is State.OCCUPIED  # no answer from loopback
    assert len(attempts(reactor)) == 1
    reactor.advance(1.0)  # a full queue: at least a second between probes
    assert len(attempts(reactor)) == 2
    monitor.stopService()


def test_observers_get_each_change_once() -> None:
    reactor, monitor = started(interval=1)
    seen = changes_of(monitor)
    for step, expected in [
        (refuse, State.FREE),
        (refuse, State.FREE),
        (accept, State.OCCUPIED),
        (accept, State.OCCUPIED),
        (refuse, State.FREE),
    ]:
        step(reactor)
        assert monitor.state is expected
        reactor.advance(1)
    assert [(c.old, c.new) for c in seen] == [
        (State.UNKNOWN, State.FREE),
        (State.FREE, State.OCCUPIED),
        (State.OCCUPIED, State.FREE),
    ]
    assert monitor.changes == 3
    monitor.stopService()


def test_an_observer_that_raises_is_logged_and_the_others_go_on() -> None:
    reactor, monitor = started(interval=1)

    def broken(change: Change) -> None:
        raise RuntimeError("observer bug")

    monitor.subscribe(broken)
    seen = changes_of(monitor)
    with capturedLogs() as events:
        refuse(reactor)
    assert len(seen) == 1
    (event,) = [e for e in events if "log_failure" in e]
    assert event["log_failure"].check(RuntimeError)
    reactor.advance(1)
    accept(reactor)  # the monitor goes on
    assert len(seen) == 2
    monitor.stopService()


def test_unsubscribe() -> None:
    reactor, monitor = started(interval=1)
    seen: list[Change] = []
    unsubscribe = monitor.subscribe(seen.append)
    unsubscribe()
    unsubscribe()  # a second call does nothing
    refuse(reactor)
    assert seen == []
    monitor.stopService()


def test_a_name_that_does_not_resolve_is_unknown_and_retried() -> None:
    reactor = memory_reactor({"db": []})
    _, monitor = started("db", 5432, interval=1, reactor=reactor)
    seen = changes_of(monitor)
    assert monitor.state is State.UNKNOWN and seen == []
    last = monitor.last_probe
    assert last is not None and last.result is None
    assert isinstance(last.error, txportend.HostNotFound)
    reactor.nameResolver.table["db"] = ["127.0.0.1"]
    reactor.advance(1)
    accept(reactor)
    assert monitor.state is State.OCCUPIED
    monitor.stopService()


def test_a_lookup_that_never_answers_is_unknown_after_the_timeout() -> None:
    """The probe's timeout bounds the whole probe, name lookup included."""
    reactor = memory_reactor({"db": ["127.0.0.1"]}, hold=True)
    _, monitor = started("db", 5432, interval=1, timeout=2, reactor=reactor)
    accept_later = changes_of(monitor)
    reactor.advance(2)
    last = monitor.last_probe
    assert last is not None and isinstance(last.error, txportend.HostNotFound)
    assert "did not finish within 2 s" in str(last.error)
    assert (monitor.state, last.duration) == (State.UNKNOWN, 2)
    assert accept_later == []
    monitor.stopService()
    assert reactor.getDelayedCalls() == []


def test_a_local_error_is_logged_and_unknown_never_free() -> None:
    """Out of file descriptors says nothing about the port."""
    reactor = memory_reactor()

    def no_fds(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    reactor.connectTCP = no_fds
    with capturedLogs() as events:
        _, monitor = started(interval=1, reactor=reactor)
    assert monitor.state is State.UNKNOWN
    (event,) = [e for e in events if "log_failure" in e]
    assert event["log_failure"].check(OSError)
    monitor.stopService()


def test_ipv6_targets_are_named_in_brackets() -> None:
    _, monitor = started("::1", 8080)
    assert monitor.target == "[::1]:8080"
    seen = changes_of(monitor)
    monitor.stopService()
    assert seen == []


@pytest.mark.parametrize("moment", ["probing", "pausing", "spread", "stopped"])
def test_stopping_at_any_moment_leaves_nothing(moment: str) -> None:
    reactor = memory_reactor()
    pacing = Pacing(reactor, burst=0)  # so even the first probe is spread
    monitor = Monitor("127.0.0.1", 8080, interval=1, reactor=reactor, pacing=pacing)
    monitor.startService()
    if moment != "spread":
        reactor.advance(1 / pacing.budget)
        assert len(attempts(reactor)) == 1
    if moment in ("pausing", "stopped"):
        refuse(reactor)
    if moment == "stopped":
        monitor.stopService()
    monitor.stopService()
    assert reactor.getDelayedCalls() == []
    assert pacing.active == 0
    assert all(not c.getDelayedCalls() for c in [reactor])
    if moment == "probing":
        assert reactor.connectors[0].stoppedConnecting


def test_restarting_keeps_state_and_counters() -> None:
    reactor, monitor = started(interval=1)
    accept(reactor)
    monitor.stopService()
    monitor.startService()
    assert (monitor.state, monitor.changes) == (State.OCCUPIED, 1)
    refuse(reactor)
    assert (monitor.state, monitor.changes) == (State.FREE, 2)
    monitor.stopService()


def test_a_broken_interval_policy_stops_probing_and_is_logged() -> None:
    def policy(attempt: int) -> float:
        raise ZeroDivisionError

    with capturedLogs() as events:
        reactor, monitor = started(interval=policy)
        refuse(reactor)
    assert monitor.state is State.UNKNOWN
    assert reactor.getDelayedCalls() == []
    assert any(
        e.get("log_failure") and e["log_failure"].check(ZeroDivisionError)
        for e in events
    )
    monitor.stopService()


@pytest.mark.parametrize(
    "kw",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": float("inf")},
        {"timeout": float("nan")},
        {"interval": -1},
        {"interval": float("nan")},
    ],
)
def test_bad_durations_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Monitor("127.0.0.1", 8080, reactor=memory_reactor(), **kw)


def test_many_monitors_spread_their_first_probes() -> None:
    """Monitors at 10 s, ten times the budget: no more than the burst in one
    turn, then the budget's pace, one probe per slot (10,000 monitors and
    the default budget scaled down by 10, to keep the test quick)."""
    reactor = memory_reactor()
    pacing = Pacing(reactor, budget=100, burst=10)
    count = 1_000
    monitors = [
        Monitor("127.0.0.1", 1 + n, interval=10, reactor=reactor, pacing=pacing)
        for n in range(count)
    ]
    for monitor in monitors:
        monitor.startService()
    assert len(attempts(reactor)) == pacing.burst
    for n in range(pacing.burst):
        refuse(reactor, n)
    per_ms = []
    for _ in range(int(10 * pacing.budget)):  # bounded: 10 s of slots
        before = len(attempts(reactor))
        reactor.advance(1 / pacing.budget)
        made = len(attempts(reactor)) - before
        per_ms.append(made)
        for index in range(before, before + made):
            refuse(reactor, index)
    assert sum(per_ms) >= count - pacing.burst
    assert max(per_ms) <= 2
    for monitor in monitors:
        monitor.stopService()
    assert reactor.getDelayedCalls() == []
    assert pacing.active == 0


def test_pacing_refills_its_burst_over_time() -> None:
    reactor = memory_reactor()
    pacing = Pacing(reactor, budget=10, burst=2)
    assert [pacing.join() for _ in range(4)] == [0, 0, 0.1, 0.2]
    reactor.advance(10)
    assert pacing.join() == 0
    assert pacing.active == 5
    for _ in range(5):
        pacing.leave()
    assert pacing.pause(0.01) == 0.01


def test_waits_take_a_pacing_of_their_own() -> None:
    reactor = memory_reactor()
    pacing = Pacing(reactor, burst=0, budget=10)
    d = txportend.occupied("127.0.0.1", 80, reactor=reactor, pacing=pacing)
    assert attempts(reactor) == []
    reactor.advance(0.1)
    assert attempts(reactor) == [("127.0.0.1", 80)]
    accept(reactor)
    assert d.called and pacing.active == 0
    assert Pacing.of(reactor).active == 0


def test_a_full_accept_queue_slows_a_free_wait() -> None:
    """No answer from loopback: the server is not accepting; its queue's
    free places go to its clients, not to probes (one a second)."""
    reactor = memory_reactor()
    d = txportend.free("127.0.0.1", 80, reactor=reactor)
    time_out(reactor)
    reactor.advance(0.999)
    assert len(attempts(reactor)) == 1
    reactor.advance(0.001)
    assert len(attempts(reactor)) == 2
    refuse(reactor)
    assert d.called


@pytest_twisted.ensureDeferred
async def test_a_real_port_opened_and_closed_gives_exactly_those_changes(
    reactor: Any,
) -> None:
    from twisted.internet.protocol import Factory, Protocol

    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    monitor = Monitor("127.0.0.1", port, interval=0.01, timeout=1, reactor=reactor)
    reached: dict[State, Deferred[Change]] = {}

    def seen(change: Change) -> None:
        waiter = reached.pop(change.new, None)
        if waiter is not None:
            waiter.callback(change)

    def next_change(state: State) -> Deferred[Change]:
        reached[state] = Deferred()
        return reached[state]

    changes = changes_of(monitor)
    monitor.subscribe(seen)
    free = next_change(State.FREE)
    monitor.startService()
    try:
        await free
        for _ in range(3):
            up = next_change(State.OCCUPIED)
            listening = reactor.listenTCP(
                port, Factory.forProtocol(Protocol), interface="127.0.0.1"
            )
            await up
            down = next_change(State.FREE)
            await listening.stopListening()
            await down
    finally:
        monitor.stopService()
    assert [c.new for c in changes] == [State.FREE] + [
        State.OCCUPIED,
        State.FREE,
    ] * 3
    assert monitor.changes == 7


def test_failure_values_are_not_free() -> None:
    """Whatever a probe fails with, the state is never FREE for want of an
    answer."""
    reactor, monitor = started(interval=1)
    refuse(reactor)
    assert monitor.state is State.FREE
    reactor.advance(1)
    factory = reactor.tcpClients[-1][2]
    factory.result.errback(Failure(error.ConnectError("odd")))
    assert monitor.state is State.UNKNOWN
    monitor.stopService()


def test_probes_are_counted_by_outcome() -> None:
    reactor = memory_reactor({"db": []})
    _, monitor = started("db", 5432, interval=1, reactor=reactor)  # unresolved
    reactor.nameResolver.table["db"] = ["127.0.0.1", "::1"]
    for step in (refuse, accept, time_out):
        reactor.advance(1)
        step(reactor, -2)
        refuse(reactor, -1)
    assert monitor.probes == {
        "accepted": 1,
        "refused": 1,
        "timed_out": 1,
        "unreachable": 0,
        "unresolved": 1,
        "error": 0,
    }
    monitor.stopService()
