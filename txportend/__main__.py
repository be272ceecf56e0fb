"""
``python -m txportend``: the command line, see :mod:`txportend.cli`.

:func:`main` is the program around :func:`txportend.cli.main`: a Ctrl-C
that lands while the command line's modules are being imported, or as it
exits, ends it as one during the wait does (one line, exit 130), never as a
Python traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    """
    Run the command line on ``sys.argv`` as a program.

    :raises SystemExit: with the exit code, unless it is 0.
    """
    try:
        # First: from here on SIGINT and SIGTERM are recorded, not raised
        # wherever they land (see txportend._cli_signals).
        from txportend._cli_signals import latch

        latch.install()
        from txportend.cli import main as run

        run()
    except KeyboardInterrupt:
        try:
            sys.stderr.write("txportend: interrupted by SIGINT\n")
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        raise SystemExit(130) from None
    finally:
        # The result is known: a Ctrl-C from now on, while Python shuts down
        # (threads, atexit), would only print a traceback.
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
