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

import os
import sys
import time

from ._cli_args import Options, Print, UsageError, parse
from ._cli_command import run
from ._cli_output import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    describe,
    lost,
    say_error,
    say_warning,
    signal_name,
    silence_lost_streams,
    write,
)
from ._cli_signals import latch
from ._cli_waits import Waits, already, report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TextIO

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorCore
    from twisted.python.failure import Failure

__all__ = ["main"]


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


def _wait(options: Options, spent: float) -> Waits:
    """
    Run the waits on the global reactor until they have all settled;
    ``spent``: the seconds already spent on the quick look.
    """
    import signal

    progress = sys.stderr if not options.quiet and _isatty(sys.stderr) else None
    made: list[Waits] = []

    def start(reactor: IReactorCore) -> Deferred[None]:
        waits = Waits(reactor, options, progress, spent)  # type: ignore[arg-type]
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
    command line does), else one nothing is bound to now. A portserver that
    can't be reached or gives no port is one warning line, and a port found
    without it, as portpicker's ``pick_unused_port`` falls back. A signal
    stops it (128 + N).
    """
    address = os.environ.get("PORTSERVER_ADDRESS")
    if latch.caught is not None:
        return _interrupted(latch.caught)
    if not address:  # a bind: no reactor, no Twisted needed
        from ._sockets import local_port_now

        try:
            port = local_port_now()
        except Exception as error:
            from twisted.internet.error import CannotListenError

            if not isinstance(error, CannotListenError):
                raise
            say_error(describe(error))
            return EXIT_FAILED
        return _output_only(f"{port}\n")

    from twisted.internet.defer import CancelledError

    from ._errors import PortServerError
    from ._portclient import request_port
    from ._probe import find_available_local_port

    found: list[int] = []

    def start(reactor: IReactorCore) -> Deferred[None]:
        def without_it(failure: Failure) -> Deferred[int]:
            failure.trap(PortServerError)  # type: ignore[no-untyped-call]
            say_warning(f"{describe(failure.value)} Found a port without it.")
            return find_available_local_port(reactor=reactor)  # type: ignore[arg-type]

        # This process ends at once: the port is held for its parent.
        asked = request_port(address, pid=os.getppid(), reactor=reactor)  # type: ignore[arg-type]
        asked.addErrback(without_it)

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
            options = parse(argv)
        except Print as done:
            return _output_only(done.text)
        except UsageError as error:
            say_error(str(error))
            return EXIT_USAGE
        if options.find:
            return _find()
        if latch.caught is not None:
            return _interrupted(latch.caught)
        started = time.monotonic()
        outcomes = already(options)
        if outcomes is not None:
            if latch.caught is not None:
                return _interrupted(latch.caught)
            code = report(outcomes, None, options)
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
    write("stderr", f"{PROG}: interrupted by {signal_name(signum)}\n")
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
