"""
The portserver's pool: which ports it hands out, who holds each one, and
whether a port is free right now.

These are the reservation rules of portpicker 1.6.0's ``portserver.py``
(``_PortPool``, ``_is_port_free``, ``_parse_port_ranges``): a port belongs to
the process it was given to, known by its pid and start time; it is not
handed out again while that process lives, and becomes available again once
the process has died or its pid was reused by a new process (the start time
tells them apart). A port is handed out only when it is free right now for
TCP and UDP, on IPv6 and on IPv4. Process facts come from :mod:`psutil`.
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections import deque
from collections.abc import Callable, Iterable

import psutil  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from ._probe import _NOT_BINDABLE
from ._sockets import bind_now

log = Logger()

#: The ports handed out by default, as in portpicker's portserver.
DEFAULT_POOL = "15000-24999"

#: A function returning the start time of process ``pid`` (seconds since the
#: epoch), or ``None`` when there is no such process.
ProcessStart = Callable[[int], "float | None"]

#: A function saying whether a port is free right now.
PortCheck = Callable[[int], "Deferred[bool]"]

# bind() errors on a wildcard address that mean the machine lacks the
# address family (socket() fails, or IPv6 is disabled).
_NO_FAMILY = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL})


def process_start_time(pid: int) -> float | None:
    """
    The start time of process ``pid`` in seconds since the epoch, through
    ``psutil.Process(pid).create_time()`` as portpicker's portserver reads it;
    ``None`` when there is no such process (or only a zombie).

    When the system hides the process (``psutil.AccessDenied``) it is taken
    as live with an unknown start time, ``0.0``: a port given to it is then
    held until that pid is gone.
    """
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:  # ZombieProcess included
        return None
    except psutil.AccessDenied:
        return 0.0


def _port_number(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"Port range {item!r}: {text!r} is not a port number.")
    number = int(text)
    if not 0 < number < 65536:
        raise ValueError(f"Port range {item!r}: {number} is not a port (1-65535).")
    return number


def parse_port_ranges(text: str) -> list[int]:
    """
    Parse a pool of ports written as portpicker's portserver takes it
    (``--portserver_static_pool``): ranges ``N-P`` (both ends included)
    separated by commas; a single port ``N`` is a range too. Spaces around
    items and numbers are allowed.

    Unlike portpicker, which skips a range it cannot parse, every problem is
    an error.

    :param text: such as ``"15000-24999,30000-30099"``.
    :return: the ports, in increasing order.
    :raises ValueError: with one line naming the problem: an empty item, a
        bound that is not a port number (1-65535), a range whose start is
        above its end, ranges that overlap.

    >>> parse_port_ranges("20000-20002, 20010")
    [20000, 20001, 20002, 20010]
    >>> parse_port_ranges("20-10")
    Traceback (most recent call last):
    ...
    ValueError: Port range '20-10' starts above its end.
    """
    ranges: list[tuple[int, int, str]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"Port ranges {text!r}: an item is empty.")
        first, dash, last = item.partition("-")
        start = _port_number(first.strip(), item)
        end = _port_number(last.strip(), item) if dash else start
        if start > end:
            raise ValueError(f"Port range {item!r} starts above its end.")
        ranges.append((start, end, item))
    ranges.sort()
    for (_, end, before), (start, _, after) in itertools.pairwise(ranges):
        if start <= end:
            raise ValueError(f"Port ranges {before!r} and {after!r} overlap.")
    return [port for start, end, _ in ranges for port in range(start, end + 1)]


def port_is_free(port: int) -> Deferred[bool]:
    """
    Say whether ``port`` is free right now for TCP and for UDP, on IPv6 and
    on IPv4, as portpicker's portserver decides (its ``_is_port_free``):
    bind the wildcard address of each family, TCP then UDP, each socket
    closed before the next is bound.

    Each bind is what Twisted's ``listenTCP`` and ``listenUDP`` would do,
    made on a plain socket and closed at once (none of it blocks): TCP binds
    with ``SO_REUSEADDR`` and listens, as portpicker does; UDP binds without
    ``SO_REUSEADDR``, which can only find more ports busy (a UDP port shared
    by sockets that all set it). The binds do not go through the reactor, so
    they log nothing. An address family this machine lacks is skipped; with
    neither family, no port is free.

    :param port: the port to check.
    :return: a Deferred that has already fired with ``True`` or ``False``,
        or failed with :exc:`~twisted.internet.error.CannotListenError` for
        an error that says nothing about the port (out of file descriptors,
        say).
    """
    try:
        return succeed(_is_free(port))
    except CannotListenError as e:
        return fail(e)


def _is_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        families = 0
        for interface in ("::", "0.0.0.0"):
            try:
                bind_now(interface, port, kind)
            except CannotListenError as e:
                code = getattr(e.socketError, "errno", None)
                if code in _NO_FAMILY:
                    continue
                if code in _NOT_BINDABLE:
                    return False
                raise
            families += 1
        if not families:
            return False
    return True


class _Slot:
    """One port of the pool and who holds it: (pid, start time) or None."""

    __slots__ = ("owner", "port")

    def __init__(self, port: int) -> None:
        self.port = port
        self.owner: tuple[int, float] | None = None


class PortPool:
    """
    The ports a portserver hands out, and who holds each one: portpicker's
    ``_PortPool``.

    A port belongs to the process it was given to, known by pid and start
    time, until that process has died or its pid was reused (another start
    time). Allocation goes round the pool, as portpicker's does, so a port
    that was just given back is the last to be handed out again.

    :param ports: the ports to manage, each 1-65535, no duplicates; see
        :func:`parse_port_ranges`.
    :param process_start: returns a process's start time, ``None`` for no
        such process; ``process_start_time`` (psutil) by default.
    :raises ValueError: for no ports, a duplicate or a number out of range.
    """

    def __init__(
        self,
        ports: Iterable[int],
        *,
        process_start: ProcessStart = process_start_time,
    ) -> None:
        numbers = list(ports)
        if not numbers:
            raise ValueError("A port pool needs at least one port.")
        bad = [p for p in numbers if not 0 < p < 65536]
        if bad:
            raise ValueError(f"{bad[0]} is not a port (1-65535).")
        if len(set(numbers)) != len(numbers):
            raise ValueError("A port pool holds each port once.")
        self._slots = deque(_Slot(p) for p in numbers)
        self.process_start = process_start
        self._allocating = False

    def __len__(self) -> int:
        """The number of ports managed."""
        return len(self._slots)

    def _alive(self, owner: tuple[int, float], seen: dict[int, float | None]) -> bool:
        pid, start = owner
        if pid not in seen:
            seen[pid] = self.process_start(pid)
        return seen[pid] == start

    def allocated(self) -> int:
        """
        The number of ports held by live processes now. Ports of processes
        that have ended are released on the way.
        """
        seen: dict[int, float | None] = {}
        count = 0
        for slot in self._slots:
            if slot.owner is None:
                continue
            if self._alive(slot.owner, seen):
                count += 1
            else:
                slot.owner = None
        return count

    def holder(self, port: int) -> tuple[int, float] | None:
        """The (pid, start time) the port was last given to, if any."""
        for slot in self._slots:
            if slot.port == port:
                return slot.owner
        raise KeyError(port)

    def allocate(self, pid: int, is_free: PortCheck) -> Deferred[int | None]:
        """
        Give process ``pid`` a port, as portpicker's
        ``_PortPool.get_port_for_process`` does: go round the pool once, and
        take the first port that no live process holds and that
        ``is_free`` says is free.

        One allocation at a time: the portserver queues its requests.

        :param pid: the process the port is for.
        :param is_free: says whether a port is free right now, such as
            ``port_is_free``.
        :return: a Deferred firing with the port, or ``None`` when no port is
            left (or process ``pid`` is gone); failing with what ``is_free``
            failed with.
        :raises RuntimeError: when an allocation is already under way.
        """
        if self._allocating:
            raise RuntimeError("PortPool.allocate is already running.")
        self._allocating = True

        async def scan() -> int | None:
            try:
                start = self.process_start(pid)
                seen: dict[int, float | None] = {pid: start}
                if start is None:
                    log.info("Process {pid} is gone; no port for it.", pid=pid)
                    return None
                for _ in range(len(self._slots)):
                    slot = self._slots[0]
                    self._slots.rotate(-1)
                    if slot.owner is not None and self._alive(slot.owner, seen):
                        continue
                    if await is_free(slot.port):
                        slot.owner = (pid, start)
                        return slot.port
                    log.info(
                        "Port {port} is unexpectedly in use (last given to pid "
                        "{holder}).",
                        port=slot.port,
                        holder=slot.owner[0] if slot.owner else None,
                    )
                return None
            finally:
                self._allocating = False

        return Deferred.fromCoroutine(scan())


__all__ = [
    "DEFAULT_POOL",
    "PortCheck",
    "PortPool",
    "ProcessStart",
    "parse_port_ranges",
    "port_is_free",
    "process_start_time",
]
