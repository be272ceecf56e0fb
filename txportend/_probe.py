"""
One look at a port: resolve a host without blocking, try one TCP connection
to each address, or try to bind.

Probes go through the reactor they are given (``connectTCP``,
``callLater`` and its ``nameResolver``), so a
:class:`~twisted.internet.testing.MemoryReactorClock` drives every path.
Bind checks don't: binding never waits, so they bind and close a plain
socket at once (``_sockets.bind_now``), and log nothing.

Each address gets one connection attempt: ``_connect.connect_once``, whose
module says which of its two transports runs where, and why.
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IResolutionReceiver,
)
from zope.interface import implementer

from ._connect import connect_once
from ._errors import HostNotFound
from ._hostport import TimeoutType, check_host, check_port, client_host, seconds
from ._reactor import IPortendReactor, get_reactor
from ._result import ProbeResult, is_address
from ._result import probe_now as _probe_now
from ._sockets import Outcome, bind_now, local_port_now


@implementer(IResolutionReceiver)
class _Receiver:
    """Collects resolved addresses into a Deferred list of literals."""

    def __init__(self, host: str, result: Deferred[list[str]]) -> None:
        self._host = host
        self._result = result
        self._addresses: list[str] = []

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and host not in self._addresses:
            self._addresses.append(host)

    def resolutionComplete(self) -> None:
        if self._result.called:  # cancelled: drop the answer
            return
        if self._addresses:
            self._result.callback(self._addresses)
        else:
            self._result.errback(
                HostNotFound(socket.EAI_NONAME, f"Host {self._host!r} did not resolve.")
            )


def resolve(
    reactor: IPortendReactor, host: str, port: int, timeout: float = math.inf
) -> Deferred[list[str]]:
    """
    Resolve ``host`` to its IPv4 and IPv6 address literals, without blocking.

    Address literals (bind addresses mapped to loopback first) are returned
    as they are; names go through ``reactor.nameResolver``.

    :param timeout: seconds the lookup may take (``math.inf``: no limit).
    :return: a Deferred firing with a non-empty list of address literals, or
        failing with :class:`~txportend.HostNotFound`: ``EAI_NONAME`` when
        the name has no address, ``EAI_AGAIN`` when its lookup did not
        finish within ``timeout``. Cancelling it drops the answer when it
        comes.
    """
    host = client_host(host)
    if is_address(host):
        return succeed([host])
    resolution: list[IHostResolution] = []

    def cancel(d: Deferred[list[str]]) -> None:
        # A lookup still queued then never runs (txportend's own resolver);
        # Twisted's default one can't cancel.
        for running in resolution:
            with contextlib.suppress(NotImplementedError, AttributeError):
                running.cancel()

    result: Deferred[list[str]] = Deferred(cancel)
    resolution.append(
        reactor.nameResolver.resolveHostName(
            _Receiver(host, result),
            host,
            port,
            addressTypes=[IPv4Address, IPv6Address],
            transportSemantics="TCP",
        )
    )
    if math.isfinite(timeout) and not result.called:

        def unfinished(value: object, seconds: float) -> object:
            raise lookup_unfinished(host, seconds)

        result.addTimeout(timeout, reactor, onTimeoutCancel=unfinished)
    return result


def lookup_unfinished(host: str, seconds: float) -> HostNotFound:
    """The error of a lookup of ``host`` that took longer than ``seconds``."""
    return HostNotFound(
        socket.EAI_AGAIN,
        f"The lookup of {host!r} did not finish within {seconds:g} s.",
    )


def _gather(
    host: str,
    port: int,
    addresses: Sequence[str],
    results: list[tuple[bool, Any]],
) -> ProbeResult:
    """
    One :class:`ProbeResult` from the attempts on every address of a host
    (``DeferredList`` results: an :class:`Outcome` or a :class:`Failure`).

    An attempt this machine could not make (an :exc:`OSError` of its own)
    counts as :attr:`Outcome.UNREACHABLE` when another address gave an
    answer: ``localhost`` is often ``::1`` and ``127.0.0.1``, and where IPv6
    is switched off only the second can be tried. When no address could be
    tried, the probe fails with the first error; any other failure
    (cancellation) is passed on.
    """
    outcomes: dict[str, Outcome] = {}
    local: list[BaseException] = []
    for address, (ok, value) in zip(addresses, results, strict=True):
        if ok:
            outcomes[address] = value
            continue
        error = value.value
        if not isinstance(error, (OSError, UnicodeError)):
            raise error
        local.append(error)
        outcomes[address] = Outcome.UNREACHABLE
    if len(local) == len(addresses):
        raise local[0]
    return ProbeResult(host, port, outcomes)


def probe(
    host: str,
    port: int,
    timeout: TimeoutType = 1.0,
    *,
    reactor: IPortendReactor | None = None,
) -> Deferred[ProbeResult]:
    """
    Look once at ``host:port``: resolve it, try one connection to every
    address in parallel, and say per address what happened.

    portend folds this into yes/no and counts a dropped SYN as free; here the
    caller sees :attr:`Outcome.ACCEPTED`, :attr:`~Outcome.REFUSED`,
    :attr:`~Outcome.TIMED_OUT` or :attr:`~Outcome.UNREACHABLE` for each
    address, and :attr:`ProbeResult.state` says what they mean.

    :param host: a host name or address; bind addresses (``0.0.0.0``, ``::``)
        are probed on the matching loopback address.
    :param port: the TCP port.
    :param timeout: seconds (or a :class:`~datetime.timedelta`) the whole
        probe may take, the name lookup included: the connection attempts
        get what the lookup left (``None`` or ``math.inf``: no limit).
    :param reactor: the reactor to use; the global one by default.
    :return: a Deferred firing with a :class:`ProbeResult`, or failing with
        :class:`~txportend.HostNotFound` when the name does not resolve or
        its lookup does not finish within ``timeout``, or with the
        :exc:`OSError` of this machine when it can't make the attempt (out
        of file descriptors, no local port left, an IPv6 scope that names no
        interface). For a name with several addresses, one that can't be
        tried while another gets an answer (``::1`` where IPv6 is switched
        off) is :attr:`Outcome.UNREACHABLE` instead; the probe fails only
        when no address could be tried. It can be cancelled.
    :raises ValueError: for an empty or unusable host (portend's message
        for an empty one), a bad port, or a negative or NaN timeout.
    :raises TypeError: for a host that is not a string, or a timeout that is
        not seconds or a timedelta.
    """
    check_host(host)
    port = check_port(port)
    limit = seconds(timeout)
    r = get_reactor(reactor)
    return probe_checked(r, client_host(host), port, limit, limit)


def probe_checked(
    reactor: IPortendReactor,
    host: str,
    port: int,
    timeout: float,
    lookup_timeout: float = math.inf,
    resolved: Callable[[], object] | None = None,
) -> Deferred[ProbeResult]:
    """
    :func:`probe` with its arguments already checked, and bind addresses
    already mapped (:func:`~txportend.client_host`): what a probe loop calls
    for each of its probes.

    :param timeout: seconds for the connection attempts; when the name
        lookup took some, they get what is left of ``lookup_timeout``.
    :param lookup_timeout: seconds for the whole probe, the lookup included
        (``math.inf``: the lookup has no limit of its own, as in a wait,
        whose deadline bounds it).
    :param resolved: called once the addresses are known (at once for an
        address literal), before the connection attempts start.
    """

    def connect_all(addresses: list[str]) -> Deferred[ProbeResult]:
        if resolved is not None:
            resolved()
        seconds = timeout
        if math.isfinite(lookup_timeout) and started is not None:
            left = lookup_timeout - (reactor.seconds() - started)
            seconds = min(seconds, max(left, 0.0))
        if len(addresses) == 1:  # the common case, without a DeferredList
            (address,) = addresses
            return connect_once(reactor, address, port, seconds).addCallback(
                lambda outcome: ProbeResult(host, port, {address: outcome})
            )
        attempts = [connect_once(reactor, a, port, seconds) for a in addresses]
        gathered: Deferred[list[tuple[bool, Any]]] = DeferredList(
            attempts, consumeErrors=True
        )
        return gathered.addCallback(
            lambda results: _gather(host, port, addresses, results)
        )

    if is_address(host):
        started = None
        return connect_all([host])
    started = reactor.seconds()
    return resolve(reactor, host, port, lookup_timeout).addCallback(connect_all)


def probe_now(host: str, port: int) -> ProbeResult | None:
    """
    :func:`probe` without a reactor, for when no waiting is needed: see
    :func:`txportend._result.probe_now`.

    :raises ValueError: for an empty host or a bad port, as :func:`probe`.
    """
    check_host(host)
    return _probe_now(host, check_port(port))


# bind() errors that mean "this port can't be had here now".
_NOT_BINDABLE = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})


def can_bind(
    host: str,
    port: int,
    *,
    timeout: TimeoutType = 1.0,
    reactor: IPortendReactor | None = None,
) -> Deferred[bool]:
    """
    Say whether this process could listen on ``host:port`` right now, by
    binding a TCP socket there and closing it again at once, as
    ``reactor.listenTCP`` would bind it. The bind does not go through the
    reactor, so it logs nothing (``listenTCP`` and ``stopListening`` log a
    line each).

    This sees what a connect probe cannot: a port held by a socket that is
    bound without ``SO_REUSEADDR`` but not listening, for instance. Like any
    Twisted server (and most others), the check binds with ``SO_REUSEADDR``
    on POSIX, so a port whose old connections linger in TIME_WAIT counts as
    bindable, and so does a port held by another socket that also set
    ``SO_REUSEADDR`` but has not called ``listen()`` yet (a server between
    its ``bind()`` and its ``listen()``): the kernel lets both bind, and
    whichever listens first keeps the port.

    :param host: an address or name to bind; ``0.0.0.0`` and ``::`` mean
        every interface. A name must be bindable on every address it
        resolves to.
    :param port: the TCP port.
    :param timeout: seconds (or a :class:`~datetime.timedelta`) the name
        lookup may take (binding never waits); ``None``: no limit.
    :param reactor: the reactor whose ``nameResolver`` looks up a name; the
        global one by default (not needed for an address literal).
    :return: a Deferred firing with ``True``, or ``False`` when binding
        fails for the address (in use, not permitted, not local); failing
        with :class:`~txportend.HostNotFound` (a name that does not resolve,
        or whose lookup did not finish within ``timeout``), or with
        :exc:`~twisted.internet.error.CannotListenError` for any other bind
        error (out of file descriptors, say). It can be cancelled.
    """
    check_host(host)
    port = check_port(port)
    limit = seconds(timeout)
    addresses: Deferred[list[str]] = (
        succeed([host])
        if is_address(host)
        else resolve(get_reactor(reactor), host, port, limit)
    )

    def bind_each(found: Sequence[str]) -> bool:
        # One address at a time, each closed before the next is bound: a name
        # resolving to 0.0.0.0 and :: must not collide with itself.
        for address in found:
            try:
                bind_now(address, port)
            except error.CannotListenError as e:
                if getattr(e.socketError, "errno", None) in _NOT_BINDABLE:
                    return False
                raise  # EMFILE and the like say nothing about the port
        return True

    return addresses.addCallback(bind_each)


def find_available_local_port(
    *, reactor: IPortendReactor | None = None
) -> Deferred[int]:
    """
    Find a TCP port on 127.0.0.1 that nothing is bound to, by letting the
    kernel pick one: bind port 0 as ``reactor.listenTCP(0)`` would (with
    ``SO_REUSEADDR`` on POSIX), and close the socket at once. The bind does
    not go through the reactor, so it logs nothing.

    :param reactor: not used: binding needs no reactor (accepted, as by
        every call of this API).
    :return: a Deferred that has already fired with the port number
        (1..65535), the socket closed; or failed with
        :exc:`~twisted.internet.error.CannotListenError` when no socket could
        be bound (out of file descriptors, say).
    """
    try:
        return succeed(local_port_now())
    except error.CannotListenError as e:
        return fail(e)


__all__ = [
    "Outcome",
    "ProbeResult",
    "can_bind",
    "connect_once",
    "find_available_local_port",
    "probe",
    "probe_checked",
    "probe_now",
    "resolve",
]
