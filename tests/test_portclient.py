"""
request_port: portpicker's client side on a memory reactor (what it sends,
what it makes of answers, failures, timeout, cancellation), and against a
real PortServer.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txportend._portclient import (
    DEFAULT_TIMEOUT,
    PortServerError,
    parse_answer,
    request_port,
    unix_address,
)
from txportend._portpool import PortPool
from txportend._portserver import PortServer

_sync = SynchronousTestCase()


class Server:
    """Plays the portserver's part for the connection the client makes."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.address, self.factory, self.timeout, _ = reactor.unixClients[-1]
        self.protocol: Any = None
        self.transport = StringTransport()

    def accept(self) -> Server:
        self.protocol = self.factory.buildProtocol(UNIXAddress(self.address))
        self.protocol.makeConnection(self.transport)
        return self

    def answer(self, data: bytes) -> None:
        if data:
            self.protocol.dataReceived(data)
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def refuse(self) -> None:
        self.factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )


def ask(reactor: MemoryReactorClock, address: str | None = "@ps", **kw: Any) -> Any:
    return request_port(address, reactor=reactor, **kw)


def test_sends_its_pid_and_reads_the_port() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor)
    server = Server(reactor).accept()
    assert server.address == "\0ps"
    assert server.transport.value() == b"%d\n" % os.getpid()
    server.answer(b"15001\n")
    assert _sync.successResultOf(d) == 15001
    assert reactor.getDelayedCalls() == []


def test_sends_the_pid_it_is_given() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor, pid=4321)
    server = Server(reactor).accept()
    assert server.transport.value() == b"4321\n"
    server.answer(b"15001\n")
    assert _sync.successResultOf(d) == 15001


def test_answer_in_pieces() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor)
    server = Server(reactor).accept()
    server.protocol.dataReceived(b"150")
    _sync.assertNoResult(d)  # read until the server closes
    server.answer(b"01\n")
    assert _sync.successResultOf(d) == 15001


def test_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTSERVER_ADDRESS", "/run/ps.sock")
    reactor = MemoryReactorClock()
    ask(reactor, None)
    assert Server(reactor).address == "/run/ps.sock"


@pytest.mark.parametrize("value", [None, ""])
def test_no_address_at_all(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("PORTSERVER_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("PORTSERVER_ADDRESS", value)
    reactor = MemoryReactorClock()
    failure = _sync.failureResultOf(ask(reactor, None), PortServerError)
    assert str(failure.value) == (
        "No portserver address: pass one or set PORTSERVER_ADDRESS."
    )
    assert reactor.unixClients == []


@pytest.mark.parametrize("answer", [b"", b"0\n", b"70000\n", b"abc\n", b"-5\n", b"\n"])
def test_no_port_in_the_answer(answer: bytes) -> None:
    """The server closed without a port: its pool is exhausted, or it
    refused the request."""
    reactor = MemoryReactorClock()
    d = ask(reactor)
    Server(reactor).accept().answer(answer)
    failure = _sync.failureResultOf(d, PortServerError)
    assert str(failure.value) == "The portserver at @ps gave no port."


def test_too_long_an_answer_is_cut_off() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor)
    server = Server(reactor).accept()
    server.protocol.dataReceived(b"1" * 101)
    assert server.transport.disconnecting
    server.answer(b"")
    _sync.failureResultOf(d, PortServerError)


def test_unreachable() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor)
    Server(reactor).refuse()
    failure = _sync.failureResultOf(d, PortServerError)
    assert str(failure.value).startswith("Could not reach the portserver at @ps: ")
    assert reactor.getDelayedCalls() == []


def test_timeout() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor, timeout=2)
    server = Server(reactor).accept()
    reactor.advance(2)
    failure = _sync.failureResultOf(d, PortServerError)
    assert str(failure.value) == (
        "The portserver at @ps did not answer within 2 seconds."
    )
    assert server.transport.disconnecting
    assert reactor.getDelayedCalls() == []


def test_timeout_while_connecting() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor, timeout=2)
    reactor.advance(2)
    _sync.failureResultOf(d, PortServerError)
    assert reactor.connectors[-1].stoppedConnecting


def test_default_timeout() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor)
    Server(reactor).accept()
    reactor.advance(DEFAULT_TIMEOUT)
    _sync.failureResultOf(d, PortServerError)


def test_no_timeout() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor, timeout=None)
    server = Server(reactor).accept()
    assert reactor.getDelayedCalls() == []
    server.answer(b"15001\n")
    assert _sync.successResultOf(d) == 15001


def test_cancel_while_connecting() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor)
    d.cancel()
    _sync.failureResultOf(d, CancelledError)
    assert reactor.connectors[-1].stoppedConnecting
    assert reactor.getDelayedCalls() == []


def test_cancel_while_waiting_for_the_answer() -> None:
    reactor = MemoryReactorClock()
    d = ask(reactor)
    server = Server(reactor).accept()
    d.cancel()
    _sync.failureResultOf(d, CancelledError)
    assert server.transport.disconnecting
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize("address", ["", "@", "a\0b"])
def test_bad_address(address: str) -> None:
    with pytest.raises(ValueError):
        ask(MemoryReactorClock(), address)


def test_unix_address() -> None:
    assert unix_address("@x") == "\0x"
    assert unix_address("x@y") == "x@y"


@pytest.mark.parametrize(
    ("data", "port"),
    [(b"1\n", 1), (b"65535\n", 65535), (b"15001\nrest", 15001), (b"15001", 15001)],
)
def test_parse_answer(data: bytes, port: int) -> None:
    assert parse_answer(data) == port


@pytest_twisted.ensureDeferred
async def test_against_a_real_portserver(reactor: Any) -> None:
    address = f"@txportend-test-{uuid.uuid4().hex}"
    server = PortServer(address, PortPool(range(21000, 21100)), reactor=reactor)
    server.startService()
    try:
        first = await request_port(address, reactor=reactor)
        second = await request_port(address, reactor=reactor)
    finally:
        await server.stopService()
    assert first != second
    assert {first, second} <= set(range(21000, 21100))


@pytest_twisted.ensureDeferred
async def test_nobody_listening(reactor: Any) -> None:
    address = f"@txportend-test-{uuid.uuid4().hex}"
    with pytest.raises(PortServerError) as caught:
        await request_port(address, reactor=reactor)
    assert str(caught.value).startswith(
        f"Could not reach the portserver at {address}: "
    )
