"""
The command line: exit codes and messages through a real ``python -m
txportend`` subprocess, ``main()``'s SystemExit contract in-process, and the
parallel waits on a memory reactor.

Loopback only; servers are sockets bound to port 0. Every subprocess and
every loop has a bound, and nothing asserts on timing.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from txportend import Outcome, _cli_args, _cli_waits, cli

from .fakes import accept, memory_reactor, refuse

#: Seconds any one subprocess may take before the test fails.
LIMIT = 60

POSIX = os.name == "posix"
needs_posix = pytest.mark.skipif(not POSIX, reason="POSIX signals and ptys")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "txportend", *args]


def txportend(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m txportend ARGS`` to completion."""
    return subprocess.run(
        command(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )


def one_error_line(stderr: str) -> str:
    """The single line of an error report, checked to be just that."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert stderr.endswith("\n")
    return lines[0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        yield server.getsockname()[1]


@pytest.fixture
def closed() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, not listening)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def listening6() -> Iterator[int]:
    """A port on ::1 that accepts connections."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with server:
        server.listen(128)
        yield server.getsockname()[1]


class Running:
    """A ``python -m txportend`` left running, killed (its session) at the end."""

    def __init__(self, *args: str, **kwargs: Any) -> None:
        options: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
        }
        options.update(kwargs)
        self.process = subprocess.Popen(
            command(*args), start_new_session=True, **options
        )

    def readline(self) -> bytes:
        """One line of its stdout, waiting at most LIMIT seconds for it."""
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], LIMIT)
        assert ready, "no output in time"
        return stdout.readline()

    def finish(self) -> tuple[int, str, str]:
        """Its exit code, stdout and stderr, once it has exited."""
        stdout, stderr = self.process.communicate(timeout=LIMIT)
        return (
            self.process.returncode,
            (stdout or b"").decode(),
            (stderr or b"").decode(),
        )

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=LIMIT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def running() -> Iterator[type[Running]]:
    made: list[Running] = []

    class Tracked(Running):
        def __init__(self, *args: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    yield Tracked
    for one in made:
        one.close()


def probed(server: socket.socket, times: int) -> None:
    """Wait (at most LIMIT seconds each) until ``times`` probes connected."""
    server.settimeout(LIMIT)
    for _ in range(times):
        connection, _ = server.accept()
        connection.close()


def drain(server: socket.socket) -> None:
    """Accept and close whatever connections are queued on ``server``."""
    server.setblocking(False)
    for _ in range(1000):
        try:
            connection, _ = server.accept()
        except OSError:
            return
        connection.close()


# -- waiting: exit 0 and 1, portend's messages ------------------------------


def test_occupied_port_exits_0_silently(listening: int) -> None:
    result = txportend(f"127.0.0.1:{listening}", "occupied")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_free_port_exits_0(closed: int) -> None:
    result = txportend(f"127.0.0.1:{closed}", "free", "-t", "10")
    assert (result.returncode, result.stderr) == (0, "")


def test_ipv6_target_in_brackets(listening6: int) -> None:
    result = txportend(f"[::1]:{listening6}", "occupied", "-t", "10")
    assert (result.returncode, result.stderr) == (0, "")


def test_timeout_waiting_for_occupied_prints_portends_message(closed: int) -> None:
    """Exit 1 and ``Port N not bound on HOST.`` on stderr, as portend does."""
    result = txportend(f"127.0.0.1:{closed}", "occupied", "-t", "0.3")
    assert result.returncode == 1
    assert result.stderr == f"Port {closed} not bound on 127.0.0.1.\n"
    assert result.stdout == ""


def test_timeout_waiting_for_free_prints_portends_message(listening: int) -> None:
    result = txportend(f"127.0.0.1:{listening}", "free", "--timeout", "0.3")
    assert result.returncode == 1
    assert result.stderr == f"Port {listening} not free on 127.0.0.1.\n"


def test_zero_timeout_checks_once(closed: int, listening: int) -> None:
    assert txportend(f"127.0.0.1:{closed}", "occupied", "-t", "0").returncode == 1
    assert txportend(f"127.0.0.1:{listening}", "occupied", "-t", "0").returncode == 0


def test_human_durations_are_accepted(listening: int) -> None:
    result = txportend(
        f"127.0.0.1:{listening}", "occupied", "-t", "1m30s", "--interval", "250ms"
    )
    assert (result.returncode, result.stderr) == (0, "")
    result = txportend(f"127.0.0.1:{listening}", "occupied", "-t", "2 minutes")
    assert (result.returncode, result.stderr) == (0, "")


def test_options_may_come_before_the_targets(listening: int) -> None:
    result = txportend("-t", "10", f"127.0.0.1:{listening}", "-q", "occupied")
    assert (result.returncode, result.stderr) == (0, "")


def test_several_targets_succeed_when_all_reach_the_state(listening: int) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        second = other.getsockname()[1]
        result = txportend(
            f"127.0.0.1:{listening}", f"127.0.0.1:{second}", "occupied", "-t", "10"
        )
    assert (result.returncode, result.stderr) == (0, "")


def test_timeout_names_every_target_still_waiting(listening: int, closed: int) -> None:
    """One portend line per target that did not make it, in the order given."""
    result = txportend(
        f"127.0.0.1:{closed}",
        f"127.0.0.1:{listening}",
        f"0.0.0.0:{closed}",
        "occupied",
        "-t",
        "0.3",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Port {closed} not bound on 127.0.0.1.",
        f"Port {closed} not bound on 0.0.0.0.",
    ]


def test_quiet_timeout_says_nothing(closed: int) -> None:
    result = txportend(f"127.0.0.1:{closed}", "occupied", "-t", "0.3", "-q")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")


# -- --json -------------------------------------------------------------------


def test_json_prints_one_object_per_target_in_order(
    listening: int, closed: int
) -> None:
    result = txportend(
        f"127.0.0.1:{listening}",
        f"127.0.0.1:{closed}",
        "occupied",
        "-t",
        "0.3",
        "--json",
    )
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["target"] for r in records] == [
        f"127.0.0.1:{listening}",
        f"127.0.0.1:{closed}",
    ]
    assert [r["state"] for r in records] == ["occupied", "timeout"]
    assert all(isinstance(r["seconds"], float) and r["seconds"] >= 0 for r in records)
    assert "message" not in records[0]
    assert records[1]["message"] == f"Port {closed} not bound on 127.0.0.1."
    # The timeout line still goes to stderr.
    assert result.stderr == f"Port {closed} not bound on 127.0.0.1.\n"


