"""
The kernel's own table of listening TCP sockets, read through Linux's
``sock_diag`` netlink interface, and a watcher that tells many waits at once
when a local port starts or stops listening.

The table is only a hint: a wait that it wakes still confirms with a real
connection before it reports anything. Where the table can't be read (not
Linux, no netlink, a sandbox that refuses it) everything falls back to plain
probing.
"""

from __future__ import annotations

import socket
import struct
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLM_F_DUMP_INTR = 0x10
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_TCP_LISTEN = 10
_HEADER = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
# (sport, dport, src[16], dst[16], if, cookie[2]), zeroed.
_REQUEST = struct.Struct("=BBBBI48x")
# The source port sits right after the family/state/timer/retrans bytes of
# inet_diag_msg, in network order.
_SPORT = struct.Struct("!H")
_SPORT_OFFSET = _HEADER.size + 4


def _dump(family: int) -> set[int] | None:
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN)
    header = _HEADER.pack(
        _HEADER.size + len(request),
        _SOCK_DIAG_BY_FAMILY,
        _NLM_F_REQUEST | _NLM_F_DUMP,
        1,
        0,
    )
    ports: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as s:
        # Non-blocking: the kernel answers a dump while we send and recv, so
        # an empty socket means something is off, never a wait.
        s.setblocking(False)
        s.send(header + request)
        for _ in range(1_000_000):  # bounded: a dump ends with NLMSG_DONE
            data = s.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, flags = _HEADER.unpack_from(data, offset)[:3]
                if kind == _NLMSG_DONE:
                    # A table that changed during the dump may be torn.
                    return None if flags & _NLM_F_DUMP_INTR else ports
                if (
                    kind == _NLMSG_ERROR
                    or length < _SPORT_OFFSET + _SPORT.size
                    or offset + length > len(data)
                ):
                    return None
                ports.add(_SPORT.unpack_from(data, offset + _SPORT_OFFSET)[0])
                offset += (length + 3) & ~3
    return None


def listening_ports() -> frozenset[int] | None:
    """
    The local TCP ports that have a socket in LISTEN state, IPv4 and IPv6.

    :return: the port numbers, or ``None`` when the kernel's table can't be
        read here (not Linux, or netlink refused).
    """
    if not hasattr(socket, "AF_NETLINK"):
        return None
    found: set[int] = set()
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            ports = _dump(family)
            if ports is None:
                return None
            found |= ports
    except (OSError, struct.error):
        return None
    return frozenset(found)


#: Fewest local waits for which the watcher reads the table: below this,
#: probing each wait is as cheap as reading the kernel's table.
WATCH_THRESHOLD = 8
#: Failed readings in a row after which the table counts as unreadable.
WATCH_MAX_FAILURES = 5
#: The time from the start of one reading to the next while the watcher runs
#: (longer when a reading is expensive: see WATCH_COST_FACTOR).
WATCH_PAUSE = 0.005
#: The watcher spends at most about 1/WATCH_COST_FACTOR of its time reading.
WATCH_COST_FACTOR = 10


class ListenWatcher:
    """
    Reads the listening table on a schedule while enough local waits are
    subscribed, and calls a wait's callback with ``True`` when its port
    starts listening, ``False`` when it stops, and ``None`` when the watcher
    stops reading (too few waits left, or a table that can't be read): a
    wait that paced its probes on the table's word then goes back to its
    own schedule.

    A reading starts every :data:`WATCH_PAUSE`, counted from the start of
    the previous one (so after a turn spent waking many waits the next is
    due at once), stretched so that reading the table takes no more than a
    tenth of the time however many sockets it lists.

    :param reactor: provides ``callLater``.
    :param read: the table reader (:func:`listening_ports` by default).
    :param timer: measures what a reading costs, in seconds
        (:func:`time.perf_counter` by default; tests give a fixed one).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        read: Callable[[], frozenset[int] | None] = listening_ports,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        # Weakly: the per-reactor registry that holds this watcher must not
        # keep its reactor alive.
        self._reactor = weakref.ref(reactor)
        self._read = read
        self._timer = timer
        self._subscribers: dict[int, dict[object, Callable[[bool | None], None]]] = {}
        self._count = 0
        self._last: frozenset[int] | None = None
        self._fresh: set[int] = set()
        self._failures = 0
        self._ever_read = False
        self._call: IDelayedCall | None = None
        #: False once the table turned out to be unreadable here.
        self.available = True

    def subscribe(
        self, port: int, token: object, callback: Callable[[bool | None], None]
    ) -> None:
        """Call ``callback(listening)`` when ``port`` changes state, and
        ``callback(None)`` when the watcher stops reading the table."""
        self._subscribers.setdefault(port, {})[token] = callback
        self._fresh.add(port)
        self._count += 1
        if self._call is None and self.available and self._count >= WATCH_THRESHOLD:
            self._call = self._call_later(0)

    def unsubscribe(self, port: int, token: object) -> None:
        """Forget a subscription made with :meth:`subscribe`."""
        callbacks = self._subscribers.get(port)
        if callbacks is None or callbacks.pop(token, None) is None:
            return
        self._count -= 1
        if not callbacks:
            del self._subscribers[port]
        if self._count == 0 or (self._count < WATCH_THRESHOLD and self._last is None):
            self._release()
        # Below the threshold with waits left, the next reading releases them.

    def _release(self) -> None:
        """Stop reading, forget the last reading (it would go stale), and
        tell the waits left, which may have paced their probes on its word."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        watched, self._last = self._last is not None, None
        self._fresh = set()
        if watched:
            for callbacks in list(self._subscribers.values()):
                for callback in list(callbacks.values()):
                    callback(None)

    def _call_later(self, delay: float) -> IDelayedCall | None:
        reactor = self._reactor()
        return None if reactor is None else reactor.callLater(delay, self._tick)

    def listening(self, port: int) -> bool | None:
        """What the latest reading said of ``port`` (``None``: no reading)."""
        return None if self._last is None else port in self._last

    def _tick(self) -> None:
        self._call = None
        if self._count < WATCH_THRESHOLD:
            self._release()
            return
        started = self._timer()
        ports = self._read()
        cost = self._timer() - started
        if ports is None:
            self._failures += 1
            if not self._ever_read or self._failures >= WATCH_MAX_FAILURES:
                # Unreadable here: leave every wait to its own probing.
                self.available = False
                self._release()
                return
            self._schedule(started, cost)  # a passing failure (a busy kernel): retry
            return
        self._failures = 0
        self._ever_read = True
        last, self._last = self._last, ports
        # Only the ports that changed, and those subscribed since the last
        # reading: a reading costs the same with 10 waits or 10,000.
        candidates: set[int]
        if last is None:
            candidates = set(self._subscribers)
        else:
            candidates = set((ports ^ last) & self._subscribers.keys())
            candidates |= self._fresh
        self._fresh = set()
        try:
            for port in candidates:
                listening = port in ports
                for callback in list(self._subscribers.get(port, {}).values()):
                    callback(listening)
        finally:
            self._schedule(started, cost)

    def _schedule(self, started: float, cost: float) -> None:
        if self._count < WATCH_THRESHOLD:
            self._release()  # the waits finished by this reading left too few
        elif self._call is None:
            pause = max(WATCH_PAUSE, cost * WATCH_COST_FACTOR)
            # From the start of this reading: after waking many waits, each
            # confirming with a connection, the next reading is due at once.
            busy = self._timer() - started
            self._call = self._call_later(max(pause - busy, 0.0))
