"""
The twistd plugin: its discovery, txportend.tap's Options and makeService on
a memory reactor (the portserver included), and the Watchlist's logging and
SIGHUP handler.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IServiceMaker
from twisted.application.twist._options import TwistOptions
from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from zope.interface.verify import verifyObject

import txportend._exposition
from txportend import State
from txportend._config import CommandLine, Plan, PortServerSpec, TargetSpec, plan
from txportend._daemon import Target, Watchlist
from txportend._portserver import PortServer
from txportend.tap import Options, _StartError, makeService

from .conftest import BindScript
from .fakes import accept, attempts, memory_reactor, refuse
from .test_metrics import whole
from .test_portserver import Conn
from .test_web import request


def parsed(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


# The plugin.


def test_the_plugin_is_found_and_provides_IServiceMaker() -> None:
    makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "portend"]
    assert len(makers) == 1
    (maker,) = makers
    assert verifyObject(IServiceMaker, maker)
    assert maker.name == "portend"
    assert maker.options is Options
    assert maker.makeService is makeService


def test_importing_the_dropin_imports_no_txportend_module() -> None:
    """twistd --help imports every dropin: this one stays cheap."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.util, pathlib\n"
        "spec = importlib.util.spec_from_file_location('d', sys.argv[1])\n"
        "importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in sys.modules if m.startswith('txportend')))\n"
    )
    dropin = Path(__file__).parent.parent / "twisted/plugins/txportend_dropin.py"
    done = subprocess.run(
        [sys.executable, "-c", code, str(dropin)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]"


# Options.


def test_options_watch_listen_interval_timeout() -> None:
    options = parsed(
        "--watch",
        "127.0.0.1:8080",
        "--watch",
        "[::1]:5432",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "unix:/tmp/portend.sock",
        "--interval",
        "1m30s",
        "--timeout",
        "250ms",
    )
    assert options["plan"] == Plan(
        listen=("tcp:0:interface=127.0.0.1", "unix:/tmp/portend.sock"),
        targets=(
            TargetSpec("127.0.0.1:8080", 90.0, 0.25, State.OCCUPIED),
            TargetSpec("[::1]:5432", 90.0, 0.25, State.OCCUPIED),
        ),
    )
    assert options["command_line"] == CommandLine(
        watch=("127.0.0.1:8080", "[::1]:5432"),
        interval=90.0,
        timeout=0.25,
        listen=("tcp:0:interface=127.0.0.1", "unix:/tmp/portend.sock"),
    )


def test_options_default_listen_is_loopback_only() -> None:
    assert parsed("--watch", "a:1")["plan"].listen == ("tcp:9180:interface=127.0.0.1",)


def test_options_read_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "portend.toml"
    path.write_text('interval = 3\n[[target]]\naddress = "a:1"\nexpect = "free"\n')
    options = parsed("--config", str(path), "--watch", "b:2")
    assert options["plan"].targets == (
        TargetSpec("a:1", 3.0, 1.0, State.FREE),
        TargetSpec("b:2", 3.0, 1.0, State.OCCUPIED),
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [],
            "nothing to do: give --watch HOST:PORT, --portserver ADDRESS "
            "or --config FILE",
        ),
        (
            ["--watch", "db"],
            "--watch: 'db': missing port (expected HOST:PORT or [IPv6]:PORT)",
        ),
        (["--watch", "a:1", "--watch", "a:1"], "--watch: 'a:1': this target is given"),
        (["--watch", "a:1", "--listen", "tcp:x"], "--listen: 'tcp:x' is not a server"),
        (["--watch", "a:1", "--listen", "bogus:1"], "--listen: 'bogus:1' is not a"),
        (["--watch", "a:1", "--interval", "soon"], "--interval: 'soon' is not a"),
        (["--watch", "a:1", "--interval", "-1"], "--interval: the interval must not"),
        (["--watch", "a:1", "--interval", "inf"], "--interval: the interval must be"),
        (["--watch", "a:1", "--timeout", "0"], "--timeout: the timeout must be more"),
        (["--config", "/nonexistent/portend.toml"], "/nonexistent/portend.toml: "),
        (["--watch", "a:1", "extra"], "Wrong number of arguments."),
        (["--portserver", "@"], "--portserver: Portserver address '@' is empty."),
        (["--portserver", ""], "--portserver: Portserver address '' is empty."),
        (["--portserver", "a\0b"], "--portserver: Portserver address 'a\\x00b'"),
        (
            ["--portserver", "@p", "--portserver-pool", "20-10"],
            "--portserver-pool: Port range '20-10' starts above its end.",
        ),
        (
            ["--portserver", "@p", "--portserver-pool", "1-5,3"],
            "--portserver-pool: Port ranges '1-5' and '3' overlap.",
        ),
        (
            ["--portserver", "@p", "--portserver-pool", "0-9"],
            "--portserver-pool: Port range '0-9': 0 is not a port (1-65535).",
        ),
        (
            ["--watch", "a:1", "--portserver-pool", "20000-20009"],
            "--portserver-pool: needs --portserver ADDRESS (or a [portserver] "
            "table in the configuration file)",
        ),
        (
            ["--portserver-allow-other-users"],
            "--portserver-allow-other-users: needs --portserver ADDRESS",
        ),
    ],
)
def test_options_refuse_bad_input_with_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as raised:
        parsed(*argv)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("runner", [ServerOptions, TwistOptions])
