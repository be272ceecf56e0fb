"""
The ``txportend`` command line, portend-compatible::

    txportend [options] HOST:PORT [HOST:PORT ...] occupied|free [-- COMMAND ...]
    txportend --find

Every target is waited on in parallel through the Deferred core
(:func:`txportend.occupied` / :func:`txportend.free`) on the global reactor,
run by :func:`twisted.internet.task.react`. Once all of them have reached the
state, txportend exits 0, or becomes ``COMMAND``.

Exit codes:

* 0: every target reached the state (or ``--find``, ``--help``,
  ``--version``).
* 1: a target did not reach the state before the timeout (one portend-style
  line per target still waiting, such as ``Port 8080 not bound on
  localhost.``), or a target failed for good: ``free`` on a host name that
  does not resolve (``occupied`` retries such a name until the timeout).
  Also ``--find``, ``--version`` and ``--help`` when their output could not
  be written.
* 2: bad usage or input (missing or bad port, unknown state, bad duration, no
  targets), with one line ``txportend: error: ...``.
* 3: an unexpected error, with one line ``txportend: error: unexpected ...``.
* 128 + N: the wait was stopped by signal N (130 for Ctrl-C, 143 for
  SIGTERM); the waits are cancelled. Ctrl-C at any moment once txportend's
  code runs (its imports included) ends it with one line and 130.
* With ``-- COMMAND``: once every wait succeeded, txportend flushes its
  output and replaces itself with the command (``os.execvp``, as a shell's
  ``exec``): same process, so every signal, whoever sends it, reaches the
  command once, nothing is left behind, and the exit status is the
  command's. Signals ignored when txportend started stay ignored; Python's
  own (SIGPIPE, SIGXFSZ) are put back. 127 when it cannot be found, 126 when
  it cannot be run, with one line. On Windows, where a process can't be
  replaced, the command runs as a child (txportend ignores Ctrl-C meanwhile:
  the console sends it to both) and its exit code is txportend's.

``--json`` writes to standard output one JSON object per line, one line per
target in command-line order, once every wait has settled::

    {"target": "db:5432", "state": "occupied", "seconds": 0.004}
    {"target": "[::1]:6379", "state": "timeout", "seconds": 30.0,
     "message": "Port 6379 not bound on ::1."}

``state`` is the state waited for (``occupied`` or ``free``) when the target
reached it, ``timeout`` when it did not in time, ``error`` when its wait
failed for good, or ``interrupted`` when the wait was stopped before it was
decided (a signal, or another target's error). ``seconds`` is how long that
target was waited on, in seconds rounded to the millisecond; ``message`` is
there for ``timeout`` and ``error`` only.

``-q/--quiet`` silences what a wait normally says: the progress line, the
timeout lines and the line about an interrupted wait. Usage errors, errors
and a command that cannot be run are still reported; ``--json`` and
``--find`` still print their output; the exit code says what happened.

When standard error is a terminal (and not ``--quiet``), a progress line there
says which targets are still waited on, for how long and the timeout given;
it is redrawn four times a second and erased at the end.

Output that can't be written (a closed stream, a reader that left, a full
disk) never changes the exit code of a wait: the code says what happened to
the wait, a warning on stderr (if that can be written) says the ``--json``
records were lost, and ``COMMAND`` still runs after a success. ``--find``,
``--version`` and ``--help``, whose only job is output, exit 1 then. A usage
error exits 2 even when its line can't be written.

Start-up time matters (this runs before services start in scripts), so
targets on loopback (address literals, bind addresses, ``localhost``) first
get one quick, blocking look with :mod:`socket`: when every one of them is
already in the wanted state, txportend is done without importing Twisted's
reactor. Otherwise the Deferred core does the waiting. Twisted, :mod:`json`,
:mod:`signal`, :mod:`subprocess` and the human-duration parser are imported
only on the paths that need them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from ._cli_command import run
from ._cli_output import (
    PROG,
    describe,
    lost,
    say_error,
    say_warning,
    silence_lost_streams,
    write,
)
from ._cli_signals import latch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn, TextIO

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorCore
    from twisted.internet.task import LoopingCall
    from twisted.python.failure import Failure

    from ._reactor import IPortendReactor

__all__ = ["main"]

#: The exit codes, as documented above (126 and 127: in _cli_command).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

STATES = ("occupied", "free")

#: Seconds between redraws of the progress line.
PROGRESS_INTERVAL = 0.25

_ERASE_LINE = "\r\x1b[K"

_USAGE = (
    "%(prog)s [options] HOST:PORT [HOST:PORT ...] {occupied,free} "
    "[-- COMMAND [ARG ...]]\n       %(prog)s --find"
)

_DESCRIPTION = (
    "Wait until every HOST:PORT (or [IPv6]:PORT) is occupied (something "
    "accepts TCP connections) or free (nothing does), in parallel; then exit "
    "0, or run COMMAND and exit with its code."
)

_EPILOG = """\
durations: plain seconds (30, 2.5, inf) or human forms (1m30s, 250ms,
  '2 minutes').
