"""
occupied, free, assert_free and Checker, driven on a MemoryReactorClock.
"""

from __future__ import annotations

import datetime
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

import txportend
from txportend._wait import FREE_PROBE_TIMEOUT, OCCUPIED_PROBE_TIMEOUT

from .fakes import accept, attempts, memory_reactor, refuse, time_out, unreachable

_tc = SynchronousTestCase()
success = _tc.successResultOf
failure = _tc.failureResultOf
no_result = _tc.assertNoResult


def test_occupied_fires_when_a_later_probe_is_accepted() -> None:
    reactor = memory_reactor()
    d = txportend.occupied("localhost", 8080, reactor=reactor)
    assert attempts(reactor) == [("127.0.0.1", 8080)]
    refuse(reactor)
    no_result(d)
    reactor.advance(txportend.default_interval(0))
    assert len(attempts(reactor)) == 2
    accept(reactor)
    assert success(d) is None
    assert reactor.getDelayedCalls() == []


def test_occupied_probe_closes_the_accepted_connection() -> None:
    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 8080, reactor=reactor)
    transport = accept(reactor)
    success(d)
    assert transport.disconnecting


def test_occupied_times_out_with_portends_message() -> None:
    reactor = memory_reactor()
    d = txportend.occupied("localhost", 8080, timeout=1, reactor=reactor)
    for _ in range(1000):  # bounded: the deadline comes long before
        if d.called:
            break
        refuse(reactor)
        reactor.advance(0.05)
    f = failure(d, txportend.Timeout)
    assert str(f.value) == "Port 8080 not bound on localhost."
    assert isinstance(f.value, OSError)
    assert reactor.getDelayedCalls() == []
    # Each turn refuses the probe in flight and lets the next one start, so
    # the deadline found one in flight: the timeout stopped it.
    assert len(attempts(reactor)) > 2
    assert reactor.connectors[-1].stoppedConnecting


def test_free_times_out_with_portends_message() -> None:
    reactor = memory_reactor()
    d = txportend.free("localhost", 8080, timeout=0.5, reactor=reactor)
    for _ in range(1000):
        if d.called:
            break
        accept(reactor)
        reactor.advance(0.05)
    f = failure(d, txportend.Timeout)
    assert str(f.value) == "Port 8080 not free on localhost."
    assert reactor.getDelayedCalls() == []


def test_deadline_during_a_probe_cancels_it() -> None:
    """After the first probe, the deadline stops a probe still in flight."""
    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 8080, timeout=0.01, reactor=reactor)
    refuse(reactor)
    reactor.advance(0.005)
    assert len(attempts(reactor)) == 2  # second probe in flight
    reactor.advance(0.005)
    failure(d, txportend.Timeout)
    assert reactor.connectors[-1].stoppedConnecting
    assert reactor.getDelayedCalls() == []


def test_timeout_zero_checks_once() -> None:
    """timeout=0 still lets one probe complete, as portend does."""
    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 8080, timeout=0, reactor=reactor)
    reactor.advance(0)
    no_result(d)
    accept(reactor)
    success(d)

    d = txportend.occupied("127.0.0.1", 8080, timeout=0, reactor=reactor)
    reactor.advance(0)
    refuse(reactor)
    failure(d, txportend.Timeout)
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize(
    "timeout",
    [2, 2.0, datetime.timedelta(seconds=2)],
    ids=["int", "float", "timedelta"],
)
def test_timeout_forms(timeout: object) -> None:
    reactor = memory_reactor()
    d = txportend.free("127.0.0.1", 80, timeout=timeout, interval=0.5, reactor=reactor)
    for _ in range(10):
        accept(reactor)
        reactor.advance(0.5)
    assert reactor.seconds() == 5.0
    failure(d, txportend.Timeout)
    assert (
        len(attempts(reactor)) == 4
    )  # at 0, 0.5, 1.0 and 1.5; the deadline wins at 2.0


@pytest.mark.parametrize("timeout", [None, math.inf])
def test_no_timeout_waits_forever(timeout: object) -> None:
    reactor = memory_reactor()
    d = txportend.occupied(
        "127.0.0.1", 80, timeout=timeout, interval=60, reactor=reactor
    )
    for _ in range(100):
        refuse(reactor)
        reactor.advance(60)
    no_result(d)
    # A probe in flight and its handshake timer; no deadline.
    (timer,) = reactor.getDelayedCalls()
    assert timer.getTime() - reactor.seconds() == OCCUPIED_PROBE_TIMEOUT
    d.cancel()
    failure(d, CancelledError)


