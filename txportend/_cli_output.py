"""
The command line's output to streams that may not be writable: closed when
it started (``>&-``), a reader that left (a broken pipe), a full disk.
"""

from __future__ import annotations

import contextlib
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

PROG = "txportend"

#: The exit codes, as :mod:`txportend.cli` documents them (126 and 127: in
#: :mod:`txportend._cli_command`).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def describe(error: BaseException | None) -> str:
    """One line about an exception."""
    if error is None:
        return "unknown error"
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error) or type(error).__name__
    if not isinstance(error, OSError):
        text = f"{type(error).__name__}: {text}"
    return " ".join(text.split())


#: The standard streams that could not be written in this run ("stdout",
#: "stderr"), with why: they are not written again.
lost: dict[str, str] = {}


def write(name: str, text: str, stream: TextIO | None = None) -> bool:
    """
    Write ``text`` to ``sys.stdout`` or ``sys.stderr`` (``name``), or to
    ``stream`` standing for it, and flush it; ``False`` when it could not
    be written: the stream was closed when
    txportend started (``>&-``), its reader left (a broken pipe), its disk
    is full (``/dev/full``), and so on. Never an exception: what txportend
    has to say never changes what happened to the wait.
    """
    if name in lost:
        return False
    if stream is None:
        stream = getattr(sys, name)
    if stream is None:  # Python found the descriptor closed
        lost[name] = "it is closed"
        return False
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError) as error:
        lost[name] = describe(error)
        return False
    return True


def silence_lost_streams() -> None:
    """
    Point every lost stream's descriptor at the null device, so that what
    is still buffered there is dropped quietly when Python flushes it at
    exit (rather than an "Exception ignored ... BrokenPipeError").
    """
    for name in lost:
        stream = getattr(sys, name)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            fd = stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)


def say_error(message: str) -> None:
    """One line ``txportend: error: ...`` on stderr, if it can be written."""
    write("stderr", f"{PROG}: error: {' '.join(message.split())}\n")


def say_warning(message: str) -> None:
    """One line ``txportend: warning: ...`` on stderr, if it can be written."""
    write("stderr", f"{PROG}: warning: {' '.join(message.split())}\n")


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
