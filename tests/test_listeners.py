"""
The kernel's listening table as a hint, the watcher that reads it for many
waits at once, and the process-wide probe budget.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import txportend
from txportend._listeners import (
    WATCH_PAUSE,
    WATCH_THRESHOLD,
    ListenWatcher,
    listening_ports,
)
from txportend._pacing import PROBE_BUDGET, PROBE_BURST, WATCHED_PROBE_BUDGET, Pacing

from .fakes import accept, attempts, memory_reactor, refuse, unreachable

_tc = SynchronousTestCase()
success = _tc.successResultOf
no_result = _tc.assertNoResult


def test_listening_ports_lists_a_listening_socket_and_not_a_closed_one() -> None:
    with socket.socket() as server, socket.socket() as bound:
        server.bind(("127.0.0.1", 0))
        server.listen()
        bound.bind(("127.0.0.1", 0))  # bound, not listening
        ports = listening_ports()
        if ports is None:
            pytest.skip("the kernel's listening table can't be read here")
        assert server.getsockname()[1] in ports
        assert bound.getsockname()[1] not in ports


class Table:
    """A listening table the test edits; counts readings."""

    def __init__(self) -> None:
        self.ports: set[int] = set()
        self.readings = 0
        self.available = True

    def read(self) -> frozenset[int] | None:
        self.readings += 1
        return frozenset(self.ports) if self.available else None


def _watcher(clock: Clock, table: Table) -> ListenWatcher:
    # Readings cost nothing on this clock: no wall time in the tests.
    return ListenWatcher(clock, read=table.read, timer=clock.seconds)


def test_watcher_reads_only_with_enough_subscribers() -> None:
    clock, table = Clock(), Table()
    watcher = _watcher(clock, table)
    for n in range(WATCH_THRESHOLD - 1):
        watcher.subscribe(1000 + n, n, lambda listening: None)
    clock.advance(1)
    assert table.readings == 0
    watcher.subscribe(2000, "last", lambda listening: None)
    clock.advance(0)
    assert table.readings == 1
    watcher.unsubscribe(2000, "last")
    clock.advance(WATCH_PAUSE)  # the next turn stops, without reading
    assert table.readings == 1
    assert clock.getDelayedCalls() == []


def test_watcher_calls_back_on_changes_only() -> None:
    clock, table = Clock(), Table()
    watcher = _watcher(clock, table)
    seen: list[tuple[int, bool]] = []
    for n in range(WATCH_THRESHOLD):
        watcher.subscribe(
            1000 + n, n, lambda listening, p=1000 + n: seen.append((p, listening))
        )
    clock.advance(0)  # first reading: everyone learns the state
    assert sorted(seen) == [(1000 + n, False) for n in range(WATCH_THRESHOLD)]
    seen.clear()
    clock.advance(WATCH_PAUSE)
    assert seen == []
    table.ports.add(1003)
    clock.advance(WATCH_PAUSE)
    assert seen == [(1003, True)]
    table.ports.clear()
    clock.advance(WATCH_PAUSE)
    assert seen == [(1003, True), (1003, False)]


def test_watcher_gives_up_where_the_table_is_unreadable() -> None:
    clock, table = Clock(), Table()
    table.available = False
    watcher = _watcher(clock, table)
    for n in range(WATCH_THRESHOLD):
        watcher.subscribe(n + 1, n, lambda listening: None)
    clock.advance(0)
    assert not watcher.available
    assert clock.getDelayedCalls() == []
    watcher.subscribe(99, "more", lambda listening: None)
    assert clock.getDelayedCalls() == []


def test_watcher_pause_is_capped() -> None:
    clock, table = Clock(), Table()
    watcher = _watcher(clock, table)
    for n in range(WATCH_THRESHOLD):
        watcher.subscribe(n + 1, n, lambda listening: None)
    for _ in range(300):  # bounded
        clock.advance(WATCH_PAUSE)
    # Never a longer pause than the cap: one reading at each step.
    assert table.readings == 300
    for n in range(WATCH_THRESHOLD):
        watcher.unsubscribe(n + 1, n)
    assert clock.getDelayedCalls() == []


def _cancel(d: Any) -> None:
    """Cancel a wait, and take its CancelledError."""
    d.cancel()
    d.addErrback(lambda failure: failure.trap(CancelledError))


def _many_waits(table: Table, count: int, **kw: Any) -> tuple[Any, list[Any]]:
    reactor = memory_reactor()
    Pacing.of(reactor).watcher = ListenWatcher(
        reactor, read=table.read, timer=reactor.seconds
    )
    waits = [
        txportend.occupied("127.0.0.1", 1000 + n, timeout=60, reactor=reactor, **kw)
        for n in range(count)
    ]
    return reactor, waits


def test_many_waits_share_the_probe_budget() -> None:
    """With N waits each pauses at least N / PROBE_BUDGET between probes."""
    count = 50
    reactor, waits = _many_waits(Table(), count, interval=0)
    for n in range(count):
        refuse(reactor, n)
    pauses = [c.getTime() - reactor.seconds() for c in reactor.getDelayedCalls()]
    next_probes = [
        p for p in pauses if 0 < p < 60
    ]  # not the deadlines, nor the watcher
    assert len(next_probes) == count
    assert min(next_probes) == pytest.approx(count / PROBE_BUDGET)
    for d in waits:
        _cancel(d)
    assert reactor.getDelayedCalls() == []
    assert Pacing.of(reactor).active == 0


def test_the_table_wakes_a_wait_before_its_turn() -> None:
    table = Table()
    reactor, waits = _many_waits(table, WATCH_THRESHOLD, interval=30)
    for n in range(WATCH_THRESHOLD):
        refuse(reactor, n)  # each subscribes, and pauses 30 s
    reactor.advance(0)  # the watcher's first reading
    assert len(attempts(reactor)) == WATCH_THRESHOLD
    table.ports.add(1002)
    reactor.advance(WATCH_PAUSE)
    assert attempts(reactor)[-1] == ("127.0.0.1", 1002)  # probed at once
    accept(reactor)
    success(waits[2])
    no_result(waits[3])
    for d in waits:
        _cancel(d)
    assert reactor.getDelayedCalls() == []


def test_a_hint_during_a_probe_probes_again_after_it() -> None:
    table = Table()
    reactor, waits = _many_waits(table, WATCH_THRESHOLD, interval=30)
    for n in range(WATCH_THRESHOLD):
        refuse(reactor, n)
    reactor.advance(30)  # every wait has a probe in flight now
    assert len(attempts(reactor)) == 2 * WATCH_THRESHOLD
    table.ports.add(1000)
    reactor.advance(WATCH_PAUSE)  # the hint arrives mid-probe
    refuse(reactor, WATCH_THRESHOLD)  # that probe started too early
    reactor.advance(0)
    assert attempts(reactor)[-1] == ("127.0.0.1", 1000)
    accept(reactor)
    success(waits[0])
    for d in waits:
        _cancel(d)


def test_remote_waits_do_not_subscribe() -> None:
    reactor = memory_reactor({"db": ["192.0.2.10"]})
    d = txportend.occupied("db", 5432, reactor=reactor)
    refuse(reactor)
    assert Pacing.of(reactor).watcher._count == 0
    _cancel(d)


def test_first_probes_beyond_the_burst_are_spread() -> None:
    reactor = memory_reactor()
    Pacing.of(reactor).watcher = ListenWatcher(reactor, read=lambda: None)
    waits = [
        txportend.occupied("127.0.0.1", 1 + n, timeout=60, reactor=reactor)
        for n in range(PROBE_BURST + 3)
    ]
    assert len(attempts(reactor)) == PROBE_BURST
    reactor.advance(1 / PROBE_BUDGET)
    assert attempts(reactor)[-1] == ("127.0.0.1", PROBE_BURST + 1)
    reactor.advance(2 / PROBE_BUDGET)
    assert len(attempts(reactor)) == PROBE_BURST + 3
    for d in waits:
        _cancel(d)
    assert reactor.getDelayedCalls() == []


def test_a_spread_first_probe_still_decides_a_zero_timeout() -> None:
    reactor = memory_reactor()
    Pacing.of(reactor).watcher = ListenWatcher(reactor, read=lambda: None)
    crowd = [
        txportend.occupied("127.0.0.1", 1 + n, reactor=reactor)
        for n in range(PROBE_BURST)
    ]
    d = txportend.occupied("127.0.0.1", 9999, timeout=0, reactor=reactor)
    assert ("127.0.0.1", 9999) not in attempts(reactor)
    reactor.advance(0)
    assert attempts(reactor)[-1] == ("127.0.0.1", 9999)
    no_result(d)
    accept(reactor)
    success(d)
    for w in crowd:
        _cancel(w)


def test_watcher_rides_out_a_passing_failure() -> None:
    clock, table = Clock(), Table()
    watcher = _watcher(clock, table)
    seen: list[bool] = []
    for n in range(WATCH_THRESHOLD):
        watcher.subscribe(
            1000 + n, n, lambda listening, n=n: n == 0 and seen.append(listening)
        )
    clock.advance(0)
    table.available = False
    clock.advance(WATCH_PAUSE)
    assert watcher.available
    table.available = True
    table.ports.add(1000)
    clock.advance(WATCH_PAUSE)
    assert seen == [False, True]
    for n in range(WATCH_THRESHOLD):
        watcher.unsubscribe(1000 + n, n)


def _next_probe_pauses(reactor: Any) -> list[float]:
    now = reactor.seconds()
    return sorted(
        c.getTime() - now for c in reactor.getDelayedCalls() if c.getTime() - now < 60
    )


def test_watched_waits_probe_rarely_until_the_table_wakes_them() -> None:
    table = Table()
    reactor, waits = _many_waits(table, WATCH_THRESHOLD, interval=0)
    reactor.advance(0)  # the watcher's first reading: nothing listens
    for n in range(WATCH_THRESHOLD):
        refuse(reactor, n)
    pauses = _next_probe_pauses(reactor)
    assert (
        pauses[-WATCH_THRESHOLD:]
        == [WATCH_THRESHOLD / WATCHED_PROBE_BUDGET] * WATCH_THRESHOLD
    )
    for d in waits:
        _cancel(d)


def test_a_probe_that_misses_a_ready_port_retries_at_the_plain_budget() -> None:
    """The table says listening but the confirming probe missed it (it may
    listen on another address than the one probed, or a connection failed
    under load): that wait retries at the plain budget's pace, neither the
    table's stretched one nor faster than the budget allows."""
    table = Table()
    table.ports.add(1000)
    reactor, waits = _many_waits(table, WATCH_THRESHOLD, interval=0)
    for n in range(1, WATCH_THRESHOLD):
        refuse(reactor, n)  # the others pause on the budget
    reactor.advance(0)  # first reading: the wait on 1000 is woken mid-probe
    unreachable(reactor, 0)
    reactor.advance(0)  # it probes again at once
    unreachable(reactor)  # and misses again
    probe_1000 = waits_probe_of(reactor, 1000)
    (call,) = [c for c in reactor.getDelayedCalls() if c.func == probe_1000]
    plain = WATCH_THRESHOLD / PROBE_BUDGET
    assert call.getTime() - reactor.seconds() == pytest.approx(plain)
    others = _next_probe_pauses(reactor)
    assert max(others) == WATCH_THRESHOLD / PROBE_BUDGET
    for d in waits:
        _cancel(d)