exit codes: 0 success; 1 timeout (one line per target still waiting) or a
  host that does not resolve for 'free'; 2 bad usage or input; 3 unexpected
  error; 128+N stopped by signal N (130: Ctrl-C). With COMMAND: its exit code,
  127 if it cannot be found, 126 if it cannot be run.
--json: one object per line and target on stdout, in command-line order:
  {"target": "HOST:PORT", "state": "occupied"|"free"|"timeout"|"error"|
  "interrupted", "seconds": N[, "message": "..."]}
"""


class _UsageError(Exception):
    """Bad usage or input: one line on stderr, exit 2."""


class _Print(Exception):
    """``--help`` or ``--version``: print ``text`` on stdout, and that is all."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _seconds(text: str) -> float:
    """
    A ``--timeout``: plain seconds or a human form (``1m30s``). A negative
    one is let through: it means "check once", as in portend.
    """
    from ._hostport import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _interval(text: str) -> float:
    """An ``--interval``: a duration that is finite and not negative."""
    from ._hostport import seconds

    try:
        return seconds(
            _seconds(text), name="the interval", unlimited=False, negative="refuse"
        )
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


class _Options:
    """What the command line asks for."""

    def __init__(
        self,
        *,
        find: bool = False,
        targets: Sequence[tuple[str, str, int]] = (),
        want: str = "occupied",
        timeout: float | None = None,
        interval: float | None = None,
        json: bool = False,
        quiet: bool = False,
        command: Sequence[str] | None = None,
    ) -> None:
        self.find = find
        #: (text as given, host, port) for each target.
        self.targets = list(targets)
        self.want = want
        self.timeout = timeout
        self.interval = interval
        self.json = json
        self.quiet = quiet
        self.command = None if command is None else list(command)


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        usage=_USAGE,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,  # printed by _main, which knows when stdout fails
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="HOST:PORT ... STATE",
        help="the targets, then the state to wait for: occupied or free",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=_seconds,
        default=None,
        metavar="DURATION",
        help="give up after this long (default: wait forever)",
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=None,
        metavar="DURATION",
        help="pause between probes (default: 5ms at first, growing to 100ms)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per target on stdout",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress line, timeout or interruption messages",
    )
    parser.add_argument(
        "--find",
        action="store_true",
        help="print a free TCP port on 127.0.0.1 and exit",
    )
    parser.add_argument(
        "-h", "--help", action="store_true", help="show this help and exit"
    )
    parser.add_argument(
        "--version", action="store_true", help="show the version and exit"
    )
    return parser


def _parse(argv: Sequence[str]) -> _Options:
    """
    Parse a command line (without the program name).

    :raises _UsageError: with a one-line message for bad usage or input.
    :raises _Print: for ``--help`` and ``--version``, with their output.
    """
    argv = list(argv)
    command: list[str] | None = None
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
        if not command:
            raise _UsageError("missing COMMAND after '--'")
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    if args.help:
        raise _Print(parser.format_help())
    if args.version:
        from ._version import __version__

        raise _Print(f"{PROG} {__version__}\n")
    words: list[str] = args.words
    if args.find:
        if words or command is not None:
            raise _UsageError("--find takes no targets, state or command")
        unused = [
            option
            for option, given in (
                ("--json", args.json),
                ("--timeout", args.timeout is not None),
                ("--interval", args.interval is not None),
            )
            if given
        ]
        if unused:
            raise _UsageError(f"--find takes no {', '.join(unused)}")
        return _Options(find=True)
    if not words:
        raise _UsageError(
            "missing targets and state (expected HOST:PORT [HOST:PORT ...] "
            "occupied|free)"
        )
    *names, want = words
    if want not in STATES:
        if not names:  # one word: not even a target and a state
            raise _UsageError(
                f"expected HOST:PORT [HOST:PORT ...] occupied|free, not {want!r}"
            )
        if ":" in want:
            raise _UsageError(
                "missing state after the targets (expected 'occupied' or 'free')"
            )
        raise _UsageError(f"unknown state {want!r} (expected 'occupied' or 'free')")
    if not names:
        raise _UsageError(f"no targets before {want!r} (expected HOST:PORT)")
    from ._hostport import parse_target

    targets = []
    for name in names:
        if name in STATES:
            raise _UsageError(f"the state {name!r} must come last, after the targets")
        try:
            target = parse_target(name)
        except ValueError as error:
            raise _UsageError(str(error)) from None
        host, port = target.host, target.port
        assert host is not None and port is not None
        targets.append((str(target), host, port))
    return _Options(
        targets=targets,
        want=want,
        timeout=args.timeout,
        interval=args.interval,
        json=args.json,
        quiet=args.quiet,
        command=command,
    )


