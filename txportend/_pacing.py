"""
How the probe loops on one reactor share it: a budget of probes per second,
first probes spread beyond a burst, and (on Linux) one reader of the
kernel's listening table for all of them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from ._listeners import ListenWatcher, listening_ports

#: Probes per second that all the loops on one reactor make together, at
#: most, from their own schedules: with N loops at once, each pauses at least
#: N / PROBE_BUDGET seconds between probes (about 10% of a core).
PROBE_BUDGET = 1000.0
#: The same for waits that the kernel's listening table watches: it wakes
#: them, so their own probes can be rarer.
WATCHED_PROBE_BUDGET = 200.0
#: How many loops may make their first probe at once; beyond these, first
#: probes are spread at PROBE_BUDGET a second.
PROBE_BURST = 100


class Pacing:
    """
    What the probe loops on one reactor (every wait of
    :func:`~txportend.occupied` and :func:`~txportend.free`, every
    :class:`~txportend.Monitor`) share, so that thousands of them keep the
    reactor responsive:

    - **A probe budget.** With *N* loops running, each pauses at least
      *N* / ``budget`` seconds between its probes, so together they make at
      most ``budget`` probes a second from their schedules. 10,000 monitors
      with a 10 s interval and the default budget probe 1,000 times a second,
      each every 10 s.
    - **First probes spread.** Up to ``burst`` loops may make their first
      probe at once; the first probes of loops started beyond these are
      spread at ``budget`` a second (a token bucket refilled at that rate).
    - **The listening table** (Linux): one reader of the kernel's table
      of listening sockets for all the waits on loopback, once 8 or more run,
      and wakes each when its port changes.

    By default every wait and monitor on a reactor uses the one made for it
    by :meth:`of`; pass your own (``pacing=``) to give a group of them a
    budget of their own, or to test with a scripted table.

    :param reactor: the reactor the loops run on (held weakly).
    :param budget: probes per second, for all the loops together.
    :param burst: loops that may make their first probe at once.
    :param watched_budget: the budget of waits the listening table watches
        (it wakes them, so their own probes can be rarer).
    :param read_table: reads the listening table (for tests): a set of
        listening ports, or ``None`` where it can't be read.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        budget: float = PROBE_BUDGET,
        burst: int = PROBE_BURST,
        watched_budget: float = WATCHED_PROBE_BUDGET,
        read_table: Callable[[], frozenset[int] | None] = listening_ports,
    ) -> None:
        if not (budget > 0 and watched_budget > 0 and burst >= 0):
            raise ValueError("budget and watched_budget must be > 0, burst >= 0")
        self._reactor = weakref.ref(reactor)
        self.budget = budget
        self.burst = burst
        self.watched_budget = watched_budget
        #: How many loops run on it now.
        self.active = 0
        #: The listening-table reader the waits on loopback share.
        self.watcher = ListenWatcher(reactor, read=read_table)
        self._tokens = float(burst)
        self._stamp: float | None = None

    @classmethod
    def of(cls, reactor: IReactorTime) -> Pacing:
        """The :class:`Pacing` every loop on ``reactor`` shares unless given
        another, made on first use (it does not keep the reactor alive)."""
        pacing = _default.get(reactor)
        if pacing is None:
            pacing = _default[reactor] = cls(reactor)
        return pacing

    def join(self) -> float:
        """
        A loop starts: count it, and say how long its first probe should
        wait (0 within the burst).
        """
        self.active += 1
        reactor = self._reactor()
        now = 0.0 if reactor is None else reactor.seconds()
        if self._stamp is not None:
            refill = (now - self._stamp) * self.budget
            self._tokens = min(float(self.burst), self._tokens + refill)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.budget

    def leave(self, probed: bool = True) -> None:
        """A loop stopped; one that never made its first probe gives its
        place in the spread back."""
        self.active -= 1
        if not probed:
            self._tokens = min(float(self.burst), self._tokens + 1.0)

    def pause(self, pause: float, *, watched: bool = False) -> float:
        """``pause`` seconds, stretched to the budget's share of each loop
        (``watched``: a wait the listening table watches)."""
        budget = self.watched_budget if watched else self.budget
        return max(pause, self.active / budget)


_default: weakref.WeakKeyDictionary[IReactorTime, Pacing] = weakref.WeakKeyDictionary()