def test_json_reports_free(closed: int) -> None:
    result = txportend(f"127.0.0.1:{closed}", "free", "--json", "-q")
    assert (result.returncode, result.stderr) == (0, "")
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["state"] == "free"
    assert set(record) == {"target", "state", "seconds"}


# -- --find and --version --------------------------------------------------------


def test_find_prints_a_free_local_port() -> None:
    result = txportend("--find")
    assert (result.returncode, result.stderr) == (0, "")
    port = int(result.stdout)
    assert 1 <= port <= 65535
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_version() -> None:
    from txportend import __version__

    result = txportend("--version")
    assert (result.returncode, result.stdout) == (0, f"txportend {__version__}\n")


# -- bad usage and input: exit 2, one line ---------------------------------------

BAD = [
    (["--find", "--json"], "--find takes no --json"),
    (["--find", "-t", "5", "--interval", "1"], "--find takes no --timeout, --interval"),
    (["localhost", "occupied"], "'localhost': missing port"),
    (["localhost:0", "occupied"], "'localhost:0': port must be a number in 1..65535"),
    (["localhost:70000", "free"], "port must be a number in 1..65535"),
    (["localhost:http", "occupied"], "'localhost:http': port must be a number"),
    (["[::1]:x", "occupied"], "port must be a number"),
    ([":80", "occupied"], "missing host"),
    (["localhost:80", "bound"], "unknown state 'bound'"),
    (["localhost:80", "[::1]:80"], "missing state"),
    (["localhost:80"], "expected HOST:PORT [HOST:PORT ...] occupied|free"),
    (["localhost"], "not 'localhost'"),
    (["occupied"], "no targets"),
    ([], "missing targets and state"),
    (["localhost:80", "occupied", "-t", "soon"], "'soon' is not a duration"),
    (["localhost:80", "occupied", "--interval", "-5"], "must not be negative"),
    (["localhost:80", "occupied", "-t"], "expected one argument"),
    (["localhost:80", "occupied", "--interval", "later"], "not a duration"),
    (["localhost:80", "occupied", "--interval", "inf"], "must be finite"),
    (["localhost:80", "occupied", "--bogus"], "unrecognized arguments: --bogus"),
    (["localhost:80", "occupied", "--"], "missing COMMAND after '--'"),
    (["a:1", "occupied", "b:2", "occupied"], "must come last"),
    (["--find", "localhost:80", "occupied"], "--find takes no targets"),
]


@pytest.mark.parametrize(("args", "expected"), BAD)
def test_bad_input_exits_2_with_one_line(args: list[str], expected: str) -> None:
    result = txportend(*args)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith("txportend: error: ")
    assert expected in line
    assert result.stdout == ""


def test_missing_port_message_is_exact() -> None:
    result = txportend("localhost", "occupied")
    assert result.stderr == (
        "txportend: error: 'localhost': missing port "
        "(expected HOST:PORT or [IPv6]:PORT)\n"
    )


# -- main() in-process: portend's _main contract ---------------------------------


@pytest.mark.parametrize(("args", "expected"), BAD[:6])
def test_main_raises_systemexit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(args)
    assert raised.value.code == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_main_returns_none_after_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) is None
    assert capsys.readouterr().out.startswith("txportend ")


def test_main_returns_none_after_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) is None
    out = capsys.readouterr().out
    assert "occupied" in out
    assert "exit codes" in out


def test_main_reads_sys_argv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["txportend", "nowhere", "free"])
    with pytest.raises(SystemExit) as raised:
        cli.main()
    assert raised.value.code == 2
    assert "'nowhere': missing port" in capsys.readouterr().err