class _Outcome:
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

    def __init__(self, waits: _Waits, reactor: IPortendReactor, stream: TextIO) -> None:
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


class _Waits:
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
        options: _Options,
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
        self.outcomes = [_Outcome(text) for text, _, _ in options.targets]
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
        return _exit_code(self.outcomes, self.signal)

    def report(self, options: _Options) -> int:
        """Say how the waits ended; return the exit code."""
        return _report(self.outcomes, self.signal, options)


def _exit_code(outcomes: Sequence[_Outcome], signum: int | None) -> int:
    if signum is not None:
        return 128 + signum
    return max((o.code for o in outcomes), default=EXIT_OK)


def _report(outcomes: Sequence[_Outcome], signum: int | None, options: _Options) -> int:
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
            f"{PROG}: interrupted by {_signal_name(signum)}"
            + (f" while waiting for {', '.join(waiting)}" if waiting else "")
        )
    if lines:
        write("stderr", "".join(line + "\n" for line in lines))
    if options.json:
        import json

        records = "".join(json.dumps(o.as_json()) + "\n" for o in outcomes)
        if not write("stdout", records):
            say_warning(f"the --json records were not written: {lost['stdout']}")
    return _exit_code(outcomes, signum)


def _already(options: _Options) -> list[_Outcome] | None:
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
        outcome = _Outcome(text)
        outcome.state = options.want
        outcome.seconds = seconds
        outcomes.append(outcome)
    return outcomes


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _react(start: Callable[[IReactorCore], Deferred[None]]) -> None:
    """
    Run ``start(reactor)`` on the global reactor with ``task.react``, and
    return once the Deferred it gives has fired; a failure is raised here
    (react would log it as a traceback).
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.task import react
    from twisted.logger import ILogObserver, globalLogBeginner
    from zope.interface import provider

    if global_reactor.running:
        raise RuntimeError(
            "the reactor is already running: from Twisted code, use "
            "txportend.occupied() or txportend.free()"
        )

    @provider(ILogObserver)
    def discard(event: object) -> None:
        pass

    # Twisted prints critical log events (an error in a canceller, say) as
    # tracebacks on stderr until logging begins: the command line reports
    # what happened in one line of its own instead.
    globalLogBeginner.beginLoggingTo(
        [discard], discardBuffer=True, redirectStandardIO=False
    )
    failures: list[Failure] = []

    def main(reactor: IReactorCore) -> Deferred[None]:
        from ._resolver import install

        # Lookups in threads that nothing joins: the process exits when the
        # waits are done, never held up by a name that hangs.
        install(reactor)  # type: ignore[arg-type]
        return maybeDeferred(start, reactor).addErrback(failures.append)

    try:
        react(main)
    except SystemExit as exit:
        if exit.code not in (None, 0):
            raise RuntimeError(f"the reactor exited with {exit.code!r}") from None
    if failures:
        failures[0].raiseException()


def _wait(options: _Options, spent: float) -> _Waits:
    """
    Run the waits on the global reactor until they have all settled;
    ``spent``: the seconds already spent on the quick look.
    """
    import signal

    progress = sys.stderr if not options.quiet and _isatty(sys.stderr) else None
    made: list[_Waits] = []

    def start(reactor: IReactorCore) -> Deferred[None]:
        waits = _Waits(reactor, options, progress, spent)  # type: ignore[arg-type]
        made.append(waits)
        threads = reactor

        def begin() -> None:
            # Take the signals back from the reactor's own handlers, which
            # would just stop it; one that came before is the waits' now.
            latch.install()
            if latch.caught is not None:
                waits.interrupt(latch.caught)
                return
            latch.deliver_to(
                lambda signum: threads.callFromThread(waits.interrupt, signum)  # type: ignore[attr-defined]
            )
            try:
                waits.start()
            except Exception as error:
                waits.crash(error)

        def shutdown() -> None:
            # The reactor stops with waits still going: a signal reached the
            # reactor's handler first.
            signum = getattr(reactor, "_exitSignal", None)
            waits.interrupt(signum if isinstance(signum, int) else signal.SIGINT)

        reactor.callWhenRunning(begin)
        reactor.addSystemEventTrigger("before", "shutdown", shutdown)
        done: Deferred[None] = waits.result
        return done

    try:
        _react(start)
    finally:
        latch.deliver_to(None)
        latch.install()  # back from the reactor's handlers
    return made[0]


def _find() -> int:
    """
    Print a port to use: from the portserver at ``PORTSERVER_ADDRESS`` when
    it is set (reserved for the process that ran this one, as portpicker's
    command line does), else one nothing is bound to now. A signal stops it
    (128 + N).
    """
    from twisted.internet.defer import CancelledError

    found: list[int] = []
    address = os.environ.get("PORTSERVER_ADDRESS")

    def start(reactor: IReactorCore) -> Deferred[None]:
        asked: Deferred[int]
        if address:
            from ._portclient import request_port

            # This process ends at once: the port is held for its parent.
            asked = request_port(address, pid=os.getppid(), reactor=reactor)  # type: ignore[arg-type]
        else:
            from ._probe import find_available_local_port

            asked = find_available_local_port(reactor=reactor)  # type: ignore[arg-type]

        def begin() -> None:
            latch.install()  # back from the reactor's own handlers
            if latch.caught is not None:
                asked.cancel()
            else:
                latch.deliver_to(
                    lambda signum: reactor.callFromThread(asked.cancel)  # type: ignore[attr-defined]
                )

        reactor.callWhenRunning(begin)
        return asked.addCallback(found.append)

    if latch.caught is not None:
        return _interrupted(latch.caught)
    try:
        _react(start)
    except CancelledError:
        pass  # a signal: said below
    except ValueError as error:  # a PORTSERVER_ADDRESS that is no address
        say_error(f"PORTSERVER_ADDRESS: {error}")
        return EXIT_USAGE
    except OSError as error:  # txportend.PortServerError, CannotListenError
        if latch.caught is None:
            say_error(describe(error))
            return EXIT_FAILED
    finally:
        latch.deliver_to(None)
        latch.install()
    if not found:  # a signal stopped it first
        return _interrupted(latch.caught if latch.caught is not None else 2)
    return _output_only(f"{found[0]}\n")


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _output_only(text: str) -> int:
    """Print the output of an option whose only job it is (``--find``,
    ``--version``, ``--help``): exit 1 when it could not be written."""
    if write("stdout", text):
        return EXIT_OK
    say_error(f"could not write to standard output: {lost['stdout']}")
    return EXIT_FAILED


def _main(argv: Sequence[str]) -> int:
    try:
        try:
            options = _parse(argv)
        except _Print as done:
            return _output_only(done.text)
        except _UsageError as error:
            say_error(str(error))
            return EXIT_USAGE
        if options.find:
            return _find()
        if latch.caught is not None:
            return _interrupted(latch.caught)
        started = time.monotonic()
        outcomes = _already(options)
        if outcomes is not None:
            if latch.caught is not None:
                return _interrupted(latch.caught)
            code = _report(outcomes, None, options)
        else:
            code = _wait(options, time.monotonic() - started).report(options)
        if code or options.command is None:
            return code
        # The command gets the signal dispositions txportend was started
        # with; a signal that came before this point stops it here, one after
        # it finds the command (or, before the exec, those dispositions).
        caught = latch.caught
        latch.restore()
        if caught is not None:
            return _interrupted(caught)
        return run(options.command)
    except KeyboardInterrupt:
        return _interrupted(2)
    except Exception as error:
        say_error(f"unexpected error: {describe(error)}")
        return EXIT_INTERNAL


def _interrupted(signum: int) -> int:
    """Stopped by signal ``signum`` before any wait ran: one line."""
    write("stderr", f"{PROG}: interrupted by {_signal_name(signum)}\n")
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the command line, portend's ``_main`` contract: return ``None`` on
    success, raise :class:`SystemExit` with the exit code otherwise.

    A wait runs the global reactor (which can run only once in a process, and
    not from inside a running one) and begins Twisted's global logging with an
    observer that discards events, as a command line owns its process. With
    ``-- COMMAND`` on POSIX, the process becomes the command: this does not
    return then.

    :param argv: the arguments, without the program name; ``sys.argv[1:]``
        by default.
    """
    lost.clear()
    latch.install()
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
    finally:
        latch.restore()
        silence_lost_streams()
    if code:
        raise SystemExit(code)