def test_fixed_interval_spaces_probes() -> None:
    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 80, interval=0.25, reactor=reactor)
    refuse(reactor)
    reactor.advance(0.2)
    assert len(attempts(reactor)) == 1
    reactor.advance(0.05)
    assert len(attempts(reactor)) == 2
    d.cancel()


def test_interval_policy_gets_attempt_numbers() -> None:
    seen: list[int] = []

    def policy(attempt: int) -> float:
        seen.append(attempt)
        return 1.0

    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 80, interval=policy, reactor=reactor)  # type: ignore[arg-type]
    for _ in range(4):
        refuse(reactor)
        reactor.advance(1.0)
    accept(reactor)
    success(d)
    assert seen == [0, 1, 2, 3]


def test_default_interval_starts_fast_and_is_capped() -> None:
    pauses = [txportend.default_interval(n) for n in range(400)]
    assert pauses[0] <= 0.005
    assert all(a <= b for a, b in itertools.pairwise(pauses))
    assert max(pauses) == 0.1
    # Stays within a few ms during the first quarter second of waiting.
    elapsed, n = 0.0, 0
    while elapsed + pauses[n] < 0.25:
        elapsed += pauses[n]
        n += 1
    assert pauses[n] < 0.015


def test_cancel_while_probing_stops_the_connection() -> None:
    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 80, timeout=10, reactor=reactor)
    d.cancel()
    failure(d, CancelledError)
    assert reactor.connectors[0].stoppedConnecting
    assert reactor.getDelayedCalls() == []


def test_cancel_while_pausing_cancels_the_timer() -> None:
    reactor = memory_reactor()
    d = txportend.free("127.0.0.1", 80, timeout=10, reactor=reactor)
    accept(reactor)
    assert len(reactor.getDelayedCalls()) == 2  # next probe and deadline
    d.cancel()
    failure(d, CancelledError)
    assert reactor.getDelayedCalls() == []
    reactor.advance(100)
    assert len(attempts(reactor)) == 1


def test_cancel_while_resolving() -> None:
    reactor = memory_reactor({"db": ["10.0.0.7"]}, hold=True)
    d = txportend.occupied("db", 5432, timeout=5, reactor=reactor)
    d.cancel()
    failure(d, CancelledError)
    assert reactor.getDelayedCalls() == []
    reactor.nameResolver.answer()  # the answer arrives late: ignored
    assert attempts(reactor) == []


def test_every_resolved_address_is_probed() -> None:
    reactor = memory_reactor({"both": ["127.0.0.1", "::1"]})
    d = txportend.occupied("both", 80, reactor=reactor)
    assert attempts(reactor) == [("127.0.0.1", 80), ("::1", 80)]
    refuse(reactor, 0)
    no_result(d)
    accept(reactor, 1)
    success(d)


def test_free_needs_every_address_free() -> None:
    reactor = memory_reactor({"both": ["127.0.0.1", "::1"]})
    d = txportend.free("both", 80, reactor=reactor)
    refuse(reactor, 0)
    accept(reactor, 1)
    no_result(d)
    reactor.advance(txportend.default_interval(0))
    refuse(reactor, 2)
    refuse(reactor, 3)
    success(d)


@pytest.mark.parametrize(
    ("bind", "probed"), [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("::0", "::1")]
)
def test_bind_addresses_are_probed_on_loopback(bind: str, probed: str) -> None:
    reactor = memory_reactor()
    d = txportend.occupied(bind, 80, reactor=reactor)
    assert attempts(reactor) == [(probed, 80)]
    assert reactor.nameResolver.asked == []
    accept(reactor)
    success(d)


def test_occupied_retries_a_name_that_does_not_resolve_yet() -> None:
    table: dict[str, list[str]] = {}
    reactor = memory_reactor(table)
    d = txportend.occupied("db", 5432, timeout=5, interval=1, reactor=reactor)
    reactor.advance(1)
    reactor.advance(1)
    assert reactor.nameResolver.asked == ["db", "db", "db"]
    table["db"] = ["127.0.0.1"]
    reactor.advance(1)
    accept(reactor)
    success(d)


def test_occupied_timeout_says_the_name_did_not_resolve() -> None:
    reactor = memory_reactor({})
    d = txportend.occupied(
        "nowhere.invalid", 80, timeout=1, interval=0.3, reactor=reactor
    )
    reactor.advance(1)
    f = failure(d, txportend.Timeout)
    assert str(f.value) == (
        "Port 80 not bound on nowhere.invalid. The host name did not resolve."
    )
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize("check", ["free", "assert_free"])
def test_free_fails_at_once_for_a_name_that_does_not_resolve(check: str) -> None:
    reactor = memory_reactor({})
    d = getattr(txportend, check)("nowhere.invalid", 80, reactor=reactor)
    f = failure(d, txportend.HostNotFound)
    assert "'nowhere.invalid' did not resolve" in str(f.value)
    import socket

    assert isinstance(f.value, socket.gaierror)
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize("host", [None, ""])
@pytest.mark.parametrize("check", ["occupied", "free", "assert_free", "probe"])
def test_empty_host_is_refused_with_portends_message(host: object, check: str) -> None:
    with pytest.raises(
        ValueError, match=r"^Host values of '' or None are not allowed\.$"
    ):
        getattr(txportend, check)(host, 80, reactor=memory_reactor())


