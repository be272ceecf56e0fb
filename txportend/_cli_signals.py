"""
SIGINT and SIGTERM for the command line: recorded the moment they come,
never raised.

Python's own SIGINT handler raises :exc:`KeyboardInterrupt` wherever the
program happens to be, and some places swallow it: a weakref callback of the
import system prints "Exception ignored" and goes on, and the wait would run
to its timeout. So the command line catches both signals itself, as soon as
it starts: a signal that comes before the waits run is kept and ends the
command line at its next step (one line, exit 128 + N); once the waits run,
each is handed to them.

Nothing here imports Twisted: ``python -m txportend`` installs it first.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Latch:
    """
    Catches :data:`SIGNALS`, keeps the first and hands each on. A signal
    that was ignored when the command line started stays ignored (a job
    started in the background, a ``trap '' TERM``), for txportend and for
    the command it runs.
    """

    def __init__(self) -> None:
        #: The first signal caught, else ``None``.
        self.caught: int | None = None
        self._deliver: Callable[[int], object] | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """
        Catch the signals from now on (again after the reactor put in its
        own handlers); remember the handlers before the first install.
        Outside the main thread, where Python allows no handler, nothing.
        """
        for signum in SIGNALS:
            try:
                current = signal.getsignal(signum)
                if self._previous.get(signum, current) is signal.SIG_IGN:
                    continue  # ignored by whoever started us: it stays so
                previous = signal.signal(signum, self._caught)
            except ValueError:  # not the main thread
                return
            self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        """Put back the handlers there were before :meth:`install`, and
        forget what was caught."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        self._deliver = None
        self.caught = None

    def deliver_to(self, deliver: Callable[[int], object] | None) -> None:
        """Hand each signal to ``deliver`` from now on (``None``: keep it)."""
        self._deliver = deliver

    def _caught(self, signum: int, frame: object) -> None:
        if self.caught is None:
            self.caught = signum
        if self._deliver is not None:
            self._deliver(signum)


#: The command line's one latch.
latch = Latch()