def waits_probe_of(reactor: Any, port: int) -> Any:
    """The bound _probe method of the wait on ``port``."""
    state = Pacing.of(reactor).watcher
    (hints,) = state._subscribers[port].keys()
    return hints._loop._probe  # type: ignore[attr-defined]


def test_shared_state_does_not_keep_a_reactor_alive() -> None:
    import gc
    import weakref

    from txportend._pacing import _default as _shared

    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 80, reactor=reactor)
    _cancel(d)
    d.addErrback(lambda failure: None)
    gone = weakref.ref(reactor)
    assert reactor in _shared
    del reactor, d
    gc.collect()
    assert gone() is None


def test_dropping_below_the_threshold_forgets_the_last_reading() -> None:
    """Even when it happens inside a reading (a hint finishing a wait)."""
    clock, table = Clock(), Table()
    table.ports.add(1000)
    watcher = _watcher(clock, table)

    def finish(listening: bool) -> None:
        if listening:
            watcher.unsubscribe(1000, 0)

    watcher.subscribe(1000, 0, finish)
    for n in range(1, WATCH_THRESHOLD):
        watcher.subscribe(2000 + n, n, lambda listening: None)
    clock.advance(0)
    assert watcher.listening(2001) is None
    assert clock.getDelayedCalls() == []