@pytest.mark.parametrize("port", [-1, 65536, "http", None, 1.5j])
def test_bad_port_is_refused(port: object) -> None:
    with pytest.raises(ValueError, match=r"port must be a number in 0\.\.65535"):
        txportend.occupied("localhost", port, reactor=memory_reactor())  # type: ignore[arg-type]


def test_nan_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        txportend.occupied(
            "localhost", 80, timeout=float("nan"), reactor=memory_reactor()
        )


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_bad_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        txportend.occupied("localhost", 80, interval=bad, reactor=memory_reactor())


@pytest.mark.parametrize(
    "timeout", [-1, datetime.timedelta(seconds=-5)], ids=["seconds", "timedelta"]
)
def test_a_negative_timeout_checks_once(timeout: object) -> None:
    """As in portend: a deadline already past still gets one probe."""
    reactor = memory_reactor()
    d = txportend.occupied("127.0.0.1", 80, timeout=timeout, reactor=reactor)
    reactor.advance(0)
    refuse(reactor)
    failure(d, txportend.Timeout)
    assert len(attempts(reactor)) == 1


def _exits(n: int) -> float:
    raise SystemExit(3)


@pytest.mark.parametrize(
    "policy", [lambda n: float("nan"), lambda n: -1.0, lambda n: 1 / 0, _exits]
)
def test_a_broken_interval_policy_fails_the_wait(policy: object) -> None:
    """Instead of leaving a wait with nothing scheduled, forever; even a
    policy raising SystemExit (a BaseException) ends it."""
    reactor = memory_reactor()
    d = txportend.occupied(
        "127.0.0.1", 80, timeout=None, interval=policy, reactor=reactor
    )  # type: ignore[arg-type]
    refuse(reactor)
    failure(d, ValueError, ZeroDivisionError, SystemExit)
    assert reactor.getDelayedCalls() == []


def test_a_lookup_that_never_answers_still_times_out() -> None:
    """The first probe decides a wait past its deadline, but a name lookup
    has no timeout of its own: it gets as long as a probe, then no longer."""
    reactor = memory_reactor({"db": ["127.0.0.1"]}, hold=True)
    d = txportend.occupied("db", 5432, timeout=1, reactor=reactor)
    reactor.advance(1)
    no_result(d)
    reactor.advance(OCCUPIED_PROBE_TIMEOUT)
    # Not a bare "not bound": the wait never learnt whether it is.
    assert str(failure(d, txportend.Timeout).value) == (
        "Port 5432 not bound on db. The lookup of db did not finish."
    )
    assert reactor.getDelayedCalls() == []


def test_an_invalid_name_is_refused_at_once() -> None:
    """getaddrinfo raises UnicodeError for an empty label, which Twisted's
    resolver never reports: check_host refuses it before any lookup."""
    reactor = memory_reactor()
    with pytest.raises(ValueError, match="empty label"):
        txportend.probe("db..local", 80, reactor=reactor)
    assert reactor.nameResolver.asked == []


def test_free_keeps_waiting_while_loopback_gives_no_answer() -> None:
    """On loopback nothing drops packets: no answer means a listener whose
    backlog is full, which is not free (portend would say free)."""
    reactor = memory_reactor()
    d = txportend.free("127.0.0.1", 80, timeout=10, interval=1, reactor=reactor)
    time_out(reactor)
    no_result(d)
    reactor.advance(1)
    refuse(reactor)
    success(d)


def test_probe_timeouts_follow_portend() -> None:
    reactor = memory_reactor()
    txportend.occupied("127.0.0.1", 80, reactor=reactor).cancel()
    txportend.free("127.0.0.1", 80, reactor=reactor).cancel()
    txportend.Checker(timeout=3, reactor=reactor).assert_free("127.0.0.1", 80)
    timeouts = [client[2].timeout for client in reactor.tcpClients]
    assert timeouts == [OCCUPIED_PROBE_TIMEOUT, FREE_PROBE_TIMEOUT, 3]