def test_under_twistd_or_twist_a_bad_option_is_one_line_and_exit_1(
    runner: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """twistd and twist print their whole usage before a UsageError's
    message: the plugin ends the program with the one line instead."""
    with pytest.raises(SystemExit) as raised:
        runner().parseOptions(["portend", "--watch", "db"])
    assert raised.value.code == (
        "portend: error: --watch: 'db': missing port "
        "(expected HOST:PORT or [IPv6]:PORT)"
    )
    assert capsys.readouterr() == ("", "")


def test_options_portserver_alone_with_its_pool_and_users() -> None:
    """A daemon that only hands out ports is valid: no targets needed."""
    options = parsed(
        "--portserver",
        "@ports",
        "--portserver-pool",
        "20000-20002, 20010",
        "--portserver-allow-other-users",
    )
    assert options["plan"] == Plan(
        listen=("tcp:9180:interface=127.0.0.1",),
        targets=(),
        portserver=PortServerSpec("@ports", (20000, 20001, 20002, 20010), True),
    )


def test_options_portserver_defaults_beside_targets() -> None:
    spec = parsed("--watch", "a:1", "--portserver", "/run/ports.sock")["plan"]
    assert [t.address for t in spec.targets] == ["a:1"]
    assert spec.portserver.address == "/run/ports.sock"
    assert spec.portserver.pool == tuple(range(15000, 25000))
    assert spec.portserver.allow_other_users is False
    assert parsed("--watch", "a:1")["plan"].portserver is None


def test_options_portserver_options_replace_the_files(tmp_path: Path) -> None:
    path = tmp_path / "portend.toml"
    path.write_text('[portserver]\naddress = "@file"\npool = "20000-20001"\n')
    options = parsed(
        "--config", str(path), "--portserver", "@cli", "--portserver-pool", "30000"
    )
    assert options["plan"].portserver == PortServerSpec("@cli", (30000,), False)


# makeService, on a memory reactor.


def test_make_service_listens_on_each_endpoint_and_watches_each_target() -> None:
    reactor = memory_reactor()
    options = parsed(
        "--watch",
        "127.0.0.1:8080",
        "--watch",
        "127.0.0.1:8081",
        "--listen",
        "tcp:9999:interface=127.0.0.1",
        "--listen",
        "tcp6:9998:interface=\\:\\:1",
    )
    service = makeService(options, reactor=reactor)
    (watchlist,) = (s for s in service if isinstance(s, Watchlist))
    assert [t.monitor.target for t in watchlist.targets()] == [
        "127.0.0.1:8080",
        "127.0.0.1:8081",
    ]
    assert (reactor.tcpServers, attempts(reactor)) == ([], [])
    service.startService()
    try:
        listening = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        assert listening == [(9999, "127.0.0.1"), (9998, "::1")]
        assert sorted(attempts(reactor)) == [("127.0.0.1", 8080), ("127.0.0.1", 8081)]
        assert watchlist.reload_successful
    finally:
        service.stopService()
    assert not any(t.monitor.running for t in watchlist.targets())
    assert reactor.getDelayedCalls() == []


def test_make_service_default_endpoint_is_loopback_9180() -> None:
    reactor = memory_reactor()
    service = makeService(parsed("--watch", "127.0.0.1:8080"), reactor=reactor)
    service.startService()
    service.stopService()
    assert [(p, i) for p, _, _, i in reactor.tcpServers] == [(9180, "127.0.0.1")]


def test_make_service_keeps_the_metrics_current_between_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/metrics is served from lines a Refresher keeps current: once the
    refresher has been through the targets after their probes, a scrape
    has no sample to encode; and it stops with the daemon."""
    reactor = memory_reactor()
    service = makeService(
        parsed(
            "--watch", "127.0.0.1:8080", "--watch", "127.0.0.1:8081", "--interval", "1h"
        ),
        reactor=reactor,
    )
    encoded: list[str] = []
    original = txportend._exposition.encoded

    def counting(encode: Any, families: Any) -> bytes:
        encoded.extend(
            s.labels["target"]
            for family in families
            for s in family.samples
            if s.labels.get("target") in ("127.0.0.1:8080", "127.0.0.1:8081")
        )
        return original(encode, families)

    monkeypatch.setattr(txportend._exposition, "encoded", counting)
    # It starts after the endpoints listen: a request that comes while it
    # makes the lines waits in the kernel's queue.
    kinds = [type(s).__name__ for s in service]
    assert kinds[-2:] == ["_Listening", "Refresher"]
    service.startService()
    try:
        reactor.advance(0.25)  # the first probes, answered
        refuse(reactor)
        accept(reactor)
        reactor.advance(1)
        for _ in range(2):  # each a refresher's whole cycle (one step)
            reactor.advance(txportend._exposition.CYCLE)
        assert encoded  # the refresher encoded them
        encoded.clear()
        (_, site, *_) = reactor.tcpServers[0]
        response = request(site, reactor, "/metrics")
        assert response.code == 200
        (watchlist,) = (s for s in service if isinstance(s, Watchlist))
        assert response.body == whole(watchlist, None)
        assert encoded == []
    finally:
        service.stopService()
    assert reactor.getDelayedCalls() == []


def test_no_sighup_handler_without_a_config_file() -> None:
    before = signal.getsignal(signal.SIGHUP)
    service = makeService(parsed("--watch", "127.0.0.1:8080"), reactor=memory_reactor())
    service.startService()
    try:
        assert signal.getsignal(signal.SIGHUP) == before
    finally:
        service.stopService()


# The watch list: changes, logging, the SIGHUP handler.


def test_every_change_is_one_event_that_reads_as_the_issue_says() -> None:
    reactor = memory_reactor()
    watchlist = Watchlist(
        Plan((), (TargetSpec("127.0.0.1:8080", interval=5.0),)), reactor=reactor
    )
    with capturedLogs() as events:
        watchlist.startService()
        reactor.advance(0.25)
        refuse(reactor)
        reactor.advance(5)
        accept(reactor)
        reactor.advance(5)
        accept(reactor)  # no change
        watchlist.stopService()
    changes = [e for e in events if "when" in e]
    assert [formatEvent(e) for e in changes] == [
        "127.0.0.1:8080 is now free (was unknown)",
        "127.0.0.1:8080 is now occupied (was free)",
    ]
    assert [
        (e["target"], e["old"], e["new"], e["when"], e["log_level"].name)
        for e in changes
    ] == [
        ("127.0.0.1:8080", "unknown", "free", 0.25, "info"),
        ("127.0.0.1:8080", "free", "occupied", 5.25, "info"),
    ]


def test_a_target_is_as_expected_only_in_its_expected_state() -> None:
    reactor = memory_reactor()
    watchlist = Watchlist(
        Plan(
            (),
            (
                TargetSpec("127.0.0.1:1"),
                TargetSpec("127.0.0.1:2", expect=State.FREE),
            ),
        ),
        reactor=reactor,
    )
    occupied, free = watchlist.targets()
    assert isinstance(occupied, Target)
    assert (occupied.expect, free.expect) == (State.OCCUPIED, State.FREE)
    assert not occupied.as_expected and not free.as_expected  # unknown
    watchlist.startService()
    refuse(reactor, 0)
    refuse(reactor, 1)
    assert (occupied.as_expected, free.as_expected) == (False, True)
    watchlist.stopService()


class _ThreadsReactor:
    """Records callFromThread calls: what the SIGHUP handler may do."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.from_threads: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_threads.append((f, args))


def test_sighup_handler_hands_the_reload_to_the_reactor(tmp_path: Path) -> None:
    path = tmp_path / "portend.toml"
    path.write_text('[[target]]\naddress = "127.0.0.1:1"\n')
    command_line = CommandLine(config=str(path))
    reactor = _ThreadsReactor(memory_reactor())
    watchlist = Watchlist(
        plan(command_line), load=lambda: plan(command_line), reactor=reactor
    )
    before = signal.getsignal(signal.SIGHUP)
    watchlist.startService()
    try:
        handler = signal.getsignal(signal.SIGHUP)
        assert handler != before and callable(handler)
        path.write_text('[[target]]\naddress = "127.0.0.1:2"\n')
        handler(signal.SIGHUP, None)
        assert [t.monitor.target for t in watchlist.targets()] == ["127.0.0.1:1"]
        ((f, args),) = reactor.from_threads
        f(*args)  # the reactor's turn
        assert [t.monitor.target for t in watchlist.targets()] == ["127.0.0.1:2"]
    finally:
        watchlist.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


# makeService with a portserver.


def portserver_of(service: Any) -> PortServer:
    (portserver,) = (s for s in service if isinstance(s, PortServer))
    return portserver


@pytest.mark.parametrize(
    ("argv", "mode"),
    [((), 0o600), (("--portserver-allow-other-users",), 0o666)],
)
def test_make_service_runs_the_portserver_beside_the_watchlist(
    argv: tuple[str, ...], mode: int
) -> None:
    reactor = memory_reactor()
    options = parsed(
        "--watch",
        "127.0.0.1:8080",
        "--portserver",
        "@txportend-tap",
        "--portserver-pool",
        "20000-20004",
        *argv,
    )
    service = makeService(options, reactor=reactor)
    portserver = portserver_of(service)
    assert (portserver.address, portserver.ports_managed) == ("@txportend-tap", 5)
    assert portserver.allow_other_users is (mode == 0o666)
    assert reactor.unixServers == []
    service.privilegedStartService()  # twistd listens here, then starts
    service.startService()
    try:
        ((address, _, _, listen_mode, _),) = reactor.unixServers
        assert (address, listen_mode) == ("\0txportend-tap", mode)
        assert portserver.running
        assert attempts(reactor) == [("127.0.0.1", 8080)]
    finally:
        service.stopService()
    assert not portserver.running
    assert reactor.getDelayedCalls() == []


def test_make_service_portserver_alone_starts_on_start_service_too() -> None:
    reactor = memory_reactor()
    service = makeService(parsed("--portserver", "@alone"), reactor=reactor)
    (watchlist,) = (s for s in service if isinstance(s, Watchlist))
    assert watchlist.targets() == []
    service.startService()
    try:
        assert [a for a, *_ in reactor.unixServers] == ["\0alone"]
        assert portserver_of(service).ports_managed == 10000
    finally:
        service.stopService()


def test_the_site_shows_the_portservers_figures(bind_script: BindScript) -> None:
    """makeService hands its portserver to the web side: /status shows its
    figures as they are when asked. (Its port checks bind scripted sockets:
    every port is free.)"""
    reactor = memory_reactor()
    service = makeService(
        parsed(
            "--portserver",
            "@figures",
            "--portserver-pool",
            "20000-20002",
            "--portserver-allow-other-users",  # a memory transport has no peer
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ),
        reactor=reactor,
    )
    service.startService()
    try:
        ((_, factory, *_),) = reactor.unixServers
        assert Conn(factory).send(b"%d\n" % os.getpid()).answer == b"20000\n"
        Conn(factory).send(b"garbage\n")
        ((_, site, *_),) = reactor.tcpServers
        status = json.loads(request(site, reactor, "/status").body)
    finally:
        service.stopService()
    assert status["portserver"] == {
        "address": "@figures",
        "ports_managed": 3,
        "ports_allocated": 1,
        "requests_served": 1,
        "requests_denied": 0,
        "bad_requests": 1,
    }


class _InUse:
    """A reactor whose listenUNIX finds the address in use."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenUNIX(self, address: str, *args: Any, **kw: Any) -> Any:
        raise CannotListenError(None, address, OSError(errno.EADDRINUSE, "in use"))


def test_a_portserver_that_cannot_start_is_one_logged_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path taken by a file that is not a socket: twistd ends with one
    error line and exit code 1 (an exception it lets end the program, with
    nothing printed), before anything else listens."""
    path = tmp_path / "not-a-socket"
    path.write_text("")
    reactor = memory_reactor()
    service = makeService(
        parsed("--watch", "127.0.0.1:8080", "--portserver", str(path)),
        reactor=_InUse(reactor),
    )
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with capturedLogs() as events, pytest.raises(_StartError):
        service.privilegedStartService()
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert errors == [f"portend: error: portserver: {path} exists and is not a socket."]
    assert path.read_text() == ""  # left alone
    assert reactor.tcpServers == []


def test_under_twist_a_portserver_that_cannot_start_is_one_line_on_stderr(
    tmp_path: Path,
) -> None:
    """twist calls startService only, before its log begins: the line is
    SystemExit's message, which Python prints on standard error."""
    path = tmp_path / "not-a-socket"
    path.write_text("")
    service = makeService(
        parsed("--portserver", str(path)), reactor=_InUse(memory_reactor())
    )
    with capturedLogs() as events, pytest.raises(SystemExit) as raised:
        service.startService()
    assert raised.value.code == (
        f"portend: error: portserver: {path} exists and is not a socket."
    )
    assert not [e for e in events if e["log_level"].name == "error"]


class _TCPInUse:
    """A memory reactor whose listenTCP finds the port in use."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, *args: Any, **kw: Any) -> Any:
        raise CannotListenError("127.0.0.1", port, OSError(errno.EADDRINUSE, "in use"))


@pytest.mark.parametrize("twistd", [True, False])
def test_an_endpoint_it_cannot_listen_on_ends_it_with_one_line(
    twistd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under twistd (a privileged start first) the line is logged, and an
    exception twistd lets end the program prints nothing more; under twist
    (startService only) it is SystemExit's message."""
    service = makeService(
        parsed("--watch", "127.0.0.1:8080", "--listen", "tcp:9999"),
        reactor=_TCPInUse(memory_reactor()),
    )
    line = "portend: error: cannot listen on tcp:9999: [Errno 98] in use"
    hook = sys.excepthook
    monkeypatch.setattr(sys, "excepthook", hook)
    with capturedLogs() as events, pytest.raises((_StartError, SystemExit)) as raised:
        if twistd:
            service.privilegedStartService()
        service.startService()
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    if twistd:
        assert (type(raised.value), errors) == (_StartError, [line])
        assert str(raised.value) == line.removeprefix("portend: ")
        assert sys.excepthook is not hook
    else:
        assert (raised.value.code, errors) == (line, [])  # type: ignore[union-attr]
        assert sys.excepthook is hook
    service.stopService()
