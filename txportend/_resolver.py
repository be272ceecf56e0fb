"""
Name lookups that never hold anything up: an
:class:`~twisted.internet.interfaces.IHostnameResolver` that runs each
``getaddrinfo`` in a daemon thread of its own.

Twisted's default resolver (:class:`twisted.internet._resolver.GAIResolver`)
runs lookups in the reactor's thread pool, which the reactor joins when it
stops: a process that wanted to exit after one second waits for a lookup
that takes five. And a small pool lets one slow name hold up every other
lookup behind it. Here:

- **Nothing ever joins a lookup thread.** They are daemon threads outside
  any pool, so stopping the reactor or exiting the process happens at once;
  an answer that comes after that is dropped.
- **Lookups run side by side,** up to :data:`MAX_LOOKUPS` at once, so one
  name that hangs (a DNS server that never answers) does not delay another.
  Lookups beyond that wait their turn, first come first served; a lookup
  cancelled while it waits never runs. (Its caller's own timeout still
  bounds the call.)
- **No idle thread lingers:** a thread takes the next waiting lookup when it
  is done, and ends when none is left.
- **Answers are delivered on the reactor thread** (``callFromThread``), in
  the order ``getaddrinfo`` gave them. A lookup that fails in any way
  (``socket.gaierror``, a name ``getaddrinfo`` refuses) completes with no
  address. A cancelled lookup's answer is dropped: its receiver hears
  nothing more.

The blocking API's private reactor uses it; :func:`install` puts it on any
reactor (the command line's).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from zope.interface import Interface, implementer

#: How many lookups may run at once on one resolver; more wait their turn.
MAX_LOOKUPS = 32

#: The name of the lookup threads.
THREAD_NAME = "txportend.resolver"

#: What :func:`socket.getaddrinfo` looks like, for a stand-in in tests.
GetAddrInfo = Callable[[str, int, int, int], Sequence[tuple[Any, ...]]]

_KINDS: dict[int, type[IPv4Address] | type[IPv6Address]] = {
    socket.AF_INET: IPv4Address,
    socket.AF_INET6: IPv6Address,
}


def _family(address_types: Sequence[type[IAddress]] | None) -> int:
    kinds = set(address_types) if address_types is not None else set(_KINDS.values())
    if kinds == {IPv4Address}:
        return socket.AF_INET
    if kinds == {IPv6Address}:
        return socket.AF_INET6
    return socket.AF_UNSPEC


@implementer(IHostResolution)
class _Lookup:
    """One lookup: waiting, running, or done; :meth:`cancel` drops it."""

    def __init__(
        self, name: str, receiver: IResolutionReceiver, args: tuple[str, int, int, int]
    ) -> None:
        self.name = name
        self.receiver = receiver
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Drop this lookup: it never runs if it is still waiting, and its
        answer is dropped if it is running. The receiver hears nothing more."""
        self.cancelled = True


@implementer(IHostnameResolver)
class ThreadedResolver:
    """
    Resolves host names with ``getaddrinfo``, each lookup in a daemon thread
    that nothing joins; see the module's description.

    :param reactor: delivers the answers (``callFromThread``).
    :param getaddrinfo: :func:`socket.getaddrinfo`, or a stand-in.
    :param max_lookups: how many lookups may run at once.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
        max_lookups: int = MAX_LOOKUPS,
    ) -> None:
        self._reactor = reactor
        self._getaddrinfo = getaddrinfo
        self._max = max_lookups
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Lookup] = collections.deque()
        self._threads = 0

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """
        Look ``hostName`` up in a daemon thread; see
        :meth:`IHostnameResolver.resolveHostName
        <twisted.internet.interfaces.IHostnameResolver.resolveHostName>`.

        :return: the lookup; its ``cancel()`` drops it.
        :raises RuntimeError: when no thread can be started (the lookup is
            dropped).
        """
        socket_type = (
            socket.SOCK_DGRAM if transportSemantics == "UDP" else socket.SOCK_STREAM
        )
        lookup = _Lookup(
            hostName,
            resolutionReceiver,
            (hostName, portNumber, _family(addressTypes), socket_type),
        )
        resolutionReceiver.resolutionBegan(lookup)
        with self._lock:
            self._waiting.append(lookup)
            start = self._threads < self._max
            if start:
                self._threads += 1
        if start:
            try:
                threading.Thread(
                    target=self._work, name=THREAD_NAME, daemon=True
                ).start()
            except BaseException:
                with self._lock:
                    self._threads -= 1
                lookup.cancel()
                raise
        return lookup

    def _next(self) -> _Lookup | None:
        """The next lookup to run, or None (then this thread ends)."""
        with self._lock:
            while self._waiting:
                lookup = self._waiting.popleft()
                if not lookup.cancelled:
                    return lookup
            self._threads -= 1
            return None

    def _work(self) -> None:
        """A lookup thread: run waiting lookups until none is left."""
        while (lookup := self._next()) is not None:
            try:
                found: Sequence[tuple[Any, ...]] = self._getaddrinfo(*lookup.args)
            except Exception:  # gaierror; UnicodeError or ValueError for a bad name
                found = []
            # When the reactor is gone, nobody is waiting.
            with contextlib.suppress(Exception):
                self._reactor.callFromThread(self._deliver, lookup, found)

    @staticmethod
    def _deliver(lookup: _Lookup, found: Sequence[tuple[Any, ...]]) -> None:
        """In the reactor thread: hand the answer to the receiver."""
        if lookup.cancelled:
            return
        receiver = lookup.receiver
        for family, socktype, _proto, _canonical, sockaddr in found:
            kind = _KINDS.get(family)
            if kind is not None:
                semantics: Literal["TCP", "UDP"] = (
                    "UDP" if socktype == socket.SOCK_DGRAM else "TCP"
                )
                receiver.addressResolved(kind(semantics, *sockaddr))
        receiver.resolutionComplete()


class IResolverReactor(IReactorFromThreads, IReactorPluggableNameResolver, Interface):
    """What :func:`install` needs from a reactor."""


def install(reactor: IResolverReactor) -> ThreadedResolver:
    """
    Make ``reactor`` resolve host names with a :class:`ThreadedResolver`
    (``reactor.installNameResolver``), so that no lookup holds up another,
    nor the reactor's shutdown and the process's exit.

    :return: the resolver installed.
    """
    resolver = ThreadedResolver(reactor)
    reactor.installNameResolver(resolver)
    return resolver
