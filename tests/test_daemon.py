"""
The daemon for real: ``twistd -n portend`` as a subprocess on loopback (its
start-up errors, a change read from its log and from ``/status``, a reload on
SIGHUP, a clean stop on SIGTERM/SIGINT, its portserver serving portpicker's
clients in other processes), and a soak of flapping targets on the test's own
reactor.

The soak's size comes from the environment: ``TXPORTEND_SOAK_TARGETS``
(default 50) and ``TXPORTEND_SOAK_SECONDS`` (default 5); ``tox -e soak`` runs
1,000 targets for several minutes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

ROOT = Path(__file__).resolve().parent.parent
#: A bound on every wait for the daemon (not a timing assertion: a daemon
#: that hangs fails the test instead of hanging it).
PATIENCE = 60.0


def twistd() -> str:
    beside = Path(sys.executable).parent / "twistd"
    found = str(beside) if beside.exists() else shutil.which("twistd")
    if found is None:
        pytest.skip("no twistd script beside this Python or on PATH")
    return found


def environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (twistd or twist and its arguments) to its end, with
    the tree's txportend, in ``cwd``."""
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment(),
        cwd=cwd,
        timeout=PATIENCE,
    )


def the_error_line(done: subprocess.CompletedProcess[str], text: str) -> None:
    """twistd -n ended with exit 1, no traceback, and exactly one error line
    (in its log, on standard output): ``... [txportend.tap#error] TEXT``."""
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"[txportend.tap#error] {text}")


def bound() -> tuple[socket.socket, int]:
    """A loopback socket bound to a port of its own, not listening: its port
    is free until the test listens on it, and no one else can take it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


class Daemon:
    """``twistd -n portend ARGS``, its log read line by line."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [twistd(), "-n", "--pidfile=", "portend", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment(),
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, since: int | None = None) -> str:
        """The first log line that matches, among those from line ``since``
        on (by default, those not read yet)."""
        for line in self.lines[len(self.lines) if since is None else since :]:
            if re.search(pattern, line):
                return line
        while True:
            try:
                line = self._queue.get(timeout=PATIENCE)
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} in {self.lines}") from None
            if line is None:
                raise AssertionError(f"it ended without {pattern!r}: {self.lines}")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=PATIENCE)
        self._reader.join(timeout=PATIENCE)
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def log_messages(lines: list[str]) -> list[str]:
    """The log lines without their time stamp."""
    return [line.split(" ", 1)[1] for line in lines if " [" in line]


# Start-up errors.


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--watch", "db"], None, "--watch: 'db': missing port"),
        (["--watch", "a:1", "--listen", "tcp:x"], None, "--listen: 'tcp:x' is not"),
        (["--watch", "a:1", "--timeout", "soon"], None, "--timeout: 'soon' is not a"),
        (
            ["--config", "portend.toml"],
            '[[target]]\naddress = "a:1"\nexpect = "up"\n',
            "portend.toml: [[target]] 1: expect: must be",
        ),
        (["--config", "portend.toml"], "interval = \n", "portend.toml: not valid TOML"),
        (["--config", "missing.toml"], None, "missing.toml: cannot read it: No such"),
    ],
)
def test_a_bad_start_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, args: list[str], config: str | None, message: str
) -> None:
    if config is not None:
        (tmp_path / "portend.toml").write_text(config)
    done = run(
        [twistd(), "-n", "--pidfile=", "portend", *args],
        tmp_path,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"portend: error: {message}")


