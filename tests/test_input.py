"""
Bad input, kind by kind, at every face: the Deferred API (refused
synchronously, the same way by every function), the blocking API (the same
error in the calling thread) and the command line (exit 2, one line on
stderr). And the input that must keep working.

No DNS: the Deferred API runs on a memory reactor with a scripted resolver,
and a refused host never reaches a resolver. Loopback only, ports bound to 0.
"""

from __future__ import annotations

import datetime
import math
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import txportend
from txportend import _cli_args, blocking, cli
from txportend._hostport import check_host

from .conftest import BindScript
from .fakes import memory_reactor

BAD_HOSTS: list[Any] = [
    127,
    b"127.0.0.1",
    "localhost\x00junk",
    "a b",
    "local\thost",
    "localhost\n",
    "a..b",
    "..",
    ".x",
    "a" * 64,
    ".".join(["a" * 50] * 5),
    "[::1]",
    "fe80::1%nosuchif0",
    "localhost:80",
]


def refusal(call: Callable[[], object]) -> tuple[type[BaseException], str]:
    """The exception a call raised synchronously, as (type, message)."""
    try:
        result = call()
    except (TypeError, ValueError) as error:
        return type(error), str(error)
    pytest.fail(f"{call} was not refused at once; it returned {result!r}")


def expected(host: object) -> tuple[type[BaseException], str]:
    """The one refusal every face gives for ``host``: check_host's."""
    return refusal(lambda: check_host(host))


# -- the Deferred API -------------------------------------------------------------

DEFERRED_CALLS: dict[str, Callable[[Any, Any, Any], object]] = {
    "occupied": lambda host, port, r: txportend.occupied(host, port, 1, reactor=r),
    "free": lambda host, port, r: txportend.free(host, port, 1, reactor=r),
    "probe": lambda host, port, r: txportend.probe(host, port, reactor=r),
    "assert_free": lambda host, port, r: txportend.assert_free(host, port, reactor=r),
    "Checker": lambda host, port, r: txportend.Checker(reactor=r).assert_free(
        host, port
    ),
    "can_bind": lambda host, port, r: txportend.can_bind(host, port, reactor=r),
}


@pytest.mark.parametrize("face", sorted(DEFERRED_CALLS))
@pytest.mark.parametrize("host", BAD_HOSTS, ids=repr)
def test_the_deferred_api_refuses_a_bad_host_at_once(
    face: str, host: object, bind_script: BindScript
) -> None:
    """Not a wait that retries until its timeout, nor a failed Deferred, nor
    an AttributeError from inside: check_host's error, raised synchronously,
    before any lookup, connection or bind."""
    reactor = memory_reactor()
    assert refusal(lambda: DEFERRED_CALLS[face](host, 80, reactor)) == expected(host)
    assert reactor.nameResolver.asked == []
    assert reactor.tcpClients == [] and bind_script.calls == []
    assert reactor.getDelayedCalls() == []


GOOD_HOSTS = [
    "127.0.0.1",
    "::1",
    "0.0.0.0",
    "::",
    "fe80::1%1",
    "localhost",
    "localhost.",
    "web_1-db.compose",
    "b\u00fccher.example",
]


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_the_deferred_api_keeps_usable_hosts(host: str) -> None:
    """Literals and bind addresses are probed, names are looked up: as given."""
    reactor = memory_reactor()
    d = txportend.occupied(host, 80, 1, reactor=reactor)
    reactor.advance(0)
    asked = reactor.nameResolver.asked
    connected = [h for h, *_ in reactor.tcpClients]
    assert asked == [host] or connected == [txportend.client_host(host)]
    d.cancel()
    d.addErrback(lambda _: None)
    assert reactor.getDelayedCalls() == []


# Durations: (timeout, error) every timeout of a wait and assert_free refuses.
BAD_TIMEOUTS: list[tuple[Any, type[BaseException]]] = [
    ("5", TypeError),
    (b"5", TypeError),
    (True, TypeError),
    ([1], TypeError),
    (math.nan, ValueError),
]