def _watched_waits(count: int) -> tuple[Table, Any, list[Any]]:
    """``count`` waits the table has seen refused, their pauses stretched on
    its word (count / WATCHED_PROBE_BUDGET)."""
    table = Table()
    reactor, waits = _many_waits(table, count)
    reactor.advance(0)  # the watcher's first reading: nothing listens
    for n in range(count):
        refuse(reactor, n)
    assert max(_next_probe_pauses(reactor)) == count / WATCHED_PROBE_BUDGET
    return table, reactor, waits


def test_waits_left_when_the_watcher_stops_probe_at_their_own_pace() -> None:
    """Most waits finish on one reading and the watcher stops: the few left,
    paced on the table's word (count / WATCHED_PROBE_BUDGET, seconds with
    many waits), go back to the plain budget's pace for the waits left."""
    count = 100
    table, reactor, waits = _watched_waits(count)
    table.ports.update(range(1000, 1000 + count - 1))  # all but the last
    reactor.advance(WATCH_PAUSE)
    for n in range(count, 2 * count - 1):
        accept(reactor, n)  # the hinted probes
    # The watcher's next turn stops it; for the one wait left, the plain
    # budget's pause is long over: it probes at once.
    reactor.advance(WATCH_PAUSE)
    assert attempts(reactor)[-1] == ("127.0.0.1", 1000 + count - 1)
    refuse(reactor)
    assert _next_probe_pauses(reactor)[0] < 0.01  # the default schedule
    for d in waits:
        _cancel(d)
    assert reactor.getDelayedCalls() == []


