"""
What a probe saw, and the one judgement every face makes of it: is the port
occupied or free?

Nothing here imports Twisted: the command line's quick look and the blocking
API's calling-thread path use it before (or without) the reactor.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

from ._hostport import client_host, is_loopback
from ._sockets import Outcome, connect_now


class State(enum.Enum):
    """
    What a port is, as a wait or a :class:`~txportend.Monitor` sees it.
    """

    #: Something accepts connections on it (or, on loopback, listens with a
    #: full accept queue).
    OCCUPIED = "occupied"
    #: Nothing accepts connections on it.
    FREE = "free"
    #: Not known: no probe has ended yet, the name does not resolve (or its
    #: lookup did not finish), or this machine could not make the attempt.
    UNKNOWN = "unknown"


State.__module__ = "txportend"


@dataclass(frozen=True)
class ProbeResult:
    """
    The result of :func:`~txportend.probe`: one outcome per resolved address,
    and what they mean for the port (:attr:`state`).

    :ivar host: the host probed (bind addresses mapped to loopback).
    :ivar port: the port probed.
    :ivar outcomes: address literal to :class:`~txportend.Outcome`, in
        resolution order.
    """

    host: str
    port: int
    outcomes: dict[str, Outcome]

    @property
    def state(self) -> State:
        """
        The one judgement every face of txportend makes of a probe
        (:func:`~txportend.occupied`, :func:`~txportend.free`,
        :func:`~txportend.assert_free`, :class:`~txportend.Monitor`, the
        blocking API and the command line):

        - :attr:`State.OCCUPIED` when an address accepted a connection, or
          when a loopback address gave no answer in time: nothing drops
          packets on loopback, so that is a listener whose accept queue is
          full (a server that is hung, or still starting). A server binding
          the port next would get ``EADDRINUSE``.
        - :attr:`State.FREE` otherwise: refused, unreachable, or no answer
          from an address that is not loopback (as in portend, where a
          dropped connection counts as free).
        """
        return State.FREE if self.occupied_on() is None else State.OCCUPIED

    def occupied_on(self) -> str | None:
        """
        The address that shows the port :attr:`~State.OCCUPIED`: the first
        that accepted, else the first loopback address with a full accept
        queue; ``None`` when the port is free.
        """
        accepting = self.first_accepting()
        if accepting is not None:
            return accepting
        for address, outcome in self.outcomes.items():
            if outcome is Outcome.TIMED_OUT and is_loopback(address):
                return address
        return None

    @property
    def accepted(self) -> bool:
        """True when at least one address accepted a connection."""
        return Outcome.ACCEPTED in self.outcomes.values()

    def first_accepting(self) -> str | None:
        """The first address that accepted, or ``None``."""
        for address, outcome in self.outcomes.items():
            if outcome is Outcome.ACCEPTED:
                return address
        return None

    def queue_full(self) -> bool:
        """Whether a loopback address gave no answer in time: a listener that
        is not accepting connections (see :attr:`state`)."""
        return any(
            outcome is Outcome.TIMED_OUT and is_loopback(address)
            for address, outcome in self.outcomes.items()
        )


ProbeResult.__module__ = "txportend"


def is_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address literal (not a name);
    a scoped IPv6 literal (``fe80::1%eth0``) counts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host.partition("%")[0])
    except (OSError, ValueError):
        return False
    return True


def probe_now(host: str, port: int) -> ProbeResult | None:
    """
    A probe without a reactor, for when no waiting is needed: an address
    literal (or bind address) whose ``connect()`` the kernel answers at
    once, as on loopback. The answer is the one :func:`~txportend.probe`
    would give, from the same start
    (:func:`~txportend._sockets.start_connect`).

    Its arguments must have been checked (``check_host``, ``check_port``).

    :return: the :class:`ProbeResult`, or ``None`` when only a real probe
        can tell (a host name, or a handshake still under way).
    :raises OSError: for an error of this machine (out of file descriptors,
        say), as :func:`~txportend.probe` fails with it.
    """
    mapped = client_host(host)
    if not is_address(mapped):
        return None
    outcome = connect_now(mapped, port)
    if outcome is None:
        return None
    return ProbeResult(mapped, port, {mapped: outcome})
