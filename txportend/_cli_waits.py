"""
The command line's waits (see :mod:`txportend.cli`): one quick, blocking
look at loopback targets before Twisted is imported (:func:`already`), the
waits for every target on one reactor (:class:`Waits`), the progress line on
a terminal, and the report of how they ended (:func:`report`).
"""

from __future__ import annotations

import math
import os
import time

from ._cli_output import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    PROG,
    describe,
    lost,
    say_warning,
    signal_name,
    write,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import TextIO

    from twisted.internet.defer import Deferred
    from twisted.internet.task import LoopingCall
    from twisted.python.failure import Failure

    from ._cli_args import Options
    from ._reactor import IPortendReactor

#: Seconds between redraws of the progress line.
PROGRESS_INTERVAL = 0.25

_ERASE_LINE = "\r\x1b[K"


class Outcome:
    """How the wait for one target ended (``state`` is ``waiting`` before)."""

    __slots__ = ("code", "message", "seconds", "state", "target")

    def __init__(self, target: str) -> None:
        self.target = target
        self.state = "waiting"
        self.seconds = 0.0
        self.message: str | None = None
        self.code = EXIT_OK

    def as_json(self) -> dict[str, object]:
        record: dict[str, object] = {
            "target": self.target,
            "state": self.state,
            "seconds": round(self.seconds, 3),
        }
        if self.message is not None:
            record["message"] = self.message
        return record


class _Progress:
    """
    The live progress line on a terminal, redrawn by a LoopingCall and erased
    by :meth:`stop`. Nothing is drawn for a wait shorter than one interval.
    """

    def __init__(self, waits: Waits, reactor: IPortendReactor, stream: TextIO) -> None:
        from twisted.internet.task import LoopingCall

        self._waits = waits
        self._stream = stream
        self._drawn = False
        self._loop: LoopingCall = LoopingCall(self.draw)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(PROGRESS_INTERVAL, now=False)

    def line(self, width: int) -> str:
        """The progress line, cut to fit in ``width`` columns."""
        elapsed = self._waits.elapsed()
        limit = self._waits.timeout  # as the user gave it
        shown = limit is not None and 0 <= limit < math.inf
        total = f"/{limit:.15g}s" if shown else ""
        text = (
            f"{PROG}: {elapsed:.1f}s{total}, waiting until {self._waits.want}: "
            + ", ".join(self._waits.waiting())
        )
        if len(text) >= width:
            text = text[: max(width - 4, 0)] + "..."
        return text

    def draw(self) -> None:
        try:
            width = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            width = 0
        if width <= 0:  # unknown (a new pty says 0)
            width = 80
        if write("stderr", _ERASE_LINE + self.line(width), self._stream):
            self._drawn = True
        else:  # the terminal is gone: the wait goes on without the line
            self.stop()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._drawn:
            write("stderr", _ERASE_LINE, self._stream)
            self._drawn = False


