"""
Pure helpers: host/port parsing, bind-address mapping, durations.

Nothing here touches the network or the reactor.
"""

from __future__ import annotations

import datetime
import math
import urllib.parse
from collections.abc import Sequence

#: What a ``timeout`` may be: seconds, a :class:`datetime.timedelta`, or
#: ``None``/``math.inf`` to wait forever.
TimeoutType = float | datetime.timedelta | None


def client_host(server_host: str) -> str:
    """
    Return the host on which a client can connect to the given listener.

    Bind-all addresses map to the loopback address of the same family;
    anything else is returned unchanged.

    :param server_host: a host name or address, possibly a bind address.
    :return: the host to connect to.

    >>> client_host('192.168.0.1')
    '192.168.0.1'
    >>> client_host('0.0.0.0')
    '127.0.0.1'
    >>> client_host('::')
    '::1'
    """
    if server_host == "0.0.0.0":
        # 0.0.0.0 is INADDR_ANY, which should answer on localhost.
        return "127.0.0.1"
    if server_host in ("::", "::0", "::0.0.0.0"):
        # :: is IN6ADDR_ANY, which should answer on localhost.
        # ::0 and ::0.0.0.0 are non-canonical but common
        # ways to write IN6ADDR_ANY.
        return "::1"
    return server_host


def is_loopback(address: str) -> bool:
    """
    Whether ``address`` is an IPv4 or IPv6 loopback address literal.

    >>> [is_loopback(a) for a in ('127.0.0.1', '127.1.2.3', '::1', '10.0.0.1', 'db')]
    [True, True, True, False, False]
    """
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class HostPort(str):
    """
    A simple representation of a host/port pair as a string.

    >>> hp = HostPort('localhost:32768')

    >>> hp.host
    'localhost'

    >>> hp.port
    32768

    >>> len(hp)
    15

    >>> hp = HostPort('[::1]:32768')

    >>> hp.host
    '::1'

    >>> hp.port
    32768
    """

    __slots__ = ()

    @property
    def host(self) -> str | None:
        """The host part, without IPv6 brackets (``None`` if empty)."""
        return urllib.parse.urlparse(f"//{self}").hostname

    @property
    def port(self) -> int | None:
        """
        The port as an int, or ``None`` when there is none.

        :raises ValueError: when the port is not a number in 0..65535.
        """
        return urllib.parse.urlparse(f"//{self}").port

    @classmethod
    def from_addr(cls, addr: Sequence[object]) -> HostPort:
        """
        Build a :class:`HostPort` from a socket address tuple, mapping bind
        addresses to the matching loopback address.

        :param addr: ``(host, port)`` or ``(host, port, flowinfo, scope_id)``.

        >>> HostPort.from_addr(('::', 8080, 0, 0))
        '[::1]:8080'
        >>> HostPort.from_addr(('0.0.0.0', 80))
        '127.0.0.1:80'
        """
        listen_host, port = addr[:2]
        plain_host = client_host(str(listen_host))
        host = f"[{plain_host}]" if ":" in plain_host else plain_host
        return cls(":".join([host, str(port)]))


def check_host(host: object) -> None:
    """
    Reject the empty hosts portend rejects, with portend's message.

    :raises ValueError: ``Host values of '' or None are not allowed.``
    """
    if not host:
        raise ValueError("Host values of '' or None are not allowed.")


def check_port(port: object) -> int:
    """
    Return ``port`` as an int, accepting digit strings as portend's
    ``getaddrinfo`` does.

    :raises ValueError: when it is not a number in 0..65535.
    """
    number: int | None = None
    if isinstance(port, int) and not isinstance(port, bool):
        number = port
    elif isinstance(port, str) and port.strip().isdigit():
        number = int(port)
    if number is None or not 0 <= number <= 65535:
        raise ValueError(f"port must be a number in 0..65535, not {port!r}")
    return number


def parse_target(text: str) -> HostPort:
    """
    Parse and validate a ``host:port`` or ``[v6addr]:port`` target.

    :param text: the target as a user typed it.
    :return: a :class:`HostPort` whose ``host`` and ``port`` are both set,
        with the port in 1..65535.
    :raises ValueError: with a one-line message saying what is wrong.

    >>> parse_target('[::1]:8080').port
    8080
    >>> parse_target('localhost')
    Traceback (most recent call last):
    ...
    ValueError: 'localhost': missing port (expected HOST:PORT or [IPv6]:PORT)
    >>> parse_target('localhost:http')
    Traceback (most recent call last):
    ...
    ValueError: 'localhost:http': port must be a number in 1..65535
    """
    target = HostPort(text.strip())
    try:
        parsed = urllib.parse.urlparse(f"//{target}")
        port = parsed.port
    except ValueError:
        raise ValueError(f"{text!r}: port must be a number in 1..65535") from None
    if port is None:
        raise ValueError(f"{text!r}: missing port (expected HOST:PORT or [IPv6]:PORT)")
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be a number in 1..65535")
    if not parsed.hostname:
        raise ValueError(f"{text!r}: missing host (expected HOST:PORT or [IPv6]:PORT)")
    if any(c.isspace() for c in parsed.hostname):
        raise ValueError(f"{text!r}: a host name has no spaces")
    return target


def timeout_seconds(timeout: TimeoutType) -> float:
    """
    Normalise a timeout to seconds, ``math.inf`` meaning forever.

    :param timeout: seconds, a :class:`datetime.timedelta`, ``None`` or
        ``math.inf``.
    :raises ValueError: for a negative or NaN timeout.

    >>> timeout_seconds(None)
    inf
    >>> timeout_seconds(datetime.timedelta(minutes=1))
    60.0
    """
    if timeout is None:
        return math.inf
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    else:
        seconds = float(timeout)
    if math.isnan(seconds):
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
    # portend treats a timeout already past (negative) as "check once".
    return max(seconds, 0.0)


def parse_duration(text: str) -> float:
    """
    Parse a duration typed by a person: plain seconds or a human form.

    :param text: ``"5"``, ``"0.25"``, ``"1m30s"``, ``"2 minutes"``, ``"inf"``.
    :return: seconds as a float (``math.inf`` for ``"inf"``).
    :raises ValueError: with a one-line message when it is not a duration.

    >>> parse_duration('1m30s')
    90.0
    >>> parse_duration('250ms')
    0.25
    >>> parse_duration('soon')
    Traceback (most recent call last):
    ...
    ValueError: 'soon' is not a duration (try 30, 2.5, 1m30s or '2 minutes')
    """
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is not a duration (it must not be negative)")
    try:
        if not stripped:
            raise ValueError("empty")
        seconds = float(stripped)
    except ValueError:
        try:
            if not any(c.isdigit() for c in stripped):
                # tempora reads text it doesn't know as 0 seconds.
                raise ValueError("no number")
            # Only now: tempora takes tens of milliseconds to import, which a
            # plain number (the command line's usual case) never pays.
            from tempora import parse_timedelta

            seconds = parse_timedelta(stripped).total_seconds()
        except (ValueError, KeyError, TypeError, OverflowError):
            raise ValueError(
                f"{text!r} is not a duration (try 30, 2.5, 1m30s or '2 minutes')"
            ) from None
    if math.isnan(seconds):
        raise ValueError(
            f"{text!r} is not a duration (try 30, 2.5, 1m30s or '2 minutes')"
        )
    if seconds < 0:
        raise ValueError(f"{text!r} is not a duration (it must not be negative)")
    return seconds
