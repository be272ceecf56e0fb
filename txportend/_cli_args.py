"""
The command line's arguments (see :mod:`txportend.cli`): parsed with
:mod:`argparse` into :class:`Options`; bad usage or input is one line
(:class:`UsageError`).
"""

from __future__ import annotations

import argparse

from ._cli_output import PROG

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

STATES = ("occupied", "free")

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


class UsageError(Exception):
    """Bad usage or input: one line on stderr, exit 2."""


class Print(Exception):
    """``--help`` or ``--version``: print ``text`` on stdout, and that is all."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


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


class Options:
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


def parse(argv: Sequence[str]) -> Options:
    """
    Parse a command line (without the program name).

    :raises UsageError: with a one-line message for bad usage or input.
    :raises Print: for ``--help`` and ``--version``, with their output.
    """
    argv = list(argv)
    command: list[str] | None = None
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
        if not command:
            raise UsageError("missing COMMAND after '--'")
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    if args.help:
        raise Print(parser.format_help())
    if args.version:
        from ._version import __version__

        raise Print(f"{PROG} {__version__}\n")
    words: list[str] = args.words
    if args.find:
        if words or command is not None:
            raise UsageError("--find takes no targets, state or command")
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
            raise UsageError(f"--find takes no {', '.join(unused)}")
        return Options(find=True)
    if not words:
        raise UsageError(
            "missing targets and state (expected HOST:PORT [HOST:PORT ...] "
            "occupied|free)"
        )
    *names, want = words
    if want not in STATES:
        if not names:  # one word: not even a target and a state
            raise UsageError(
                f"expected HOST:PORT [HOST:PORT ...] occupied|free, not {want!r}"
            )
        if ":" in want:
            raise UsageError(
                "missing state after the targets (expected 'occupied' or 'free')"
            )
        raise UsageError(f"unknown state {want!r} (expected 'occupied' or 'free')")
    if not names:
        raise UsageError(f"no targets before {want!r} (expected HOST:PORT)")
    from ._hostport import parse_target

    targets = []
    for name in names:
        if name in STATES:
            raise UsageError(f"the state {name!r} must come last, after the targets")
        try:
            target = parse_target(name)
        except ValueError as error:
            raise UsageError(str(error)) from None
        host, port = target.host, target.port
        assert host is not None and port is not None
        targets.append((str(target), host, port))
    return Options(
        targets=targets,
        want=want,
        timeout=args.timeout,
        interval=args.interval,
        json=args.json,
        quiet=args.quiet,
        command=command,
    )