def test_in_the_background_too_it_ends_with_one_line_and_exit_1(
    tmp_path: Path,
) -> None:
    """twistd without -n: its parent, still in the terminal, reports the one
    line and exits 1 (it waited for ever when the daemon ended with
    SystemExit), and the log has the line and no traceback."""
    taken, port = bound()
    log = tmp_path / "portend.log"
    with taken:
        taken.listen()
        done = run(
            [
                twistd(),
                f"--pidfile={tmp_path / 'portend.pid'}",
                f"--logfile={log}",
                "portend",
                "--watch",
                "127.0.0.1:1",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            tmp_path,
        )
    reason = (
        f"portend: error: cannot listen on tcp:{port}:interface=127.0.0.1: "
        "[Errno 98] Address already in use"
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == f"An error has occurred: b'{reason}'"
    logged = log.read_text()
    assert "Traceback" not in logged
    errors = [line for line in logged.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"[txportend.tap#error] {reason}")
    # The parent exits on the daemon's word, which comes just before the
    # daemon removes its pidfile: give the daemon its moment (bounded).
    pidfile = tmp_path / "portend.pid"
    deadline = time.monotonic() + PATIENCE
    while pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pidfile.exists()


@pytest.mark.parametrize("endpoint", ["taken", "unix-missing-directory"])
def test_an_endpoint_it_cannot_listen_on_is_one_logged_line_and_exit_1(
    tmp_path: Path, endpoint: str
) -> None:
    """One error line in the log, no traceback, exit 1, and twistd's pidfile
    (its default, in the working directory) gone."""
    taken, port = bound()
    if endpoint == "taken":
        description = f"tcp:{port}:interface=127.0.0.1"
        reason = f"{description}: [Errno 98] Address already in use"
    else:
        description = f"unix:{tmp_path / 'missing' / 'http.sock'}"
        reason = f"{description}: [Errno 2] No such file or directory"
    with taken:
        taken.listen()
        done = run(
            [
                twistd(),
                "-n",
                "portend",
                "--watch",
                "127.0.0.1:1",
                "--listen",
                description,
            ],
            tmp_path,
        )
    the_error_line(done, f"portend: error: cannot listen on {reason}")
    assert not (tmp_path / "twistd.pid").exists()


# The daemon running.


def get_status(port: int) -> Any:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/status", timeout=PATIENCE
    ) as response:
        assert response.status == 200
        return json.load(response)


def test_the_daemon_logs_changes_reloads_on_sighup_and_stops_on_sigterm(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    server, port = bound()
    other, other_port = bound()
    config = tmp_path / "portend.toml"
    config.write_text(f'interval = 0.1\n[[target]]\naddress = "127.0.0.1:{port}"\n')
    daemon = Daemon(
        "--config",
        str(config),
        "--listen",
        "tcp:0:interface=127.0.0.1",
        cwd=tmp_path,
    )
    daemons.append(daemon)
    http = int(daemon.wait_for(r"Site starting on \d+$").rsplit(" ", 1)[1])
    with server, other:
        daemon.wait_for(rf"127\.0\.0\.1:{port} is now free \(was unknown\)$")
        server.listen()
        daemon.wait_for(rf"127\.0\.0\.1:{port} is now occupied \(was free\)$")
        if importlib.util.find_spec("txportend._web") is None:
            web = "txportend._web is missing: /status is not served yet"
        else:
            web = ""
            (status,) = get_status(http)["targets"]
            assert (status["target"], status["state"], status["as_expected"]) == (
                f"127.0.0.1:{port}",
                "occupied",
                True,
            )
        server.close()
        daemon.wait_for(rf"127\.0\.0\.1:{port} is now free \(was occupied\)$")

        config.write_text(
            config.read_text()
            + f'[[target]]\naddress = "127.0.0.1:{other_port}"\nexpect = "free"\n'
        )
        mark = len(daemon.lines)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(
            r"Configuration reloaded: 1 added, 0 removed, 0 changed, 1 unchanged$",
            since=mark,
        )
        daemon.wait_for(
            rf"127\.0\.0\.1:{other_port} is now free \(was unknown\)$", since=mark
        )

        config.write_text("interval = [")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(r"Configuration not reloaded: .*portend\.toml: not valid TOML")

        running = len(daemon.lines)
        assert daemon.stop(signal.SIGTERM) == -signal.SIGTERM  # twistd's own
    after = log_messages(daemon.lines[running:])
    assert after == [
        "[twisted.internet.base#info] Received SIGTERM, shutting down.",
        f"[-] (TCP Port {http} Closed)",
        *after[2:-2],
        "[twisted.internet.base#info] Main loop terminated.",
        "[twisted.scripts._twistd_unix.UnixAppLogger#info] Server Shut Down.",
    ]
    assert all("Stopping factory" in line for line in after[2:-2])
    messages = log_messages(daemon.lines)
    assert not [m for m in messages if "Traceback" in m or "Unhandled" in m]
    assert len([m for m in messages if "#error]" in m]) == 1  # the bad reload
    if web:
        pytest.skip(web)


def test_sigint_stops_it_cleanly(tmp_path: Path, daemons: list[Daemon]) -> None:
    server, port = bound()
    with server:
        daemon = Daemon(
            "--watch",
            f"127.0.0.1:{port}",
            "--interval",
            "0.1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            cwd=tmp_path,
        )
        daemons.append(daemon)
        daemon.wait_for(rf"127\.0\.0\.1:{port} is now free \(was unknown\)$")
        server.listen()  # the next probe: the reactor runs, its handlers are in
        daemon.wait_for(rf"127\.0\.0\.1:{port} is now occupied \(was free\)$")
        assert daemon.stop(signal.SIGINT) == -signal.SIGINT
    messages = log_messages(daemon.lines)
    assert "[twisted.internet.base#info] Received SIGINT, shutting down." in messages
    assert messages[-1].endswith("Server Shut Down.")
    assert not [m for m in messages if "Traceback" in m or "#error]" in m]


# The portserver.


def test_the_portserver_hands_portpicker_processes_distinct_ports(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """``twistd -n portend --portserver @...``: real processes calling
    ``portpicker.pick_unused_port()`` with PORTSERVER_ADDRESS set get
    distinct ports, /status counts them, and a second daemon on the same
    address stops with one line."""
    from .test_portserver import portpicker_client, unique_address

    address = unique_address()
    base = 23000 + (os.getpid() % 50) * 20
    daemon = Daemon(
        "--portserver",
        address,
        "--portserver-pool",
        f"{base}-{base + 19}",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        cwd=tmp_path,
    )
    daemons.append(daemon)
    daemon.wait_for(rf"Portserver on {re.escape(address)}, handing out 20 ports\.$", 0)
    http = int(daemon.wait_for(r"Site starting on \d+$", 0).rsplit(" ", 1)[1])

    env = {**environment(), "PORTSERVER_ADDRESS": address}
    children = [portpicker_client(env) for _ in range(6)]
    try:
        ports = [int(c.stdout.readline()) for c in children]  # type: ignore[union-attr]
        assert len(set(ports)) == 6
        assert all(base <= p < base + 20 for p in ports)
        assert get_status(http)["portserver"] == {
            "address": address,
            "ports_managed": 20,
            "ports_allocated": 6,  # the children live, holding them
            "requests_served": 6,
            "requests_denied": 0,
            "bad_requests": 0,
        }

        second = run(
            [
                *(twistd(), "-n", "--pidfile=", "portend"),
                *("--portserver", address, "--listen", "tcp:0:interface=127.0.0.1"),
            ],
            tmp_path,
        )
    finally:
        for c in children:
            c.communicate("", timeout=PATIENCE)
    assert all(c.returncode == 0 for c in children)
    the_error_line(
        second,
        f"portend: error: portserver: Another server is listening on {address}.",
    )

    assert daemon.stop(signal.SIGTERM) == -signal.SIGTERM
    messages = log_messages(daemon.lines)
    assert not [m for m in messages if "Traceback" in m or "#error]" in m]
    assert messages[-1].endswith("Server Shut Down.")


@pytest.mark.parametrize("runner", ["twistd", "twist"])
def test_a_path_that_is_not_a_socket_ends_it_with_one_line(
    tmp_path: Path, runner: str
) -> None:
    """twistd logs the line (its log runs by then); twist, whose log begins
    later, prints it on standard error. Either way: exit 1, no traceback."""
    script = twistd()
    if runner == "twist":
        script = str(Path(script).with_name("twist"))
        if not Path(script).exists():
            pytest.skip("no twist script beside twistd")
    (tmp_path / "not-a-socket").write_text("")
    args = ["-n", "--pidfile="] if runner == "twistd" else []
    done = run(
        [
            script,
            *args,
            "portend",
            "--portserver",
            "not-a-socket",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        tmp_path,
    )
    line = "portend: error: portserver: not-a-socket exists and is not a socket."
    if runner == "twist":
        assert done.returncode == 1
        assert (done.stdout, done.stderr) == ("", line + "\n")
    else:
        the_error_line(done, line)
        assert done.stderr == ""
    assert (tmp_path / "not-a-socket").read_text() == ""


# The soak.


def counted_changes(watchlist: Any) -> dict[str, float]:
    """portend_state_changes_total by target, as /metrics says it."""
    from prometheus_client.parser import text_string_to_metric_families

    from txportend._exposition import Exposition

    parts, _ = Exposition(watchlist, None).metrics(None)
    text = b"".join(parts).decode()
    return {
        sample.labels["target"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "portend_state_changes_total"
    }


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest_twisted.ensureDeferred
async def test_soak_flapping_targets_every_change_logged_once_fds_flat(
    reactor: Any,
) -> None:
    from twisted.internet.task import deferLater
    from twisted.logger import globalLogPublisher

    from txportend import Pacing, State
    from txportend._config import Plan, TargetSpec
    from txportend._daemon import Watchlist

    count = int(os.environ.get("TXPORTEND_SOAK_TARGETS", "50"))
    seconds = float(os.environ.get("TXPORTEND_SOAK_SECONDS", "5"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * count + 200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, the limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    sockets = [bound() for _ in range(count)]
    ports = [port for _, port in sockets]
    listening = False
    logged: dict[str, int] = {}

    def observe(event: Any) -> None:
        if event.get("log_namespace") == "txportend._daemon" and "when" in event:
            logged[event["target"]] = logged.get(event["target"], 0) + 1

    watchlist = Watchlist(
        Plan((), tuple(TargetSpec(f"127.0.0.1:{p}", 0.05, 1.0) for p in ports)),
        reactor=reactor,
        pacing=Pacing(reactor),
    )

    async def all_become(state: State) -> None:
        turns = 0
        while not all(t.monitor.state is state for t in watchlist.targets()):
            turns += 1
            assert turns < PATIENCE / 0.05, f"not all {state.value}"
            await deferLater(reactor, 0.05, lambda: None)
            fds_seen.append(open_fds())

    fds_before = open_fds()
    fds_seen: list[int] = []
    globalLogPublisher.addObserver(observe)
    watchlist.startService()
    try:
        await all_become(State.FREE)
        flips = 0
        started = reactor.seconds()
        rss_start = rss_bytes()
        while flips < 2 or reactor.seconds() - started < seconds:
            if listening:
                for n, (sock, port) in enumerate(sockets):
                    sock.close()
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("127.0.0.1", port))
                    sockets[n] = (sock, port)
            else:
                for sock, _ in sockets:
                    sock.listen(128)
            listening = not listening
            flips += 1
            await all_become(State.OCCUPIED if listening else State.FREE)
        rss_growth = rss_bytes() - rss_start
    finally:
        watchlist.stopService()
        globalLogPublisher.removeObserver(observe)
        for sock, _ in sockets:
            sock.close()
    await deferLater(reactor, 0, lambda: None)

    changes = {t.monitor.target: t.monitor.changes for t in watchlist.targets()}
    assert set(changes.values()) == {1 + flips}  # unknown -> free, then each flip
    assert logged == changes  # every change logged once
    assert counted_changes(watchlist) == changes  # and counted so in /metrics
    assert open_fds() == fds_before - count  # every probe's socket closed
    assert max(fds_seen) <= fds_before + count  # at most one probe per target
    assert rss_growth < 64 * 2**20
