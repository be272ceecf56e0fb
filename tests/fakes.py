"""
Test doubles: a memory reactor with a scripted name resolver, and helpers
that play the network's part for the connection attempts it records.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IHostnameResolver)
class ScriptedResolver:
    """
    Resolves names from a table. With ``hold=True`` it keeps the receivers
    and answers only when :meth:`answer` is called, to test what happens
    while a lookup is in flight.
    """

    def __init__(self, table: dict[str, Sequence[str]], hold: bool = False) -> None:
        self.table = table
        self.hold = hold
        self.asked: list[str] = []
        self.pending: list[tuple[IResolutionReceiver, str, int]] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.asked.append(hostName)
        resolutionReceiver.resolutionBegan(None)  # type: ignore[arg-type]
        if self.hold:
            self.pending.append((resolutionReceiver, hostName, portNumber))
        else:
            self._complete(resolutionReceiver, hostName, portNumber)
        return None

    def answer(self) -> None:
        pending, self.pending = self.pending, []
        for receiver, name, port in pending:
            self._complete(receiver, name, port)

    def _complete(self, receiver: IResolutionReceiver, name: str, port: int) -> None:
        for address in self.table.get(name, ()):
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, port))
        receiver.resolutionComplete()


def memory_reactor(table: dict[str, Sequence[str]] | None = None, **kw: Any) -> Any:
    """A MemoryReactorClock whose resolver answers from ``table``."""
    reactor = MemoryReactorClock()
    reactor.nameResolver = ScriptedResolver(
        table if table is not None else {"localhost": ["127.0.0.1"]}, **kw
    )
    return reactor


def attempts(reactor: Any) -> list[tuple[str, int]]:
    """The (host, port) of every connectTCP call so far."""
    return [(host, port) for host, port, *_ in reactor.tcpClients]


def _attempt(reactor: Any, index: int) -> tuple[Any, Any]:
    factory = reactor.tcpClients[index][2]
    connector = reactor.connectors[index]
    return factory, connector


def refuse(reactor: Any, index: int = -1) -> None:
    """The connection attempt at ``index`` is refused (RST)."""
    factory, connector = _attempt(reactor, index)
    factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))


def time_out(reactor: Any, index: int = -1) -> None:
    """The connection attempt at ``index`` gets no answer in time."""
    factory, connector = _attempt(reactor, index)
    factory.clientConnectionFailed(connector, Failure(error.TimeoutError()))


def unreachable(reactor: Any, index: int = -1) -> None:
    """The connection attempt at ``index`` fails with no route to host."""
    factory, connector = _attempt(reactor, index)
    factory.clientConnectionFailed(connector, Failure(error.NoRouteError()))


def accept(reactor: Any, index: int = -1) -> StringTransport:
    """
    The connection attempt at ``index`` is accepted; the probe closes it,
    and the connector reports the loss, as a real one does.
    """
    factory, connector = _attempt(reactor, index)
    host, port = reactor.tcpClients[index][:2]
    kind = IPv6Address if ":" in host else IPv4Address
    protocol = factory.buildProtocol(kind("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    factory.clientConnectionLost(connector, Failure(error.ConnectionAborted()))
    return transport


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (some containers can't)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def time_wait(port: int) -> tuple[int, int]:
    """Connections in TIME_WAIT (Linux /proc): (towards ``port``, from it)."""
    towards = from_port = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "06":
                continue
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                towards += 1
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                from_port += 1
    return towards, from_port
