"""
``twistd portend``: watch TCP targets for as long as the daemon runs, log
every change, and serve their state over HTTP; and, when asked, hand out
ports as a portserver.

The twistd plugin (``twisted/plugins/txportend_dropin.py``) points here:
:class:`Options` parses the command line, :func:`makeService` builds the
daemon, a :class:`~twisted.application.service.MultiService` of a
:class:`~txportend._daemon.Watchlist`, a
:class:`~txportend._portserver.PortServer` if asked for, and a web site on
each ``--listen`` endpoint.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from ._config import (
    DEFAULT_LISTEN,
    CommandLine,
    ConfigError,
    Plan,
    PortServerSpec,
    check_endpoint,
    check_interval,
    check_portserver_address,
    check_timeout,
    plan,
)
from ._hostport import parse_duration, parse_target
from ._portpool import PortPool, parse_port_ranges
from ._portserver import CannotServe, IPortServerReactor, PortServer
from ._reactor import IPortendReactor, get_reactor

if TYPE_CHECKING:
    from twisted.web.server import Site

    from ._daemon import Watchlist

log = Logger()

# The options that give the daemon something to do.
_WHAT_TO_DO = (
    "watch",
    "config",
    "portserver",
    "portserver_pool",
    "portserver_allow_other_users",
)


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

    def opt_version(self) -> NoReturn:
        """Print txportend's version and exit."""
        from ._version import __version__

        print(f"txportend {__version__} (twistd portend)")
        raise SystemExit(0)

    synopsis = (
        "[--watch HOST:PORT ...] [--interval DURATION] [--timeout DURATION] "
        "[--listen ENDPOINT ...] [--config FILE] [--portserver ADDRESS "
        "[--portserver-pool RANGES] [--portserver-allow-other-users]]"
    )
    longdesc = (
        "Watch TCP targets (HOST:PORT, [IPv6]:PORT) for as long as the daemon "
        "runs: log every change of their state (occupied, free, unknown) and "
        "serve it on the --listen endpoints (an HTML page at /, JSON at "
        "/status, Prometheus metrics at /metrics); by default on "
        f"{DEFAULT_LISTEN[0]}, loopback only. --watch targets add to the "
        "--config file's; SIGHUP reloads the file. Durations are seconds or "
        "forms such as 1m30s; a target's own interval and timeout (in the "
        "file) come first, then --interval and --timeout, then the file's. "
        "With --portserver, it also hands out ports to portpicker's clients "
        "(PORTSERVER_ADDRESS), alone or beside the targets."
    )

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["watch"] = []
        self["listen"] = []
        self["interval"] = None
        self["timeout"] = None
        self["config"] = None
        self["portserver"] = None
        self["portserver_pool"] = None
        self["portserver_allow_other_users"] = False

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

    def opt_portserver(self, address: str) -> None:
        """Be a portserver on this AF_UNIX socket: @NAME or a path."""
        try:
            self["portserver"] = check_portserver_address(address)
        except ValueError as error:
            raise usage.UsageError(f"--portserver: {error}") from None

    def opt_portserver_pool(self, ranges: str) -> None:
        """The portserver's ports: N-P or N, comma-separated (15000-24999)."""
        try:
            self["portserver_pool"] = tuple(parse_port_ranges(ranges))
        except ValueError as error:
            raise usage.UsageError(f"--portserver-pool: {error}") from None

    def opt_portserver_allow_other_users(self) -> None:
        """Answer every local user, not only the daemon's own."""
        self["portserver_allow_other_users"] = True

    def postOptions(self) -> None:
        # The portserver's other options without an address: plan() says so.
        if all(self[name] in (None, [], False) for name in _WHAT_TO_DO):
            raise usage.UsageError(
                "nothing to do: give --watch HOST:PORT, --portserver ADDRESS "
                "or --config FILE"
            )
        command_line = CommandLine(
            watch=tuple(self["watch"]),
            interval=self["interval"],
            timeout=self["timeout"],
            listen=tuple(self["listen"]),
            config=self["config"],
            portserver=self["portserver"],
            portserver_pool=self["portserver_pool"],
            portserver_allow_other_users=self["portserver_allow_other_users"],
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
    options' targets, a :class:`~txportend._portserver.PortServer` when one
    is configured, and a web site serving them on each endpoint.

    :param options: parsed :class:`Options`.
    :param reactor: the reactor to use; the global one by default. It must
        provide ``IReactorUNIX`` too for a portserver.
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
    portserver = None
    if start.portserver is not None:
        portserver = _portserver(start.portserver, reactor)
        portserver.setServiceParent(daemon)  # type: ignore[no-untyped-call]
    site, refresher = _site(watchlist, reactor, portserver)
    for description in start.listen:
        endpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
        listening = _Listening(endpoint, site)  # type: ignore[no-untyped-call]
        listening.description = description
        listening.setServiceParent(daemon)  # type: ignore[no-untyped-call]
    # Started after the endpoints listen: a request that comes while it
    # makes the /metrics lines waits in the kernel's queue.
    refresher.setServiceParent(daemon)  # type: ignore[no-untyped-call]
    return daemon


class _Listening(StreamServerEndpointService):
    """
    The web site on one endpoint, as :func:`twisted.application.strports.service`
    makes it (listening fails at start-up, not later), but an endpoint it
    cannot listen on ends the program with one line and exit code 1, not a
    traceback (see :func:`_cannot_start`).
    """

    _raiseSynchronously = True
    description = ""

    def privilegedStartService(self) -> None:
        self._start_or_exit(under_twistd=True)

    def startService(self) -> None:
        if self._waitingForPort is None:  # twist: no privileged start
            self._start_or_exit(under_twistd=False)
        super().startService()  # type: ignore[no-untyped-call]

    def _start_or_exit(self, *, under_twistd: bool) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]
        except CannotListenError as error:
            reason = f"cannot listen on {self.description}: {error.socketError}"
            _cannot_start(reason, under_twistd=under_twistd)
        except OSError as error:  # a UNIX socket's lock file, say
            reason = f"cannot listen on {self.description}: {_os_error(error)}"
            _cannot_start(reason, under_twistd=under_twistd)


