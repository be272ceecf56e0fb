"""
Running the command after ``--`` once the waits succeeded.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from ._cli_output import describe, say_error

EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127


def run(command: Sequence[str]) -> int:
    """
    Run ``command`` in place of txportend, as a shell's ``exec`` does: on
    POSIX this process becomes the command (same process id, so every
    signal reaches it once, whoever sent it, and its exit status is ours),
    with the signal dispositions txportend was started with. Return only
    when it could not be run: 127 when it is not found, 126 otherwise, with
    one line on stderr. Elsewhere, see :func:`spawn`.
    """
    import signal

    for stream in (sys.stdout, sys.stderr):  # nothing may be lost, or doubled
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    if os.name != "posix":
        return spawn(command)
    # Caught signals go back to their defaults on exec; ignored ones stay
    # ignored. Python ignores these two at start-up (subprocess puts them back
    # the same way); SIGINT and SIGTERM are as txportend found them, since the
    # waits put back what they changed.
    python_ignores = [signal.SIGPIPE, signal.SIGXFSZ]
    for signum in python_ignores:
        signal.signal(signum, signal.SIG_DFL)
    try:
        os.execvp(command[0], list(command))
    except OSError as error:
        for signum in python_ignores:
            signal.signal(signum, signal.SIG_IGN)
        return cannot_run(command[0], error)
    raise AssertionError("unreachable: exec returned")  # pragma: no cover


def spawn(command: Sequence[str]) -> int:
    """
    Where a process can't be replaced (Windows), run ``command`` as a child
    and return its exit code. The console sends Ctrl-C and Ctrl-Break to
    every process attached to it, the command included, so txportend
    ignores SIGINT meanwhile and leaves the command to decide.
    """
    import signal
    import subprocess

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            child = subprocess.Popen(command)
        except OSError as error:
            return cannot_run(command[0], error)
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def cannot_run(name: str, error: OSError) -> int:
    if isinstance(error, FileNotFoundError):
        say_error(f"{name}: command not found")
        return EXIT_NOT_FOUND
    say_error(f"{name}: cannot run: {describe(error)}")
    return EXIT_CANNOT_RUN
