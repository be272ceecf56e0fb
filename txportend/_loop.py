"""
The one probe-and-pause loop behind every wait and every monitor: probe,
let the owner judge, pause, probe again, until the owner stops it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from ._hostport import client_host, is_loopback, seconds
from ._pacing import Pacing
from ._probe import probe_checked
from ._reactor import IPortendReactor
from ._result import ProbeResult, State

#: The least pause after a probe that found a loopback listener's accept
#: queue full (it is not accepting connections): its queue's free places
#: are left to its real clients rather than taken by probes.
FULL_QUEUE_PAUSE = 1.0


class ProbeLoop:
    """
    Probe ``host:port`` and hand each result (a :class:`ProbeResult`, or the
    :class:`~twisted.python.failure.Failure` of a probe that could not be
    made) to ``seen``, which returns ``True`` to stop; otherwise pause as
    ``policy`` says, stretched by ``pacing``, and probe again. One probe is
    in flight at a time.

    A loop that waits for a state (``want``) on loopback also subscribes to
    the listening-table watcher of its :class:`Pacing`: when the kernel's
    table says the port changed the right way, it probes at once instead of
    at its next turn, and while the table says the port is not there yet its
    own probes are rarer (the table will wake it).

    :param probe_timeout: seconds each connection attempt may take.
    :param lookup_timeout: seconds each whole probe may take, name lookup
        included (``math.inf``: the owner's deadline bounds the lookup).
    :param broke: called with the :class:`Failure` of a ``policy`` that
        raised or gave no pause (the loop has stopped then).
    """

    def __init__(
        self,
        reactor: IPortendReactor,
        host: str,
        port: int,
        *,
        policy: Callable[[int], float],
        pacing: Pacing,
        probe_timeout: float,
        seen: Callable[[ProbeResult | Failure], bool],
        broke: Callable[[Failure], None],
        lookup_timeout: float = math.inf,
        want: State | None = None,
    ) -> None:
        self._reactor = self.reactor = reactor
        #: When the latest probe started, in the reactor's ``seconds()``
        #: (``None`` before the first).
        self.started_at: float | None = None
        #: Whether the probe in flight is still looking its name up.
        self.resolving = False
        self._target = client_host(host)
        self._port = port
        self._policy = policy
        self._pacing = pacing
        self._probe_timeout = probe_timeout
        self._lookup_timeout = lookup_timeout
        self._seen = seen
        self._broke = broke
        self._want = want
        self._pauses = 0
        self._running = False
        self._next: IDelayedCall | None = None
        self._inflight: Deferred[ProbeResult] | None = None
        self._hints: _TableHints | None = None

    @property
    def probing(self) -> bool:
        """Whether a probe is in flight."""
        return self._inflight is not None

    def start(self) -> None:
        """Make the first probe: now, or later when the pacing spreads it."""
        self._running = True
        delay = self._pacing.join()
        if self._want is not None and is_loopback(self._target):
            self._watch()
        if delay > 0:
            self._next = self._reactor.callLater(delay, self._probe)
        else:
            self._probe()

    def stop(self) -> None:
        """Stop: cancel the probe in flight and the next one."""
        if not self._running:
            return
        self._running = False
        self._pacing.leave(probed=self.started_at is not None)
        if self._hints is not None:
            self._hints.close()
            self._hints = None
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.cancel()

    def probe_soon(self) -> bool:
        """
        Probe now instead of at the next turn, unless a probe is in flight.

        :return: ``False`` when a probe is in flight (it comes first).
        """
        if self._inflight is not None or not self._running:
            return False
        if self._next is not None:
            self._next.cancel()
        self._probe()
        return True

    def _probe(self) -> None:
        self._next = None
        self.started_at = self._reactor.seconds()
        self.resolving = True
        try:
            inflight = probe_checked(
                self._reactor,
                self._target,
                self._port,
                self._probe_timeout,
                self._lookup_timeout,
                resolved=self._resolved,
            )
        except Exception:
            inflight = fail()
        self._inflight = inflight
        inflight.addBoth(self._probed)

    def _resolved(self) -> None:
        self.resolving = False

    def _probed(self, outcome: ProbeResult | Failure) -> None:
        if not self._running:
            return  # stopped: this is the cancellation
        self._inflight = None
        self.resolving = False
        if self._seen(outcome) or not self._running:
            self.stop()
            return
        if (
            self._hints is None
            and self._want is not None
            and isinstance(outcome, ProbeResult)
            and all(map(is_loopback, outcome.outcomes))
        ):
            self._watch()  # a name that turned out to be loopback
        try:
            pause = self._pause(outcome)
        except BaseException:
            # A broken policy (even one raising SystemExit) ends the loop,
            # rather than stall it with no next probe.
            failure = Failure()  # type: ignore[no-untyped-call]
            self.stop()
            self._broke(failure)
            return
        self._next = self._reactor.callLater(pause, self._probe)

    def _pause(self, outcome: ProbeResult | Failure) -> float:
        hints = self._hints
        if hints is not None and hints.take_hint():
            return 0.0
        pause = seconds(
            self._policy(self._pauses),
            name="the interval policy's pause",
            unlimited=False,
        )
        self._pauses += 1
        if isinstance(outcome, ProbeResult) and outcome.queue_full():
            pause = max(pause, FULL_QUEUE_PAUSE)
        if hints is not None:
            return hints.stretch(pause)
        return self._pacing.pause(pause)

    def _watch(self) -> None:
        assert self._want is not None
        self._hints = _TableHints(self, self._reactor, self._pacing, self._port)

    def _hinted(self) -> None:
        """The table says the port changed the right way: probe now, or
        again right after the probe in flight."""
        if self._hints is not None and not self.probe_soon():
            self._hints.hint_pending = True

    def _unstretch(self, began: float, policy_pause: float) -> None:
        """
        The table is no longer read: a pause stretched on its word ends when
        the plain budget, for the loops running now, would have ended it. A
        few loops left probe about at once; many (a table that turned
        unreadable) keep their places in the budget instead of all probing
        in one turn.
        """
        if self._next is None:
            return
        now = self._reactor.seconds()
        due = max(began + self._pacing.pause(policy_pause), now)
        if due < self._next.getTime():
            self._next.cancel()
            self._next = self._reactor.callLater(due - now, self._probe)


class _TableHints:
    """
    A loop's subscription to the listening-table watcher of its pacing, and
    what the table's word did to its pace.
    """

    def __init__(
        self, loop: ProbeLoop, reactor: IPortendReactor, pacing: Pacing, port: int
    ) -> None:
        self._loop = loop
        self._reactor = reactor
        self._pacing = pacing
        self._port = port
        self._want = loop._want is State.OCCUPIED
        #: The table spoke while a probe was in flight: probe again after it.
        self.hint_pending = False
        # When the pending pause began and the policy's part of it, if the
        # table's word stretched it (None: it didn't).
        self._stretched: tuple[float, float] | None = None
        pacing.watcher.subscribe(port, self, self._heard)

    def close(self) -> None:
        self._pacing.watcher.unsubscribe(self._port, self)

    def take_hint(self) -> bool:
        self._stretched = None
        pending, self.hint_pending = self.hint_pending, False
        return pending

    def stretch(self, pause: float) -> float:
        """
        The plain budget stretches the pause, also when the table says the
        port is already as wanted and the probe missed it (it may listen on
        another address than the one probed). While the table says it is
        not, the table will wake the loop, so the pause is the watched
        budget's: probing is only the safety net for what the table can't
        see (another namespace, say).
        """
        known = self._pacing.watcher.listening(self._port)
        if known is None or known == self._want:
            return self._pacing.pause(pause)
        self._stretched = (self._reactor.seconds(), pause)
        return self._pacing.pause(pause, watched=True)

    def _heard(self, listening: bool | None) -> None:
        """The listening table says the port now listens (or not); ``None``:
        the table is no longer read, so a pause stretched on its word ends."""
        if listening is None:
            stretched, self._stretched = self._stretched, None
            if stretched is not None:
                self._loop._unstretch(*stretched)
        elif listening == self._want:
            self._loop._hinted()