def _cannot_start(reason: str, *, under_twistd: bool) -> NoReturn:
    """
    End the program, exit code 1, with one line: ``portend: error: REASON``.

    twistd starts the services' privileged part once its log runs (and it may
    have left the terminal): the line goes to the log. ``twist`` starts them
    before its log begins, which would never show the line: it goes to
    standard error, as a wrong option's does.
    """
    if under_twistd:
        log.error("portend: error: {reason}", reason=reason)
        # twistd removes its pidfile, and in the background has its parent
        # (still in the terminal) report the line ("An error has occurred:
        # portend: error: ..."), only for an Exception: SystemExit would
        # leave a stale pidfile, and the parent waiting for ever. The
        # exception then ends the process, whose traceback would follow the
        # line: the process is ending, so it prints nothing more.
        sys.excepthook = lambda *exc_info: None
        raise _StartError(f"error: {reason}")
    raise SystemExit(f"portend: error: {reason}")


def _os_error(error: OSError) -> str:
    """``[Errno N] what``, without the file names (a lock file's symlink
    shows its target as the first)."""
    if error.errno is None:
        return str(error)
    return f"[Errno {error.errno}] {error.strerror}"


#: What twistd's parent shows as ``portend: error: REASON``.
_StartError = type("portend", (Exception,), {"__module__": "builtins"})


def _portserver(spec: PortServerSpec, reactor: IPortendReactor) -> PortServer:
    return _PortServing(
        spec.address,
        PortPool(spec.pool),
        reactor=cast(IPortServerReactor, reactor),
        allow_other_users=spec.allow_other_users,
    )


class _PortServing(PortServer):
    """
    The daemon's portserver: it listens as twistd starts, with the web
    site's endpoints, so that an address it cannot serve on (another
    server's, a path that is not a socket) ends the program with one line
    and exit code 1, not a traceback (see :func:`_cannot_start`).
    """

    def privilegedStartService(self) -> None:
        self._start_or_exit(under_twistd=True)

    def startService(self) -> None:
        if not self.running:  # twist: no privileged start
            self._start_or_exit(under_twistd=False)

    def _start_or_exit(self, *, under_twistd: bool) -> None:
        try:
            super().startService()
        except CannotServe as error:
            _cannot_start(f"portserver: {error}", under_twistd=under_twistd)


def _site(
    watchlist: Watchlist, reactor: IPortendReactor, portserver: PortServer | None
) -> tuple[Site, Service]:
    """The web site (the status page, ``/status`` and ``/metrics``), and the
    :class:`~txportend._exposition.Refresher` that keeps its ``/metrics``
    lines current."""
    from ._exposition import Exposition, Refresher
    from ._web import make_site

    exposition = Exposition(watchlist, portserver)
    site = make_site(
        watchlist, reactor=reactor, portserver=portserver, exposition=exposition
    )
    return site, Refresher(exposition, reactor)


__all__ = ["Options", "makeService"]