def test_assert_free_raises_port_not_free_naming_the_address() -> None:
    reactor = memory_reactor({"both": ["127.0.0.1", "::1"]})
    d = txportend.assert_free("both", 8080, reactor=reactor)
    refuse(reactor, 0)
    accept(reactor, 1)
    f = failure(d, txportend.PortNotFree)
    assert str(f.value) == "Port 8080 is in use on ::1."
    assert isinstance(f.value, OSError)


@pytest.mark.parametrize(
    ("host", "outcome"),
    [
        ("127.0.0.1", refuse),
        ("127.0.0.1", unreachable),
        ("192.0.2.1", refuse),
        ("192.0.2.1", time_out),
        ("192.0.2.1", unreachable),
    ],
)
def test_assert_free_counts_anything_but_a_listener_as_free(
    host: str, outcome: object
) -> None:
    """As portend, except that no answer from loopback (below) is in use."""
    reactor = memory_reactor()
    d = txportend.Checker(reactor=reactor).assert_free(host, 8080)
    outcome(reactor)  # type: ignore[operator]
    assert success(d) is None
    assert reactor.tcpClients[0][2].timeout == 1.0


def test_assert_free_and_free_agree_on_a_full_accept_queue() -> None:
    """No answer from a loopback address is a listener whose accept queue is
    full: assert_free says in use, as free() keeps waiting (one rule)."""
    reactor = memory_reactor()
    d = txportend.Checker(reactor=reactor).assert_free("127.0.0.1", 8080)
    time_out(reactor)
    f = failure(d, txportend.PortNotFree)
    assert str(f.value) == "Port 8080 is in use on 127.0.0.1."
    waiting = txportend.free("127.0.0.1", 8080, timeout=0, reactor=reactor)
    time_out(reactor)
    reactor.advance(0)  # the deadline: the probe decided "not free"
    failure(waiting, txportend.Timeout)


def test_assert_free_accepts_an_address_tuple() -> None:
    reactor = memory_reactor()
    d = txportend.Checker(timeout=0.2, reactor=reactor).assert_free(("::1", 8080, 0, 0))
    assert attempts(reactor) == [("::1", 8080)]
    assert reactor.tcpClients[0][2].timeout == 0.2
    refuse(reactor)
    success(d)


def test_assert_free_can_be_cancelled() -> None:
    reactor = memory_reactor()
    d = txportend.assert_free("127.0.0.1", 8080, reactor=reactor)
    d.cancel()
    failure(d, CancelledError)
    assert reactor.connectors[0].stoppedConnecting
    assert reactor.getDelayedCalls() == []


_step = st.sampled_from([refuse, time_out, unreachable, accept])


@given(steps=st.lists(_step, min_size=1, max_size=30), want=st.booleans())
def test_wait_fires_exactly_when_the_wanted_state_is_first_seen(
    steps: list[object], want: bool
) -> None:
    """For any run of probe outcomes the wait ends at the first wanted one,
    and leaves no timer behind."""
    reactor = memory_reactor()
    wait = txportend.occupied if want else txportend.free
    d = wait("127.0.0.1", 80, timeout=1000, interval=1, reactor=reactor)
    # One judgement (ProbeResult.state): no answer from loopback is a full
    # accept queue, occupied; so occupied ends at the first accept or
    # timeout, free at the first refusal or unreachable.
    ending = {accept, time_out} if want else {refuse, unreachable}
    expected_end = next((i for i, s in enumerate(steps) if s in ending), None)
    for i, step in enumerate(steps):
        step(reactor)  # type: ignore[operator]
        if expected_end is not None and i == expected_end:
            success(d)
            assert reactor.getDelayedCalls() == []
            assert len(attempts(reactor)) == i + 1
            return
        no_result(d)
        reactor.advance(1)
    d.cancel()
    failure(d, CancelledError)
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize(("bind", "probed"), [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
def test_port_not_free_names_a_bind_address_as_given(bind: str, probed: str) -> None:
    """portend connects to the bind address itself and names it; so do we."""
    reactor = memory_reactor()
    d = txportend.assert_free(bind, 8080, reactor=reactor)
    assert attempts(reactor) == [(probed, 8080)]
    accept(reactor)
    assert (
        str(failure(d, txportend.PortNotFree).value)
        == f"Port 8080 is in use on {bind}."
    )


def test_checker_without_a_timeout_waits_for_the_answer() -> None:
    """portend's Checker(timeout=None) connects with no timeout."""
    reactor = memory_reactor()
    d = txportend.Checker(timeout=None, reactor=reactor).assert_free("127.0.0.1", 80)
    assert reactor.tcpClients[0][2].timeout == math.inf
    assert reactor.getDelayedCalls() == []
    refuse(reactor)
    success(d)