TIMEOUT_CALLS: dict[str, Callable[[Any, Any], object]] = {
    "occupied": lambda t, r: txportend.occupied("127.0.0.1", 80, t, reactor=r),
    "free": lambda t, r: txportend.free("127.0.0.1", 80, t, reactor=r),
    "assert_free": lambda t, r: txportend.assert_free("127.0.0.1", 80, t, reactor=r),
    "Checker": lambda t, r: txportend.Checker(t, reactor=r).assert_free(
        "127.0.0.1", 80
    ),
    "probe": lambda t, r: txportend.probe("127.0.0.1", 80, t, reactor=r),
}


@pytest.mark.parametrize("face", sorted(TIMEOUT_CALLS))
@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS, ids=repr)
def test_the_deferred_api_refuses_a_bad_timeout_at_once(
    face: str, timeout: object, error: type[BaseException]
) -> None:
    """Strings are for the command line; NaN never times out; a bool is not
    a number of seconds. The same error, with the same message, everywhere."""
    reactor = memory_reactor()
    kind, message = refusal(lambda: TIMEOUT_CALLS[face](timeout, reactor))
    assert kind is error
    assert message.startswith("timeout must ")
    assert reactor.tcpClients == [] and reactor.getDelayedCalls() == []


@pytest.mark.parametrize("face", sorted(TIMEOUT_CALLS))
def test_every_timeout_takes_a_timedelta(face: str) -> None:
    reactor = memory_reactor()
    d: Any = TIMEOUT_CALLS[face](datetime.timedelta(milliseconds=250), reactor)
    d.cancel()
    d.addErrback(lambda _: None)
    assert reactor.getDelayedCalls() == []


def test_a_probes_own_timeout_is_never_negative() -> None:
    """A probe has no "check once" reading: a negative timeout is refused."""
    kind, message = refusal(
        lambda: txportend.probe("127.0.0.1", 80, -1, reactor=memory_reactor())
    )
    assert (kind, message) == (ValueError, "timeout must not be negative: -1")


@pytest.mark.parametrize(
    ("interval", "error"),
    [
        ("0.1", TypeError),
        (None, TypeError),
        (True, TypeError),
        (-1, ValueError),
        (datetime.timedelta(seconds=-1), ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
    ],
    ids=repr,
)
@pytest.mark.parametrize("face", ["occupied", "free"])
def test_the_deferred_api_refuses_a_bad_interval_at_once(
    face: str, interval: object, error: type[BaseException]
) -> None:
    reactor = memory_reactor()
    wait = getattr(txportend, face)
    kind, message = refusal(
        lambda: wait("127.0.0.1", 80, 1, interval=interval, reactor=reactor)
    )
    assert kind is error and message.startswith("interval must ")
    assert reactor.tcpClients == [] and reactor.getDelayedCalls() == []


# -- the blocking API --------------------------------------------------------------

BLOCKING_CALLS: dict[str, Callable[[Any, Any], object]] = {
    "occupied": lambda host, port: blocking.occupied(host, port, 1),
    "free": lambda host, port: blocking.free(host, port, 1),
    "Checker": lambda host, port: blocking.Checker().assert_free(host, port),
}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, not listening)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.mark.parametrize("face", sorted(BLOCKING_CALLS))
@pytest.mark.parametrize("host", BAD_HOSTS, ids=repr)
def test_the_blocking_api_refuses_a_bad_host(
    face: str, host: object, closed_port: int
) -> None:
    """Checker().assert_free(127, port) used to check the name "127" and
    return None; occupied("a..b", port) to retry until its timeout."""
    assert refusal(lambda: BLOCKING_CALLS[face](host, closed_port)) == expected(host)


@pytest.mark.parametrize("face", sorted(BLOCKING_CALLS))
@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS, ids=repr)
def test_the_blocking_api_refuses_a_bad_timeout(
    face: str, timeout: object, error: type[BaseException], closed_port: int
) -> None:
    calls: dict[str, Callable[[], object]] = {
        "occupied": lambda: blocking.occupied("127.0.0.1", closed_port, timeout),
        "free": lambda: blocking.free("127.0.0.1", closed_port, timeout),
        "Checker": lambda: blocking.Checker(timeout).assert_free(
            "127.0.0.1", closed_port
        ),
    }
    kind, message = refusal(calls[face])
    assert kind is error and message.startswith("timeout must ")


