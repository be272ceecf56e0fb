"""
Asking a portserver for a port: the client side of portpicker's protocol.

The protocol is portpicker 1.6.0's (``portpicker.get_port_from_port_server``):
connect to an ``AF_UNIX`` stream socket, send the pid the port is for as
ASCII decimal and a newline (``b"12345\\n"``), read the answer,
``b"<port>\\n"``, until the server closes. A server with no port to give
closes without answering. An address beginning with ``@`` is in Linux's
abstract namespace (the ``@`` stands for a NUL byte); anything else is a
filesystem path.
"""

from __future__ import annotations

import math
import os
from typing import cast

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import Interface

from ._errors import PortServerError
from ._hostport import TimeoutType, timeout_seconds

#: The environment variable naming the portserver, as in portpicker.
ADDRESS_VARIABLE = "PORTSERVER_ADDRESS"

#: Seconds :func:`request_port` waits for an answer by default. A portserver
#: answers within milliseconds; this leaves room for one flooded by requests.
DEFAULT_TIMEOUT = 10.0

# More than any answer: b"65535\n" is 6 bytes.
_MAX_ANSWER = 100


class IPortClientReactor(IReactorUNIX, IReactorTime, Interface):
    """
    What :func:`txportend.request_port` needs from a reactor:
    :class:`~twisted.internet.interfaces.IReactorUNIX` and
    :class:`~twisted.internet.interfaces.IReactorTime`.
    """


def unix_address(address: str) -> str:
    """
    Turn a portserver address as portpicker writes it into the address
    ``AF_UNIX`` sockets take: a leading ``@`` becomes a NUL byte (Linux's
    abstract namespace); anything else is a filesystem path, unchanged.

    :param address: ``"@name"`` or a path.
    :raises ValueError: for an empty address, ``"@"`` alone, or a NUL byte
        inside.

    >>> unix_address("@unittest-portserver")
    '\\x00unittest-portserver'
    >>> unix_address("/run/portserver.sock")
    '/run/portserver.sock'
    """
    if not address or address == "@":
        raise ValueError(f"Portserver address {address!r} is empty.")
    if "\0" in address:
        raise ValueError(f"Portserver address {address!r} holds a NUL byte.")
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


def parse_answer(data: bytes) -> int | None:
    """
    The port in a portserver's answer, or ``None`` when it holds none.

    Like portpicker, only what comes before the first newline counts; it must
    be a port number, 1 to 65535, in ASCII digits.

    >>> parse_answer(b"15001\\n")
    15001
    >>> parse_answer(b"") is None
    True
    """
    first = data.split(b"\n", 1)[0]
    if not first.isdigit() or len(first) > 5:
        return None
    port = int(first)
    return port if 0 < port < 65536 else None


class _Ask(Protocol):
    """Sends the pid, collects the answer until the server closes."""

    def __init__(self, pid: int) -> None:
        self._request = b"%d\n" % pid
        self._data = b""
        self.answer: Deferred[bytes] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > _MAX_ANSWER:  # not a portserver
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answer.called:
            self.answer.callback(self._data)

    def _cancel(self, answer: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


def request_port(
    address: str | None = None,
    *,
    pid: int | None = None,
    timeout: TimeoutType = DEFAULT_TIMEOUT,
    reactor: IPortClientReactor | None = None,
) -> Deferred[int]:
    """
    Ask a portserver for a port reserved for process ``pid``, as
    ``portpicker.get_port_from_port_server`` (portpicker 1.6.0) does.

    The server hands each port to one live process at a time: the port is
    not given to anyone else until that process has ended. It is free for
    TCP and UDP, on IPv4 and IPv6, when handed out.

    :param address: the portserver's ``AF_UNIX`` address, ``"@name"`` for
        Linux's abstract namespace or a filesystem path; by default the
        ``PORTSERVER_ADDRESS`` environment variable.
    :param pid: the process the port is for; this process by default. A
        short-lived helper (a command line run from a shell script) passes
        its parent's pid, whose life the reservation then follows.
    :param timeout: seconds (or a :class:`datetime.timedelta`) the whole
        request may take; ``None`` waits for ever.
    :param reactor: a reactor providing
        :class:`~twisted.internet.interfaces.IReactorUNIX` and
        :class:`~twisted.internet.interfaces.IReactorTime`; the global one by
        default.
    :return: a Deferred firing with the port number, or failing with
        :class:`~txportend.PortServerError` when neither ``address`` nor
        ``PORTSERVER_ADDRESS`` is set, the server cannot be reached, closes
        without a port, or does not answer within ``timeout``. Cancelling it
        closes the connection.
    :raises ValueError: for a bad ``address`` or ``timeout``.
    """
    seconds = timeout_seconds(timeout)
    if address is None:
        address = os.environ.get(ADDRESS_VARIABLE)
        if not address:
            return fail(
                PortServerError(
                    f"No portserver address: pass one or set {ADDRESS_VARIABLE}."
                )
            )
    path = unix_address(address)
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IPortClientReactor, global_reactor)
    ask = _Ask(os.getpid() if pid is None else pid)
    # An AF_UNIX connect is decided at once; the overall timeout below bounds
    # everything, the connector's own timer is only a backstop.
    endpoint = UNIXClientEndpoint(reactor, path, timeout=30)  # type: ignore[no-untyped-call]

    def unreachable(failure: Failure) -> Failure:
        if failure.check(ConnectingCancelledError):  # type: ignore[no-untyped-call]
            raise CancelledError()
        failure.trap(ConnectError, OSError)  # type: ignore[no-untyped-call]
        raise PortServerError(
            f"Could not reach the portserver at {address}: {failure.value}"
        )

    def port_of(data: bytes) -> int:
        port = parse_answer(data)
        if port is None:
            raise PortServerError(f"The portserver at {address} gave no port.")
        return port

    connected: Deferred[object] = connectProtocol(endpoint, ask)  # type: ignore[no-untyped-call]
    connected.addErrback(unreachable)
    result = connected.addCallback(lambda _: ask.answer).addCallback(port_of)
    if math.isfinite(seconds):

        def too_late(value: object, after: float) -> object:
            raise PortServerError(
                f"The portserver at {address} did not answer within {after:g} seconds."
            )

        result.addTimeout(seconds, reactor, onTimeoutCancel=too_late)
    return result


__all__ = [
    "ADDRESS_VARIABLE",
    "DEFAULT_TIMEOUT",
    "IPortClientReactor",
    "PortServerError",
    "parse_answer",
    "request_port",
    "unix_address",
]