def test_unexpected_error_exits_3_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> int:
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "_find", broken)
    with pytest.raises(SystemExit) as raised:
        cli.main(["--find"])
    assert raised.value.code == 3
    line = one_error_line(capsys.readouterr().err)
    assert line == "txportend: error: unexpected error: RuntimeError: something broke"


def test_keyboard_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_find", interrupted)
    with pytest.raises(SystemExit) as raised:
        cli.main(["--find"])
    assert raised.value.code == 130
    assert one_error_line(capsys.readouterr().err) == "txportend: interrupted by SIGINT"


def test_plain_seconds_do_not_import_the_duration_parser() -> None:
    """tempora is slow to import; ``-t 5`` does not need it."""
    code = (
        "import sys\n"
        "from txportend import _cli_args\n"
        "_cli_args.parse(['localhost:1', 'occupied', '-t', '5', '--interval', '0.5'])\n"
        "print('tempora' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT
    )
    assert result.stdout == "False\n", result.stderr


def test_parse_options() -> None:
    options = _cli_args.parse(["[::1]:80", "db:5432", "free", "-t", "1m", "--json"])
    assert options.targets == [("[::1]:80", "::1", 80), ("db:5432", "db", 5432)]
    assert (options.want, options.timeout, options.interval) == ("free", 60.0, None)
    assert (options.json, options.quiet, options.command) == (True, False, None)
    options = _cli_args.parse(["h:1", "occupied", "--", "app", "--flag", "--", "x"])
    assert options.command == ["app", "--flag", "--", "x"]
    assert options.timeout is None
    assert _cli_args.parse(["--find"]).find


# -- -- COMMAND ------------------------------------------------------------------


def test_command_runs_after_success_and_its_code_is_passed_on(
    listening: int,
) -> None:
    result = txportend(
        f"127.0.0.1:{listening}",
        "occupied",
        "--",
        sys.executable,
        "-c",
        "print('ran'); raise SystemExit(7)",
    )
    assert (result.returncode, result.stdout, result.stderr) == (7, "ran\n", "")


def test_command_output_follows_the_json(listening: int) -> None:
    result = txportend(
        f"127.0.0.1:{listening}",
        "occupied",
        "--json",
        "--",
        sys.executable,
        "-c",
        "print('ran')",
    )
    assert result.returncode == 0
    first, second = result.stdout.splitlines()
    assert json.loads(first)["state"] == "occupied"
    assert second == "ran"


def test_command_not_found_exits_127(listening: int) -> None:
    result = txportend(
        f"127.0.0.1:{listening}", "occupied", "--", "txportend-no-such-command-here"
    )
    assert result.returncode == 127
    assert one_error_line(result.stderr) == (
        "txportend: error: txportend-no-such-command-here: command not found"
    )


@needs_posix
def test_command_that_cannot_run_exits_126(listening: int, tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    result = txportend(f"127.0.0.1:{listening}", "occupied", "--", str(script))
    assert result.returncode == 126
    assert "cannot run" in one_error_line(result.stderr)


def test_command_does_not_run_after_a_timeout(closed: int, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = txportend(
        f"127.0.0.1:{closed}",
        "occupied",
        "-t",
        "0.2",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w').close()",
    )
    assert result.returncode == 1
    assert result.stderr == f"Port {closed} not bound on 127.0.0.1.\n"
    assert not marker.exists()


@needs_posix
def test_command_killed_by_a_signal_ends_txportend_alike(listening: int) -> None:
    """The process is the command: killed by the same signal (the shell's
    128 + N)."""
    result = txportend(
        f"127.0.0.1:{listening}",
        "occupied",
        "--",
        sys.executable,
        "-c",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    )
    assert result.returncode == -signal.SIGKILL


# The handler writes with os.write, not print: a signal that lands while the
# main code is still inside print('ready') (the test reads the line and
# signals at once) would make print() re-enter sys.stdout's buffer, which
# raises "reentrant call" and loses the line (a test that failed at random).
RECEIVER = f"""\
import os, signal, sys, time
def handle(signum, frame):
    os.write(1, b'got ' + signal.Signals(signum).name.encode() + b'\\n')
    os._exit(42)
for name in ('SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT'):
    signal.signal(getattr(signal, name), handle)
os.write(1, b'ready ' + str(os.getpid()).encode() + b'\\n')
for _ in range({LIMIT} * 10):
    time.sleep(0.1)
sys.exit(5)
"""


@needs_posix
@pytest.mark.parametrize("to", ["process", "group"])
@pytest.mark.parametrize(
    "sent", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
)
def test_the_command_takes_over_the_process(
    listening: int, running: type[Running], sent: signal.Signals, to: str
) -> None:
    """
    The command runs in txportend's process (same process id): a signal sent
    to txportend, or to its whole process group (``timeout -s INT``, a job
    runner), reaches the command once and can't leave it orphaned; its exit
    code is the one the caller sees.
    """
    proc = running(
        f"127.0.0.1:{listening}", "occupied", "--", sys.executable, "-c", RECEIVER
    )
    assert proc.readline() == f"ready {proc.process.pid}\n".encode()
    if to == "group":  # its own session: the group is its process id
        os.killpg(proc.process.pid, sent)
    else:
        proc.process.send_signal(sent)
    assert proc.finish() == (42, f"got {sent.name}\n", "")


@needs_posix
def test_ctrl_c_on_the_terminal_reaches_the_command_once(
    listening: int, running: type[Running]
) -> None:
    """
    The terminal sends Ctrl-C's SIGINT to its whole foreground process group:
    the command gets it, in txportend's place.
    """
    import fcntl
    import termios

    master, slave = os.openpty()

    def take_the_terminal() -> None:  # in the new session: our terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = running(
            f"127.0.0.1:{listening}",
            "occupied",
            "--",
            sys.executable,
            "-c",
            RECEIVER,
            stdin=slave,
            preexec_fn=take_the_terminal,
        )
        os.close(slave)
        slave = -1
        assert proc.readline() == f"ready {proc.process.pid}\n".encode()
        os.write(master, b"\x03")  # Ctrl-C
        result = proc.finish()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert result == (42, "got SIGINT\n", "")


# The shell ($$) is the command: its descriptors, then (exec keeps them) the
# signals it has blocked and ignored.
PROCESS_STATE = [
    "/bin/sh",
    "-c",
    "ls /proc/$$/fd; exec grep -E '^Sig(Blk|Ign)' /proc/self/status",
]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_the_command_inherits_nothing_from_the_wait() -> None:
    """
    After a wait on the reactor, the command has the descriptors and signal
    masks it would have had if run directly: none of Twisted's (the poller,
    waker pipes, the signal wakeup descriptor), no signal blocked, none
    ignored that was not ignored before (Python ignores SIGPIPE).
    """
    streams: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "capture_output": True,
        "text": True,
        "timeout": LIMIT,
    }
    direct = subprocess.run(PROCESS_STATE, **streams)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            command(f"127.0.0.1:{port}", "free", "--", *PROCESS_STATE),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            probed(server, 2)  # the quick look, then the core: on the reactor
        finally:
            server.close()
            stdout, stderr = proc.communicate(timeout=LIMIT)
    assert (proc.returncode, stderr) == (0, "")
    assert stdout == direct.stdout