@pytest.mark.parametrize("timeout", [-1, -0.5, datetime.timedelta(seconds=-1)])
def test_a_negative_blocking_timeout_checks_once(
    timeout: object, closed_port: int
) -> None:
    """As portend's occupied: a deadline already past, one probe, Timeout."""
    with pytest.raises(txportend.Timeout, match=f"Port {closed_port} not bound"):
        blocking.occupied("127.0.0.1", closed_port, timeout)  # type: ignore[arg-type]
    blocking.free("127.0.0.1", closed_port, timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", ["0.1", -1, math.inf])
def test_the_blocking_api_refuses_a_bad_interval(
    interval: object, closed_port: int
) -> None:
    kind, message = refusal(
        lambda: blocking.free("127.0.0.1", closed_port, 1, interval=interval)  # type: ignore[arg-type]
    )
    assert kind is (TypeError if isinstance(interval, str) else ValueError)
    assert message.startswith("interval must ")


# -- the command line ----------------------------------------------------------


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the command line in-process (a usage error never starts the
    reactor), check exit 2 and one line on stderr, and return that line."""
    assert cli._main(list(args)) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.endswith("\n") and len(err.splitlines()) == 1, err
    assert err.startswith("txportend: error: ")
    return err


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1:46\t469", "a tab"),
        ("127.0.0.1:80\r", "a carriage return"),
        ("127.0.0.1:8\n0", "a line feed"),
        (" 127.0.0.1:80", "a space"),
        ("nobody@127.0.0.1:80/x?y#z", "no user info"),
        ("127.0.0.1:80/x", "no path"),
        ("127.0.0.1:80?y", "no query"),
        ("127.0.0.1:80#z", "no fragment"),
        ("127.0.0.1:", "missing port"),
        ("127.0.0.1:+80", "port must be a number"),
        ("a..b:80", "empty label"),
        ("..:80", "empty label"),
        ("a b:80", "a space"),
        ("localhost\x01:80", "the character"),
        ("[[::1]]:80", "missing port"),
        ("[a[::1]:80", "not an IPv6 address"),
        ("::1:80", "in brackets"),
        ("[fe80::1%nosuchif0]:80", "no network interface named 'nosuchif0'"),
        ("x" * 64 + ":80", "longer than 63"),
    ],
    ids=repr,
)
def test_the_command_line_refuses_a_bad_target(
    capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    line = usage_error(capsys, target, "free", "-t", "1")
    assert message in line
    assert repr(target) in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "35m1000000000000000000000000000000s"], "too large"),
        (["-t", "1e400"], "too large"),
        (["-t", "1m -30s"], "a sign goes only in front"),
        (["-t", "1:30"], "write 1h30m or 1m30s"),
        (["-t", "1,5"], "not a duration"),
        (["-t", "nan"], "not a duration"),
        (["--interval", "-1"], "the interval must not be negative"),
        (["--interval=-1m30s"], "the interval must not be negative"),
        (["--interval", "inf"], "the interval must be finite"),
        (["--interval", "35m1000000000000000000000000000000s"], "too large"),
    ],
)
def test_the_command_line_refuses_a_bad_duration(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    line = usage_error(capsys, "127.0.0.1:80", "free", *args)
    assert message in line


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("-1", -1.0),
        ("-1m30s", -90.0),
        ("-0.5", -0.5),
        ("1m30s", 90.0),
        ("inf", math.inf),
    ],
)
def test_the_command_lines_timeout_lets_a_negative_value_through(
    text: str, seconds: float
) -> None:
    """portend's command line reads -t -1 as "check once"; so do the waits."""
    assert _cli_args._seconds(text) == seconds


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("250ms", 0.25)])
def test_the_command_lines_interval_takes_finite_durations(
    text: str, seconds: float
) -> None:
    assert _cli_args._interval(text) == seconds


def test_a_negative_timeout_at_the_command_line_checks_once(closed_port: int) -> None:
    """Exit 1 after one check, as portend's ``-t -1``; not exit 2."""
    target = f"127.0.0.1:{closed_port}"
    result = subprocess.run(
        [sys.executable, "-m", "txportend", target, "occupied", "-t", "-1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"Port {closed_port} not bound on 127.0.0.1" in result.stderr
