"""
HostPort, client_host, target and duration parsing.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import socket

import portend
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import txportend
from txportend._hostport import (
    check_host,
    check_port,
    parse_duration,
    parse_target,
    seconds,
    timeout_seconds,
)
from txportend._schedule import interval_policy

ports = st.integers(min_value=1, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a)))


@given(host=st.one_of(ipv4, ipv6), port=ports)
def test_from_addr_round_trips(host: str, port: int) -> None:
    hp = txportend.HostPort.from_addr((host, port))
    assert hp.host == txportend.client_host(host).lower()
    assert hp.port == port
    assert parse_target(hp) == hp


@given(host=st.one_of(ipv4, ipv6, st.just("localhost")), port=ports)
def test_hostport_agrees_with_portend(host: str, port: int) -> None:
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ours, theirs = txportend.HostPort(text), portend.HostPort(text)
    assert (ours.host, ours.port, str(ours)) == (theirs.host, theirs.port, str(theirs))


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "::0", "::0.0.0.0", "127.0.0.1", "example.org", "::1"]
)
def test_client_host_agrees_with_portend(host: str) -> None:
    assert txportend.client_host(host) == portend.client_host(host)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "missing port"),
        ("localhost:", "missing port"),
        (":8080", "missing host"),
        ("localhost:0", "1..65535"),
        ("localhost:65536", "1..65535"),
        ("localhost:http", "1..65535"),
        ("[::1]8080", "missing port"),
        ("127.0.0.1 :80", "has a space"),
        ("local host:80", "has a space"),
        ("127.0.0.1:46\t469", "has a tab"),
        ("127.0.0.1:80\n", "has a line feed"),
        ("\r127.0.0.1:80", "has a carriage return"),
        ("127.0.0.1:8\x000", "has the character"),
        ("nobody@127.0.0.1:80", "no user info"),
        ("127.0.0.1:80/x", "no path"),
        ("127.0.0.1:80?y", "no query"),
        ("127.0.0.1:80#z", "no fragment"),
        ("nobody@127.0.0.1:80/x?y#z", "no user info"),
        ("127.0.0.1:+80", "port must be a number"),
        ("127.0.0.1:-80", "port must be a number"),
        ("127.0.0.1:\u0668\u0660", "port must be a number"),
        ("[::1]:", "missing port"),
        ("[::1]", "missing port"),
        ("[::1", "missing ']'"),
        ("::1:80", "in brackets"),
        ("[127.0.0.1]:80", "brackets are for IPv6"),
        ("[]:80", "missing host"),
        ("a..b:80", "empty label"),
        ("[fe80::1%nosuchif0]:80", "no network interface named 'nosuchif0'"),
    ],
)
def test_parse_target_rejects_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_target(text)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(repr(text))  # names the target


@pytest.mark.parametrize(
    "text",
    [
        "[::1]:80",
        "[fe80::1%lo]:80",
        "[fe80::1%1]:80",
        "localhost:80",
        "0.0.0.0:80",
        "[::]:80",
        "db_1.local.:5432",
        "b\u00fccher.de:443",
    ],
)
def test_parse_target_keeps_documented_forms(text: str) -> None:
    target = parse_target(text)
    assert target == text
    assert f"{target.host}:{target.port}" == text.replace("[", "").replace("]", "")


target_texts = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda before, host, port, after: f"{before}{host}:{port}{after}",
        st.sampled_from(["", " ", "\t", "user@", "["]),
        st.sampled_from(["localhost", "127.0.0.1", "[::1]", "::1", "a..b", "db"]),
        st.sampled_from(["80", "+80", " 80", "8\t0", "", "0", "65536"]),
        st.sampled_from(["", "\n", "/x", "?y", "#z", "]"]),
    ),
)


@given(target_texts)
def test_parse_target_takes_any_text_or_refuses_it_in_one_line(text: str) -> None:
    """Never another exception, never a target that differs from the text."""
    try:
        target = parse_target(text)
    except ValueError as error:
        assert "\n" not in str(error)
        return
    assert target == text
    assert target.host is not None and 1 <= (target.port or 0) <= 65535
    assert f"{target.host}:{target.port}" == text.replace("[", "").replace("]", "")
    check_host(target.host)


@given(host=st.one_of(ipv4, ipv6), port=ports, junk=st.sampled_from(" \t\r\n\x00\x0b"))
def test_parse_target_refuses_whitespace_anywhere(
    host: str, port: int, junk: str
) -> None:
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for at in range(len(text) + 1):
        with pytest.raises(ValueError):
            parse_target(text[:at] + junk + text[at:])


@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_parse_target_rejects_ports_out_of_range(port: int) -> None:
    with pytest.raises(ValueError):
        parse_target(f"localhost:{port}")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 5.0),
        ("0.25", 0.25),
        ("1m30s", 90.0),
        ("2 minutes", 120.0),
        ("250ms", 0.25),
        ("1h", 3600.0),
        ("inf", math.inf),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a duration"),
        ("soon", "not a duration"),
        ("-", "not a duration"),
        ("--5", "a sign goes only in front"),
        ("nan", "not a duration"),
        ("5 parsecs", "not a duration"),
        ("\u221e", "not a duration"),
        ("minutes", "not a duration"),
        ("1m -30s", "a sign goes only in front"),
        ("1m+30s", "a sign goes only in front"),
        ("1:30", "write 1h30m or 1m30s"),
        ("1,5", "not a duration"),  # tempora: 1 s + 5 s
        ("1m 30", "not a duration"),  # tempora: 30 s more
        ("1 2", "not a duration"),
        ("5\t", "a tab"),
        ("5\x00", "has the character"),
        ("1_0", "not a duration"),
        ("\u0663", "not a duration"),
        ("1e400", "too large"),
        ("-1e400", "too large"),
        ("35m1000000000000000000000000000000s", "too large"),
        ("1000000000d", "too large"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_duration(text)
    assert "duration" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("-1", -1.0), ("-1m30s", -90.0), ("+5", 5.0), ("-0", 0.0), ("-inf", -math.inf)],
)
def test_parse_duration_takes_one_leading_sign(text: str, value: float) -> None:
    """portend's command line reads -t -1 as "check once"; the caller decides
    (with seconds()) whether a negative value is allowed."""
    assert parse_duration(text) == value


def _outcome(text: str) -> float | None:
    try:
        value = parse_duration(text)
    except ValueError as error:
        assert "\n" not in str(error)
        return None
    assert isinstance(value, float) and not math.isnan(value)
    return value


@given(st.text(max_size=30))
def test_parse_duration_gives_a_float_or_one_value_error(text: str) -> None:
    _outcome(text)


numbers_typed = st.builds(
    lambda whole, fraction: f"{whole}{fraction}",
    st.one_of(
        st.integers(min_value=0, max_value=10**6),
        # Every size up to 40 digits: tempora fails on some past 10**22.
        st.integers(min_value=0, max_value=40).map(lambda digits: 7 * 10**digits),
    ),
    st.sampled_from(["", ".", ".5", ".000001"]),
)
units = st.sampled_from(
    [
        "",
        "s",
        "ms",
        "us",
        "m",
        "min",
        "h",
        "hr",
        "d",
        "w",
        "sec",
        " seconds",
        " minutes",
        " days",
        " weeks",
        " years",
        " months",
        "ns",
    ]
)


@settings(max_examples=200)
@given(
    parts=st.lists(st.tuples(numbers_typed, units), min_size=1, max_size=4),
    separator=st.sampled_from(["", " ", ", "]),
    sign=st.sampled_from(["", "-", "+"]),
)
def test_parse_duration_of_human_forms_gives_a_float_or_one_value_error(
    parts: list[tuple[str, str]], separator: str, sign: str
) -> None:
    """Huge numbers included: tempora raises decimal's InvalidOperation or
    OverflowError for some, which must come out as the one ValueError."""
    text = sign + separator.join(number + unit for number, unit in parts)
    value = _outcome(text)
    if value is not None and sign:
        assert value == (-1 if sign == "-" else 1) * parse_duration(text[1:])


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "0.0.0.0",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "fe80::1%1",
        "localhost",
        "localhost.",
        "db.example.",
        "my_db-1",
        "web-1.compose_net",
        "b\u00fccher.de",
        "xn--bcher-kva.de",
        "a" * 63,
        ".".join(["a" * 49] * 5),
    ],
)
def test_check_host_keeps_usable_hosts(host: str) -> None:
    check_host(host)


def test_check_host_takes_a_scope_naming_a_real_interface() -> None:
    (_, name), *_ = socket.if_nameindex()
    check_host(f"fe80::1%{name}")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("localhost\x00junk", "contains the character"),
        ("a b", "a space"),
        ("a\tb", "a tab"),
        ("localhost\n", "a line feed"),
        (
            "a\u200bb",
            "contains the character",
        ),  # IDNA would drop it: the name would change
        ("a..b", "empty label"),
        ("..", "empty label"),
        (".x", "empty label"),
        (".", "empty label"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 50] * 5), "longer than 253"),
        ("[::1]", "without brackets \\('::1'\\)"),
        ("fe80::1%nosuchif0", "no network interface named 'nosuchif0'"),
        ("localhost:80", "not an IPv6 address"),
        ("::1::2", "not an IPv6 address"),
        ("a/b", "no '/'"),
        ("db@host", "no '@'"),
        ("a\u05d0.com", "IDNA"),
        ("\u0080abc", "contains the character"),
    ],
)
def test_check_host_refuses_unusable_hosts(host: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_host(host)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("host", [127, b"127.0.0.1", 1.5, ["127.0.0.1"], True])
def test_check_host_refuses_what_is_not_a_str(host: object) -> None:
    with pytest.raises(TypeError, match="a host is a str"):
        check_host(host)


@pytest.mark.parametrize("host", [None, ""])
def test_check_host_keeps_portends_message_for_empty_hosts(host: object) -> None:
    with pytest.raises(
        ValueError, match=r"^Host values of '' or None are not allowed\.$"
    ):
        check_host(host)


@given(st.text(max_size=30))
def test_check_host_takes_a_host_as_it_is_or_refuses_it(host: str) -> None:
    try:
        check_host(host)
    except ValueError as error:
        assert "\n" not in str(error)
        return
    assert host and not any(c.isspace() or not c.isprintable() for c in host)


@pytest.mark.parametrize("port", ["80", "0", "65535", 80])
def test_check_port_takes_digits(port: object) -> None:
    assert check_port(port) == int(port)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "port", [" 80", "80 ", "+80", "-0", "\u0668\u0660", "8_0", True]
)
def test_check_port_refuses_a_port_written_otherwise(port: object) -> None:
    with pytest.raises(ValueError, match="port must be a number"):
        check_port(port)


# -- the one duration rule -------------------------------------------------------


@given(st.floats(min_value=0, max_value=1e9))
def test_timeout_seconds_accepts_plain_and_timedelta(value: float) -> None:
    assert timeout_seconds(value) == value
    delta = datetime.timedelta(seconds=value)
    assert timeout_seconds(delta) == delta.total_seconds()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5.0),
        (0.25, 0.25),
        (datetime.timedelta(minutes=1), 60.0),
        (None, math.inf),
        (math.inf, math.inf),
        (-1, 0.0),
        (-math.inf, 0.0),
        (datetime.timedelta(seconds=-5), 0.0),
        (10**30, 1e30),
    ],
)
def test_a_timeout_follows_the_rule(value: object, expected: float) -> None:
    assert timeout_seconds(value) == expected  # type: ignore[arg-type]
    assert seconds(value, negative="check once") == expected


@pytest.mark.parametrize("value", ["5", b"5", True, False, [1], 1j, object()])
def test_a_duration_that_is_not_seconds_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="timeout must be seconds or a timedelta"):
        timeout_seconds(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({}, math.nan, "timeout must be a number of seconds"),
        ({}, -1, "timeout must not be negative"),
        (
            {"negative": "refuse"},
            datetime.timedelta(seconds=-1),
            "must not be negative",
        ),
        ({"unlimited": False}, math.inf, "timeout must be finite"),
        ({"unlimited": False, "name": "interval"}, -math.inf, "interval must not"),
        ({}, 10**400, "too large"),
    ],
)
def test_seconds_refuses_what_the_rule_refuses(
    kwargs: dict[str, object], value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        seconds(value, **kwargs)  # type: ignore[arg-type]


def test_seconds_without_a_limit_refuses_none() -> None:
    with pytest.raises(TypeError, match="interval must be seconds or a timedelta"):
        seconds(None, name="interval", unlimited=False)


@pytest.mark.parametrize(
    ("interval", "pause"),
    [(0, 0.0), (0.5, 0.5), (datetime.timedelta(milliseconds=20), 0.02)],
)
def test_interval_policy_takes_seconds_and_timedeltas(
    interval: object, pause: float
) -> None:
    policy = interval_policy(interval)  # type: ignore[arg-type]
    assert [policy(n) for n in range(3)] == [pause] * 3


@pytest.mark.parametrize(
    ("interval", "error"),
    [
        (-1, ValueError),
        (datetime.timedelta(seconds=-1), ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        ("0.1", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_interval_policy_refuses_what_the_rule_refuses(
    interval: object, error: type
) -> None:
    with pytest.raises(error, match="interval"):
        interval_policy(interval)  # type: ignore[arg-type]


@given(
    value=st.one_of(
        st.floats(),
        st.integers(),
        st.timedeltas(),
        st.none(),
        st.booleans(),
        st.text(max_size=5),
    ),
    unlimited=st.booleans(),
    negative=st.sampled_from(["check once", "refuse"]),
)
def test_seconds_gives_seconds_by_the_rule_or_refuses(
    value: object, unlimited: bool, negative: str
) -> None:
    try:
        result = seconds(value, unlimited=unlimited, negative=negative)  # type: ignore[arg-type]
    except TypeError:
        assert isinstance(value, (str, bool)) or (value is None and not unlimited)
        return
    except ValueError:
        return
    assert isinstance(result, float) and result >= 0 and not math.isnan(result)
    assert unlimited or not math.isinf(result)
    if value is None:
        assert result == math.inf
    elif isinstance(value, datetime.timedelta):
        assert result == max(value.total_seconds(), 0.0)
        assert value >= datetime.timedelta(0) or negative == "check once"
    else:
        assert result == max(float(value), 0.0)  # type: ignore[arg-type]
        assert value >= 0 or negative == "check once"  # type: ignore[operator]