class Waits:
    """
    Waits for every target in parallel on one reactor.

    :attr:`result` fires with ``None`` (it never fails) once every wait has
    settled; :meth:`exit_code` and :attr:`outcomes` say how. ``spent`` is
    the seconds already spent (on the quick look): they count in the
    timeout and in the seconds reported.
    """

    def __init__(
        self,
        reactor: IPortendReactor,
        options: Options,
        progress: TextIO | None = None,
        spent: float = 0.0,
    ) -> None:
        from twisted.internet.defer import Deferred

        self._reactor = reactor
        self._targets = options.targets
        self.want = options.want
        #: The timeout as the user gave it, in seconds (None: for ever).
        self.timeout = options.timeout
        self._spent = spent
        # What is left of it for the core; at least one probe (as any
        # timeout of 0 or less, as in portend).
        self._left = None if self.timeout is None else max(self.timeout - spent, 0.0)
        self._interval = options.interval
        self.outcomes = [Outcome(text) for text, _, _ in options.targets]
        self.signal: int | None = None
        self.result: Deferred[None] = Deferred()
        self._pending: dict[int, Deferred[None]] = {}
        self._started: float | None = None
        self._starting = False
        self._aborted = False
        self._progress = (
            None if progress is None else _Progress(self, reactor, progress)
        )

    def elapsed(self) -> float:
        """Seconds since the command line started looking."""
        if self._started is None:
            return self._spent
        return self._spent + max(self._reactor.seconds() - self._started, 0.0)

    def waiting(self) -> list[str]:
        """The targets still waited on, in command-line order."""
        return [o.target for o in self.outcomes if o.state == "waiting"]

    def start(self) -> None:
        """Start a wait for every target."""
        from ._wait import free, occupied

        wait = occupied if self.want == "occupied" else free
        self._started = self._reactor.seconds()
        self._starting = True
        try:
            for index, (_, host, port) in enumerate(self._targets):
                if self._aborted:  # an earlier target failed for good
                    self._settle(index, "interrupted")
                    continue
                try:
                    if self._interval is None:
                        waited = wait(host, port, self._left, reactor=self._reactor)
                    else:
                        waited = wait(
                            host,
                            port,
                            self._left,
                            interval=self._interval,
                            reactor=self._reactor,
                        )
                except Exception as error:
                    self._settle(index, "error", describe(error), EXIT_INTERNAL)
                    self._abort()
                    continue
                self._pending[index] = waited
                waited.addCallbacks(
                    self._reached,
                    self._failed,
                    callbackArgs=(index,),
                    errbackArgs=(index,),
                )
        finally:
            self._starting = False
        if self._progress is not None and self._pending:
            self._progress.start()
        self._check()

    def crash(self, error: BaseException) -> None:
        """Stop every wait and fail :attr:`result`: a bug, not an outcome."""
        self._starting = True  # the cancellations must not fire the result
        self._abort()
        if self._progress is not None:
            self._progress.stop()
        if not self.result.called:
            self.result.errback(error)

    def interrupt(self, signum: int) -> None:
        """Stop every wait still going because of signal ``signum``."""
        if self.result.called:
            return
        self.signal = signum
        if self._started is None:  # stopped before it began
            for index, outcome in enumerate(self.outcomes):
                if outcome.state == "waiting":
                    self._settle(index, "interrupted")
            self._check()
        else:
            self._abort()

    def _abort(self) -> None:
        self._aborted = True
        for waited in list(self._pending.values()):
            waited.cancel()

    def _settle(
        self,
        index: int,
        state: str,
        message: str | None = None,
        code: int = EXIT_OK,
    ) -> None:
        self._pending.pop(index, None)
        outcome = self.outcomes[index]
        outcome.state = state
        outcome.seconds = self.elapsed()
        outcome.message = message
        outcome.code = code

    def _reached(self, _: None, index: int) -> None:
        self._settle(index, self.want)
        self._check()

    def _failed(self, failure: Failure, index: int) -> None:
        from twisted.internet.defer import CancelledError

        from ._errors import HostNotFound, Timeout

        error = failure.value
        if isinstance(error, Timeout):
            self._settle(index, "timeout", str(error), EXIT_FAILED)
        elif isinstance(error, CancelledError):
            self._settle(index, "interrupted")
        else:
            code = EXIT_FAILED if isinstance(error, HostNotFound) else EXIT_INTERNAL
            self._settle(index, "error", describe(error), code)
            self._abort()  # all of them can no longer succeed
        self._check()

    def _check(self) -> None:
        if self._starting or self._pending or self.result.called:
            return
        if self._progress is not None:
            self._progress.stop()
        self.result.callback(None)

    def exit_code(self) -> int:
        """0 when every target reached the state, else as documented."""
        return exit_code(self.outcomes, self.signal)

    def report(self, options: Options) -> int:
        """Say how the waits ended; return the exit code."""
        return report(self.outcomes, self.signal, options)


def exit_code(outcomes: Sequence[Outcome], signum: int | None) -> int:
    if signum is not None:
        return 128 + signum
    return max((o.code for o in outcomes), default=EXIT_OK)


def report(outcomes: Sequence[Outcome], signum: int | None, options: Options) -> int:
    """
    Say how the waits ended: timeouts, errors and an interruption on stderr,
    ``--json`` records on stdout. Return the exit code, which says how the
    waits ended whether or not this could be written (a warning on stderr
    when the records could not).
    """
    lines = []
    for outcome in outcomes:
        if outcome.state == "timeout" and not options.quiet:
            lines.append(str(outcome.message))
        elif outcome.state == "error":
            kind = "" if outcome.code == EXIT_FAILED else "unexpected error: "
            lines.append(f"{PROG}: error: {outcome.target}: {kind}{outcome.message}")
    if signum is not None and not options.quiet:
        waiting = [o.target for o in outcomes if o.state == "interrupted"]
        lines.append(
            f"{PROG}: interrupted by {signal_name(signum)}"
            + (f" while waiting for {', '.join(waiting)}" if waiting else "")
        )
    if lines:
        write("stderr", "".join(line + "\n" for line in lines))
    if options.json:
        import json

        records = "".join(json.dumps(o.as_json()) + "\n" for o in outcomes)
        if not write("stdout", records):
            say_warning(f"the --json records were not written: {lost['stdout']}")
    return exit_code(outcomes, signum)


def already(options: Options) -> list[Outcome] | None:
    """
    One quick, blocking look at every target before Twisted is imported.

    Start-up time matters most when the port is already in the wanted state
    (a script checking a service that is up). This looks only at loopback
    address literals and bind addresses, where the kernel answers within
    ``connect()``, with the core's own probe
    (:func:`txportend._result.probe_now`) and its one judgement
    (:attr:`txportend.ProbeResult.state`); it decides only when every target
    is there. In any other case (a name, even ``localhost``, an answer still
    coming, an error of this machine) it returns ``None`` and the Deferred
    core does the waiting.
    """
    from ._hostport import client_host, is_loopback
    from ._result import probe_now

    started = time.monotonic()
    for _, host, port in options.targets:
        if not is_loopback(client_host(host)):
            return None  # a name, or an address elsewhere: no half-made tries
        try:
            result = probe_now(host, port)
        except (OSError, UnicodeError):
            return None  # the core says what it is, if it comes to that
        if result is None or result.state.value != options.want:
            return None
    seconds = time.monotonic() - started
    outcomes = []
    for text, _, _ in options.targets:
        outcome = Outcome(text)
        outcome.state = options.want
        outcome.seconds = seconds
        outcomes.append(outcome)
    return outcomes