# -- output that can't be written ------------------------------------------------


def with_streams(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m txportend ARGS`` with a shell redirection of its own
    streams (``>&-``, ``2>/dev/full``), capturing what is left."""
    return subprocess.run(
        ["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", *command(*args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )


def into_a_broken_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m txportend ARGS`` with stdout a pipe nobody reads."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            command(*args),
            stdin=subprocess.DEVNULL,
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=LIMIT,
        )
    finally:
        os.close(writer)


def no_noise(stderr: str) -> str:
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    return stderr


needs_dev_full = pytest.mark.skipif(
    not os.path.exists("/dev/full"), reason="needs /dev/full"
)


@needs_posix
def test_json_into_a_broken_pipe_still_runs_the_command(
    listening: int, tmp_path: Path
) -> None:
    """The wait succeeded: the command runs, after a warning."""
    marker = tmp_path / "ran"
    result = into_a_broken_pipe(
        "--json",
        f"127.0.0.1:{listening}",
        "occupied",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w').close()",
    )
    assert result.returncode == 0
    assert no_noise(result.stderr) == (
        "txportend: warning: the --json records were not written: Broken pipe\n"
    )
    assert marker.exists()


@needs_posix
def test_a_timeout_into_a_broken_pipe_exits_1(closed: int) -> None:
    result = into_a_broken_pipe(
        "--json", f"127.0.0.1:{closed}", "occupied", "-t", "0.2"
    )
    assert result.returncode == 1
    assert no_noise(result.stderr) == (
        f"Port {closed} not bound on 127.0.0.1.\n"
        "txportend: warning: the --json records were not written: Broken pipe\n"
    )


@needs_posix
def test_a_closed_stdout_changes_nothing(listening: int) -> None:
    result = with_streams(">&-", f"127.0.0.1:{listening}", "occupied")
    assert (result.returncode, result.stderr) == (0, "")
    result = with_streams(">&-", "--json", f"127.0.0.1:{listening}", "occupied")
    assert result.returncode == 0
    assert no_noise(result.stderr) == (
        "txportend: warning: the --json records were not written: it is closed\n"
    )


@needs_posix
@needs_dev_full
def test_json_on_a_full_disk_warns(listening: int) -> None:
    result = with_streams(">/dev/full", "--json", f"127.0.0.1:{listening}", "occupied")
    assert result.returncode == 0
    assert no_noise(result.stderr) == (
        "txportend: warning: the --json records were not written: "
        "No space left on device\n"
    )


@needs_posix
def test_a_closed_stderr_keeps_the_timeout_off_stdout(closed: int) -> None:
    result = with_streams(
        "2>&-", "--json", f"127.0.0.1:{closed}", "occupied", "-t", "0"
    )
    assert result.returncode == 1
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["state"] == "timeout"


OUTPUT_ONLY = [["--find"], ["--version"], ["--help"]]


@needs_posix
@pytest.mark.parametrize("args", OUTPUT_ONLY)
@pytest.mark.parametrize(
    ("redirect", "reason"),
    [(">&-", "it is closed"), (">/dev/full", "No space left on device")],
)
def test_output_only_options_fail_when_they_cannot_write(
    args: list[str], redirect: str, reason: str
) -> None:
    if "/dev/full" in redirect and not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    result = with_streams(redirect, *args)
    assert result.returncode == 1
    assert one_error_line(no_noise(result.stderr)) == (
        f"txportend: error: could not write to standard output: {reason}"
    )


@needs_posix
@pytest.mark.parametrize("args", OUTPUT_ONLY)
def test_output_only_options_fail_into_a_broken_pipe(args: list[str]) -> None:
    result = into_a_broken_pipe(*args)
    assert result.returncode == 1
    assert one_error_line(no_noise(result.stderr)) == (
        "txportend: error: could not write to standard output: Broken pipe"
    )


@needs_posix
@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
def test_a_usage_error_exits_2_even_when_it_cannot_be_said(redirect: str) -> None:
    if "/dev/full" in redirect and not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    result = with_streams(redirect, "localhost:80", "up")
    assert (result.returncode, result.stdout) == (2, "")


# -- signals during the wait -------------------------------------------------------


@needs_posix
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_wait_cancels_it(
    running: type[Running], sent: signal.Signals
) -> None:
    """Exit 128 + N with one line; the command does not run."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        port = server.getsockname()[1]
        proc = running(
            f"127.0.0.1:{port}",
            "free",
            "--json",
            "--",
            sys.executable,
            "-c",
            "print('ran')",
        )
        # The quick look before the reactor starts, then the Deferred core:
        # the wait is under way.
        probed(server, 2)
        proc.process.send_signal(sent)
        code, stdout, stderr = proc.finish()
        drain(server)
    assert code == 128 + sent
    assert one_error_line(stderr) == (
        f"txportend: interrupted by {sent.name} while waiting for 127.0.0.1:{port}"
    )
    (record,) = [json.loads(line) for line in stdout.splitlines()]
    assert record["state"] == "interrupted"
    assert "ran" not in stdout


# -- the progress line -------------------------------------------------------------


def read_all(fd: int) -> bytes:
    """Read a pty master until the other side is closed (bounded)."""
    chunks = []
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every slave end is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


@needs_posix
def test_progress_line_on_a_terminal(closed: int, running: type[Running]) -> None:
    """
    On a terminal the progress line is drawn with ``\\r``, names the target
    and is erased before the timeout message.
    """
    master, slave = os.openpty()
    try:
        proc = running(f"127.0.0.1:{closed}", "occupied", "-t", "1", stderr=slave)
        os.close(slave)
        slave = -1
        output = read_all(master).decode()
        code, _, _ = proc.finish()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert code == 1
    erase = "\r\x1b[K"
    assert f"{erase}txportend: " in output
    assert f"waiting until occupied: 127.0.0.1:{closed}" in output
    # The last thing written is the erase, then portend's message.
    assert output.rsplit(erase, 1)[1] == (f"Port {closed} not bound on 127.0.0.1.\r\n")


@needs_posix
def test_quiet_means_no_progress_line_on_a_terminal(
    closed: int, running: type[Running]
) -> None:
    master, slave = os.openpty()
    try:
        proc = running(f"127.0.0.1:{closed}", "occupied", "-t", "1", "-q", stderr=slave)
        os.close(slave)
        slave = -1
        output = read_all(master)
        code, _, _ = proc.finish()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert (code, output) == (1, b"")


def test_no_progress_line_when_stderr_is_not_a_terminal(closed: int) -> None:
    """Long enough for several redraws, yet only portend's line arrives."""
    result = txportend(f"127.0.0.1:{closed}", "occupied", "-t", "1")
    assert result.returncode == 1
    assert result.stderr == f"Port {closed} not bound on 127.0.0.1.\n"


# -- the parallel waits, on a memory reactor ----------------------------------------


def waits(
    args: list[str], reactor: Any = None, progress: Any = None
) -> tuple[Any, _cli_waits.Waits]:
    reactor = reactor if reactor is not None else memory_reactor()
    return reactor, _cli_waits.Waits(reactor, _cli_args.parse(args), progress)


def test_waits_succeed_once_every_target_is_there() -> None:
    reactor, w = waits(["127.0.0.1:1", "localhost:2", "occupied"])
    w.start()
    assert len(reactor.tcpClients) == 2
    accept(reactor, 0)
    assert not w.result.called
    reactor.advance(0.25)  # within the probe's 0.5 s handshake timeout
    accept(reactor, 1)
    assert w.result.called
    assert w.exit_code() == 0
    assert [(o.state, o.seconds) for o in w.outcomes] == [
        ("occupied", 0.0),
        ("occupied", 0.25),
    ]
    assert reactor.getDelayedCalls() == []


def test_interrupt_cancels_every_wait_and_leaves_nothing_behind() -> None:
    reactor, w = waits(["127.0.0.1:1", "127.0.0.1:2", "occupied", "-t", "30"])
    w.start()
    refuse(reactor, 0)
    w.interrupt(signal.SIGINT)
    assert w.result.called
    assert [o.state for o in w.outcomes] == ["interrupted", "interrupted"]
    assert w.exit_code() == 130
    assert reactor.getDelayedCalls() == []
    assert all(c.stoppedConnecting for c in reactor.connectors[1:])


def test_interrupt_before_the_start() -> None:
    _, w = waits(["127.0.0.1:1", "occupied"])
    w.interrupt(signal.SIGTERM)
    assert w.result.called
    assert w.exit_code() == 128 + signal.SIGTERM


def test_interrupt_after_the_end_changes_nothing() -> None:
    reactor, w = waits(["127.0.0.1:1", "occupied"])
    w.start()
    accept(reactor)
    w.interrupt(signal.SIGINT)
    assert w.exit_code() == 0


def test_a_host_that_does_not_resolve_fails_free_at_once_with_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The other waits are stopped: all of them can no longer succeed."""
    options = _cli_args.parse(["nowhere.test:1", "127.0.0.1:2", "free", "--json"])
    reactor = memory_reactor({})
    w = _cli_waits.Waits(reactor, options)
    w.start()
    assert w.result.called
    assert [o.state for o in w.outcomes] == ["error", "interrupted"]
    assert reactor.getDelayedCalls() == []
    assert w.report(options) == 1
    out, err = capsys.readouterr()
    assert one_error_line(err) == (
        "txportend: error: nowhere.test:1: Host 'nowhere.test' did not resolve."
    )
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["state"] == "error"
    assert first["message"] == "Host 'nowhere.test' did not resolve."
    assert second["state"] == "interrupted"


def test_timeouts_settle_every_target() -> None:
    reactor, w = waits(["127.0.0.1:1", "127.0.0.1:2", "occupied", "-t", "2"])
    w.start()
    refuse(reactor, 0)
    accept(reactor, 1)
    refused = 2
    for _ in range(1000):
        if w.result.called:
            break
        reactor.advance(0.05)
        if len(reactor.tcpClients) > refused:  # target 1 probed again
            refuse(reactor)
            refused += 1
    assert w.result.called
    assert [o.state for o in w.outcomes] == ["timeout", "occupied"]
    assert w.outcomes[0].message == "Port 1 not bound on 127.0.0.1."
    assert w.outcomes[0].seconds >= 2
    assert w.exit_code() == 1
    assert reactor.getDelayedCalls() == []


def test_interval_is_passed_to_the_core() -> None:
    reactor, w = waits(["127.0.0.1:1", "occupied", "--interval", "2"])
    w.start()
    refuse(reactor)
    assert [c.getTime() for c in reactor.getDelayedCalls()] == [2.0]
    w.interrupt(signal.SIGINT)


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("not a real terminal")


def test_progress_line_is_redrawn_and_erased() -> None:
    stream = Terminal()
    reactor, w = waits(
        ["127.0.0.1:1", "127.0.0.1:2", "occupied", "-t", "30"], progress=stream
    )
    w.start()
    accept(reactor, 1)
    reactor.advance(_cli_waits.PROGRESS_INTERVAL)
    assert stream.getvalue() == (
        "\r\x1b[Ktxportend: 0.2s/30s, waiting until occupied: 127.0.0.1:1"
    )
    refuse(reactor, 0)  # the first probe of :1 was refused
    reactor.advance(0.01)  # and the next one starts
    assert reactor.tcpClients[-1][:2] == ("127.0.0.1", 1)
    accept(reactor, -1)
    assert w.result.called
    assert stream.getvalue().endswith("waiting until occupied: 127.0.0.1:1\r\x1b[K")
    assert reactor.getDelayedCalls() == []


def test_no_progress_line_for_a_quick_wait() -> None:
    stream = Terminal()
    reactor, w = waits(["127.0.0.1:1", "occupied"], progress=stream)
    w.start()
    accept(reactor)
    reactor.advance(1)
    assert stream.getvalue() == ""


def test_progress_line_fits_the_terminal() -> None:
    _, w = waits(["127.0.0.1:1", "127.0.0.1:2", "occupied"], progress=Terminal())
    w.start()
    progress = w._progress
    assert progress is not None
    assert progress.line(200) == (
        "txportend: 0.0s, waiting until occupied: 127.0.0.1:1, 127.0.0.1:2"
    )
    assert progress.line(30) == "txportend: 0.0s, waiting u..."
    assert len(progress.line(30)) < 30
    w.interrupt(signal.SIGINT)


# -- the quick look before Twisted ---------------------------------------------------


def test_main_returns_none_when_already_occupied(listening: int) -> None:
    """In-process: a target already there needs no reactor at all."""
    assert cli.main([f"127.0.0.1:{listening}", "occupied", "-t", "5"]) is None


def test_main_returns_none_when_already_free_with_json(
    closed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([f"0.0.0.0:{closed}", "free", "--json"]) is None
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (record["target"], record["state"]) == (f"0.0.0.0:{closed}", "free")


@pytest.mark.parametrize(
    ("answer", "want", "decided"),
    [
        ("ACCEPTED", "occupied", True),
        ("ACCEPTED", "free", False),
        ("REFUSED", "free", True),
        ("UNREACHABLE", "free", True),  # ::1 where IPv6 is off: nothing there
        ("REFUSED", "occupied", False),
        (None, "occupied", False),  # an answer still coming: the core decides
    ],
)
def test_the_quick_look_makes_the_one_judgement(
    answer: str | None, want: str, decided: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from txportend import _result

    outcome = None if answer is None else getattr(Outcome, answer)
    monkeypatch.setattr(_result, "connect_now", lambda address, port: outcome)
    outcomes = _cli_waits.already(_cli_args.parse(["127.0.0.1:80", want]))
    assert (outcomes is not None) == decided


def test_the_quick_look_leaves_this_machines_errors_to_the_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from txportend import _result

    def no_fds(address: str, port: int) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_result, "connect_now", no_fds)
    assert _cli_waits.already(_cli_args.parse(["127.0.0.1:80", "free"])) is None


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


REACTOR_USED = """\
import sys
from txportend import cli
try:
    cli.main({args!r})
except SystemExit:
    pass
print('twisted.internet.reactor' in sys.modules)
"""


def test_a_target_already_there_does_not_start_the_reactor(listening: int) -> None:
    args = [f"127.0.0.1:{listening}", "occupied"]
    assert run_python(REACTOR_USED.format(args=args)) == "False\n"


def test_find_without_a_portserver_needs_no_twisted() -> None:
    """--find without PORTSERVER_ADDRESS is one bind: Twisted's reactor and
    Deferreds are not even imported."""
    code = (
        "import os, sys\n"
        "os.environ.pop('PORTSERVER_ADDRESS', None)\n"
        "from txportend import cli\n"
        "try:\n"
        "    cli.main(['--find'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m in sys.modules for m in "
        "('twisted.internet.reactor', 'twisted.internet.defer')])\n"
    )
    port, imported = run_python(code).splitlines()
    assert 0 < int(port) < 65536
    assert imported == "[False, False]"


def test_a_target_not_there_yet_is_waited_on_by_the_core(closed: int) -> None:
    args = [f"127.0.0.1:{closed}", "occupied", "-t", "0", "-q"]
    assert run_python(REACTOR_USED.format(args=args)) == "True\n"


@pytest.mark.parametrize(
    ("host", "tried"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1.2.3", "127.1.2.3"),
        ("0.0.0.0", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "0:0:0:0:0:0:0:1"),
    ],
)
def test_loopback_literals_get_the_quick_look(
    host: str, tried: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from txportend import _result

    seen: list[str] = []

    def accept(address: str, port: int) -> Any:
        seen.append(address)
        return Outcome.ACCEPTED

    monkeypatch.setattr(_result, "connect_now", accept)
    assert _cli_waits.already(_cli_args.parse([f"{host}:80", "occupied"])) is not None
    assert seen == [tried]


@pytest.mark.parametrize(
    "host",
    ["localhost", "db.example", "192.0.2.1", "[2001:db8::1]", "[::ffff:127.0.0.1]"],
)
def test_names_and_other_addresses_are_left_to_the_core(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lookup and no connection attempt before Twisted: a name (even
    localhost) is resolved by the core's resolver, and an address elsewhere
    would get a half-made attempt."""
    import socket as sockets

    from txportend import _result

    def never(*args: object) -> Any:
        raise AssertionError("no lookup and no connection in the quick look")

    monkeypatch.setattr(_result, "connect_now", never)
    monkeypatch.setattr(sockets, "getaddrinfo", never)
    assert _cli_waits.already(_cli_args.parse([f"{host}:80", "occupied"])) is None


def test_main_does_not_run_inside_a_running_reactor(
    closed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    pytest-twisted runs the global reactor: main() refuses a wait there (the
    core's Deferreds are the API for that) and changes nothing.
    """
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(SystemExit) as raised:
        cli.main([f"127.0.0.1:{closed}", "occupied", "-t", "0"])
    assert raised.value.code == 3
    line = one_error_line(capsys.readouterr().err)
    assert "the reactor is already running" in line
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_a_crash_stops_every_wait_and_fails_the_result() -> None:
    reactor, w = waits(["127.0.0.1:1", "127.0.0.1:2", "occupied"])
    w.start()
    w.crash(RuntimeError("bug"))
    failure = w.result.result
    assert isinstance(failure.value, RuntimeError)
    w.result.addErrback(lambda _: None)
    assert reactor.getDelayedCalls() == []
    assert all(c.stoppedConnecting for c in reactor.connectors)


# -- the timeout as given, and Ctrl-C at any moment ----------------------------------


def test_progress_line_shows_the_timeout_as_given() -> None:
    """``-t 1m30s`` shows ``/90s``, though the quick look spent 0.5 s of it:
    the core waits for what is left."""
    options = _cli_args.parse(["127.0.0.1:1", "occupied", "-t", "1m30s"])
    reactor = memory_reactor()
    w = _cli_waits.Waits(reactor, options, Terminal(), spent=0.5)
    w.start()
    progress = w._progress
    assert progress is not None
    assert progress.line(200).startswith("txportend: 0.5s/90s, waiting")
    assert 89.5 in [c.getTime() for c in reactor.getDelayedCalls()]
    w.interrupt(signal.SIGINT)


@pytest.mark.parametrize(("timeout", "shown"), [(0.0, "/0s"), (-1.0, "")])
def test_a_timeout_of_zero_or_less_checks_once(timeout: float, shown: str) -> None:
    """As portend: one probe, then portend's message (the core gets 0)."""
    options = _cli_args.Options(
        targets=[("127.0.0.1:1", "127.0.0.1", 1)], want="occupied", timeout=timeout
    )
    reactor = memory_reactor()
    w = _cli_waits.Waits(reactor, options, Terminal())
    w.start()
    progress = w._progress
    assert progress is not None
    assert progress.line(200) == (
        f"txportend: 0.0s{shown}, waiting until occupied: 127.0.0.1:1"
    )
    refuse(reactor)
    reactor.advance(0)
    assert w.result.called
    assert len(reactor.tcpClients) == 1
    assert [(o.state, o.message) for o in w.outcomes] == [
        ("timeout", "Port 1 not bound on 127.0.0.1.")
    ]
    assert w.exit_code() == 1


def test_a_zero_timeout_says_portends_message(closed: int) -> None:
    result = txportend(f"127.0.0.1:{closed}", "occupied", "-t", "0")
    assert (result.returncode, result.stderr) == (
        1,
        f"Port {closed} not bound on 127.0.0.1.\n",
    )


def started_txportend(*args: str) -> subprocess.Popen[bytes]:
    """
    ``python -X importtime -m txportend ARGS``, returned once ``txportend.cli``
    is imported (Python reports each import on stderr as it ends).
    """
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "txportend", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    for _ in range(10_000):
        ready, _, _ = select.select([proc.stderr], [], [], LIMIT)
        line = proc.stderr.readline() if ready else b""
        assert line, "txportend.cli was never imported"
        if line.rstrip().endswith(b"| txportend.cli"):
            return proc
    raise AssertionError("txportend.cli was never imported")


@needs_posix
def test_ctrl_c_at_any_moment_says_one_line_and_exits_130(closed: int) -> None:
    """
    Through the quick look, Twisted's import, the wait and the exit: one
    line, exit 130, never a traceback. (The target stays closed: the wait
    can only end by the signal.)
    """
    for step in range(20):
        proc = started_txportend(f"127.0.0.1:{closed}", "occupied", "-t", "60")
        time.sleep(step * 0.015)  # spreads the moments; nothing is timed
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=LIMIT)
        said = [
            line
            for line in stderr.decode().splitlines()
            if not line.startswith("import time:")
        ]
        # 130, or ended by SIGINT itself (the shell shows 130 for both): when
        # Python saw the KeyboardInterrupt in some of its own C paths (during
        # an import), it re-raises SIGINT on its way out.
        assert proc.returncode in (130, -signal.SIGINT), stderr
        assert len(said) == 1, stderr
        assert said[0].startswith("txportend: interrupted"), stderr


CTRL_C_DURING_IMPORT = """\
import runpy, sys

class CtrlC:  # Ctrl-C as the command line imports argparse
    def find_spec(self, name, path=None, target=None):
        if name == "argparse":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
sys.argv = ["txportend", "--version"]
runpy.run_module("txportend", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_the_command_line_is_imported() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_DURING_IMPORT],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert (result.returncode, result.stderr) == (
        130,
        "txportend: interrupted by SIGINT\n",
    )


# -- names that hang, and --find through a portserver --------------------------------

HANGING_LOOKUP = """\
import socket, sys, threading
def hang(*args, **kwargs):
    threading.Event().wait()  # a DNS server that never answers
socket.getaddrinfo = hang
from txportend import cli
cli.main(sys.argv[1:])
"""


def test_a_lookup_that_hangs_does_not_hold_up_the_exit() -> None:
    """-t 0.5 on a name whose lookup never finishes: the timeout, with a
    message saying the lookup did not finish, and the process ends (the
    lookup thread is not waited for; were it, this would never return)."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            HANGING_LOOKUP,
            "slow.example:80",
            "occupied",
            "-t",
            "0.5",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "Port 80 not bound on slow.example."
        " The lookup of slow.example did not finish.\n"
    )


@needs_posix
def test_find_asks_the_portserver_when_one_is_set() -> None:
    from .test_portserver import SERVER, unique_address

    address = unique_address()
    base = 23000 + (os.getpid() % 100) * 10
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, address, f"{base}-{base + 9}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n"
        env = dict(os.environ, PORTSERVER_ADDRESS=address)
        found = subprocess.run(
            command("--find"), capture_output=True, text=True, timeout=LIMIT, env=env
        )
        assert (found.returncode, found.stderr) == (0, "")
        assert base <= int(found.stdout) <= base + 9
        env["PORTSERVER_ADDRESS"] = missing = unique_address()  # nothing there
        alone = subprocess.run(
            command("--find"), capture_output=True, text=True, timeout=LIMIT, env=env
        )
        # as portpicker's pick_unused_port: a warning, and a port found alone
        assert alone.returncode == 0
        assert 0 < int(alone.stdout) < 65536
        assert alone.stderr.startswith(
            f"txportend: warning: Could not reach the portserver at {missing}"
        )
        assert alone.stderr.endswith(" Found a port without it.\n")
        assert alone.stderr.count("\n") == 1
    finally:
        server.terminate()
        server.communicate(timeout=LIMIT)