def test_a_table_turning_unreadable_does_not_make_every_wait_probe_at_once() -> None:
    """The waits go back to the plain budget (count / PROBE_BUDGET from when
    their pause began), keeping their places, not all in one turn."""
    count = 100
    table, reactor, waits = _watched_waits(count)
    table.available = False
    for _ in range(10):  # bounded: the watcher gives up after a few failures
        reactor.advance(WATCH_PAUSE)
    assert not Pacing.of(reactor).watcher.available
    assert len(attempts(reactor)) == count  # no probe in the meantime
    elapsed = 10 * WATCH_PAUSE
    pauses = [p for p in _next_probe_pauses(reactor) if p < 1]  # not deadlines
    assert len(pauses) == count
    assert all(p == pytest.approx(count / PROBE_BUDGET - elapsed) for p in pauses)
    for d in waits:
        _cancel(d)
    assert reactor.getDelayedCalls() == []


def test_a_failing_callback_does_not_stop_the_readings() -> None:
    clock, table = Clock(), Table()
    watcher = _watcher(clock, table)

    def boom(listening: bool) -> None:
        raise RuntimeError("a bug elsewhere")

    for n in range(WATCH_THRESHOLD):
        watcher.subscribe(1000 + n, n, boom)
    with pytest.raises(RuntimeError):
        clock.advance(0)
    assert len(clock.getDelayedCalls()) == 1  # the next reading is scheduled
    for n in range(WATCH_THRESHOLD):
        watcher.unsubscribe(1000 + n, n)
