"""
``twistd portend``: watch TCP targets for as long as the daemon runs, log
every change, and serve their state over HTTP.

The twistd plugin (``twisted/plugins/txportend_dropin.py``) points here:
:class:`Options` parses the command line, :func:`makeService` builds the
daemon, a :class:`~twisted.application.service.MultiService` of a
:class:`~txportend._daemon.Watchlist` and a web site on each ``--listen``
endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from ._config import (
    DEFAULT_LISTEN,
    CommandLine,
    ConfigError,
    Plan,
    check_endpoint,
    check_interval,
    check_timeout,
    plan,
)
from ._hostport import parse_duration, parse_target
from ._reactor import IPortendReactor, get_reactor

if TYPE_CHECKING:
    from twisted.web.server import Site

    from ._daemon import Watchlist

log = Logger()


class Options(usage.Options):
    """
    The command line of ``twistd portend``.

    Under twistd (or ``twist``), a wrong option ends the program with one
    line, ``portend: error: ...``, and exit code 1 (twistd's own would
    print the whole usage first); used on its own, :meth:`parseOptions`
    raises :class:`~twisted.python.usage.UsageError`.

    Once parsed, ``options["plan"]`` is the :class:`~txportend._config.Plan`
    to run and ``options["command_line"]`` what was given (read again on
    ``SIGHUP``).
    """

    synopsis = (
        "[--watch HOST:PORT ...] [--interval DURATION] [--timeout DURATION] "
        "[--listen ENDPOINT ...] [--config FILE]"
    )
    longdesc = (
        "Watch TCP targets (HOST:PORT, [IPv6]:PORT) for as long as the daemon "
        "runs: log every change of their state (occupied, free, unknown) and "
        "serve it on the --listen endpoints (an HTML page at /, JSON at "
        "/status, Prometheus metrics at /metrics); by default on "
        f"{DEFAULT_LISTEN[0]}, loopback only. --watch targets add to the "
        "--config file's; SIGHUP reloads the file. Durations are seconds or "
        "forms such as 1m30s; a target's own interval and timeout (in the "
        "file) come first, then --interval and --timeout, then the file's."
    )

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["watch"] = []
        self["listen"] = []
        self["interval"] = None
        self["timeout"] = None
        self["config"] = None

    def opt_watch(self, target: str) -> None:
        """Watch HOST:PORT or [IPv6]:PORT, expected occupied (repeatable)."""
        try:
            self["watch"].append(str(parse_target(target)))
        except ValueError as error:
            raise usage.UsageError(f"--watch: {error}") from None

    def opt_listen(self, endpoint: str) -> None:
        """Serve HTTP on a Twisted server endpoint string (repeatable)."""
        try:
            self["listen"].append(check_endpoint(endpoint))
        except ValueError as error:
            raise usage.UsageError(f"--listen: {error}") from None

    def opt_interval(self, text: str) -> None:
        """The pause after each probe, by default (10s)."""
        self["interval"] = _duration("--interval", text, check_interval)

    def opt_timeout(self, text: str) -> None:
        """How long each probe may take, lookup included, by default (1s)."""
        self["timeout"] = _duration("--timeout", text, check_timeout)

    def opt_config(self, path: str) -> None:
        """A TOML file of targets and defaults, read again on SIGHUP."""
        self["config"] = path

    def postOptions(self) -> None:
        if not self["watch"] and self["config"] is None:
            raise usage.UsageError(
                "nothing to watch: give --watch HOST:PORT or --config FILE"
            )
        command_line = CommandLine(
            watch=tuple(self["watch"]),
            interval=self["interval"],
            timeout=self["timeout"],
            listen=tuple(self["listen"]),
            config=self["config"],
        )
        try:
            self["plan"] = plan(command_line)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        self["command_line"] = command_line

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as error:
            if getattr(self, "parent", None) is None:
                raise
            # Run by twistd or twist, which would print the whole usage.
            raise SystemExit(f"portend: error: {error}") from None


def _duration(option: str, text: str, check: Any) -> float:
    try:
        return float(check(parse_duration(text)))
    except ValueError as error:
        raise usage.UsageError(f"{option}: {error}") from None


def makeService(
    options: Options, reactor: IPortendReactor | None = None
) -> MultiService:
    """
    Build the daemon: a :class:`~txportend._daemon.Watchlist` of the
    options' targets, and a web site serving it on each endpoint.

    :param options: parsed :class:`Options`.
    :param reactor: the reactor to use; the global one by default.
    :return: the service for twistd to run.
    """
    from ._daemon import Watchlist

    command_line: CommandLine = options["command_line"]
    start: Plan = options["plan"]
    daemon = MultiService()  # type: ignore[no-untyped-call]
    watchlist = Watchlist(
        start,
        load=None if command_line.config is None else (lambda: plan(command_line)),
        reactor=reactor,
    )
    watchlist.setServiceParent(daemon)  # type: ignore[no-untyped-call]
    reactor = get_reactor(reactor)
    site = _site(watchlist, reactor)
    for description in start.listen:
        endpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
        listening = _Listening(endpoint, site)  # type: ignore[no-untyped-call]
        listening.description = description
        listening.setServiceParent(daemon)  # type: ignore[no-untyped-call]
    return daemon


class _Listening(StreamServerEndpointService):
    """
    The web site on one endpoint, as :func:`twisted.application.strports.service`
    makes it (listening fails at start-up, not later), but an endpoint it
    cannot listen on ends twistd with one logged line and exit code 1, not a
    traceback.
    """

    _raiseSynchronously = True
    description = ""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]
        except CannotListenError as error:
            log.error(
                "portend: error: cannot listen on {endpoint}: {reason}",
                endpoint=self.description,
                reason=error.socketError,
            )
            raise SystemExit(1) from None


def _site(watchlist: Watchlist, reactor: IPortendReactor) -> Site:
    """The web site: the status page, ``/status`` and ``/metrics``."""
    from ._web import make_site

    return make_site(watchlist, reactor=reactor)


__all__ = ["Options", "makeService"]
