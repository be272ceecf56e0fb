"""
HostPort, client_host, target and duration parsing.
"""

from __future__ import annotations

import datetime
import ipaddress
import math

import portend
import pytest
from hypothesis import given
from hypothesis import strategies as st

import txportend
from txportend._hostport import parse_duration, parse_target, timeout_seconds

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
        ("127.0.0.1 :80", "no spaces"),
        ("local host:80", "no spaces"),
    ],
)
def test_parse_target_rejects_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_target(text)
    assert "\n" not in str(info.value)


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
    "text", ["", "soon", "-5", "-5s", "nan", "5 parsecs", "\u221e", "minutes"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.floats(min_value=0, max_value=1e9))
def test_timeout_seconds_accepts_plain_and_timedelta(seconds: float) -> None:
    assert timeout_seconds(seconds) == seconds
    delta = datetime.timedelta(seconds=seconds)
    assert timeout_seconds(delta) == delta.total_seconds()
