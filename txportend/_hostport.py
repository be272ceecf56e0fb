"""
Pure helpers: host/port parsing and checking, bind-address mapping,
durations: where every input of every face (the Deferred API, the blocking
API, the command line) is checked, so that it is taken as documented or
refused with one clear error.

Nothing here touches the network or the reactor (checking an IPv6 scope
asks this machine for its interface names, no more).
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import numbers
import re
import socket
import string
import unicodedata
import urllib.parse
from collections.abc import Sequence
from typing import Literal

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


def _odd_character(text: str) -> str | None:
    """
    Describe the first character of ``text`` that is whitespace or
    invisible (a control or format character), or return ``None``.
    """
    names = {
        " ": "a space",
        "\t": "a tab",
        "\n": "a line feed",
        "\r": "a carriage return",
    }
    for char in text:
        if char in names:
            return names[char]
        if char.isspace() or unicodedata.category(char)[0] in "CZ":
            return f"the character {char!r}"
    return None


# ASCII punctuation no host name has ('-', '_' and '.' are fine).
_NOT_IN_NAMES = frozenset(string.punctuation) - set("-_.")


def check_host(host: object) -> None:
    """
    Refuse, at once, a host that can't be used as a host name or address.

    Accepted: IPv4 and IPv6 address literals (bind addresses such as
    ``0.0.0.0`` and ``::`` included), scoped IPv6 literals whose scope is a
    number or the name of one of this machine's interfaces
    (``fe80::1%lo``), and host names made of labels of 1 to 63 characters
    (letters, digits, ``-`` and ``_``, as container names have, or
    international names that IDNA-encode) separated by dots, 253 characters
    at most, a trailing dot allowed (``db.example.``).

    :raises ValueError: ``Host values of '' or None are not allowed.`` for an
        empty host or ``None`` (portend's message); otherwise a one-line
        message saying what is wrong: whitespace or a control character (a
        NUL would cut the name short), brackets (``[::1]``: write ``::1``),
        a character no host name has, an empty label (``a..b``), a label or
        name too long, a name that does not IDNA-encode, a scope naming no
        interface. The same host is refused the same way by every function
        that takes one.
    :raises TypeError: for a host that is not a :class:`str` (``127``,
        ``b"127.0.0.1"``).
    """
    if type(host) is str and _is_ipv4_literal(host):
        return  # the common case, decided at once
    if host is None or host == "":
        raise ValueError("Host values of '' or None are not allowed.")
    if not isinstance(host, str):
        raise TypeError(
            f"a host is a str (a name or an address), not {type(host).__name__}: "
            f"{host!r}"
        )
    odd = _odd_character(host)
    if odd is not None:
        raise ValueError(f"host {host!r} contains {odd}, which no host name has")
    if host.startswith("[") and host.endswith("]"):
        raise ValueError(
            f"host {host!r}: write the address without brackets ({host[1:-1]!r})"
        )
    if ":" in host:
        _check_ipv6(host)
        return
    if _is_ipv4(host):
        return
    _check_name(host)


def _is_ipv4_literal(host: str) -> bool:
    """A dotted-quad IPv4 literal (``inet_pton``'s rule, as strict as
    :class:`ipaddress.IPv4Address`'s: no leading zeros, four parts)."""
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return False
    return True


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _check_ipv6(host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(
            f"host {host!r} is not an IPv6 address (a port is given on its own)"
        ) from None
    _, percent, scope = host.partition("%")
    if percent and not (scope.isascii() and scope.isdigit()):
        try:
            socket.if_nametoindex(scope)
        except OSError:
            raise ValueError(
                f"host {host!r}: this machine has no network interface named {scope!r}"
            ) from None


def _check_name(host: str) -> None:
    name = host[:-1] if host.endswith(".") else host
    for char in name:
        if char in _NOT_IN_NAMES:
            raise ValueError(f"host {host!r}: a host name has no {char!r}")
    encoded = 0
    for label in name.split("."):
        if not label:
            raise ValueError(
                f"host {host!r} has an empty label (a leading dot or two in a row)"
            )
        try:
            encoded += len(label.encode("idna")) + 1
        except UnicodeError:
            if len(label) > 63:
                raise ValueError(
                    f"host {host!r} has a label longer than 63 characters"
                ) from None
            raise ValueError(
                f"host {host!r} is not a valid international (IDNA) name"
            ) from None
    if encoded - 1 > 253:
        raise ValueError(f"host {host!r} is longer than 253 characters")


def check_port(port: object) -> int:
    """
    Return ``port`` as an int, accepting digit strings (``"8080"``) as
    portend's ``getaddrinfo`` does.

    :raises ValueError: when it is not a number in 0..65535 (a string only
        of the ASCII digits, without a sign or spaces).
    """
    number: int | None = None
    if isinstance(port, int) and not isinstance(port, bool):
        number = port
    elif isinstance(port, str) and port.isascii() and port.isdigit():
        number = int(port)
    if number is None or not 0 <= number <= 65535:
        raise ValueError(f"port must be a number in 0..65535, not {port!r}")
    return number


_TARGET_FORM = "expected HOST:PORT or [IPv6]:PORT"
_NOT_IN_TARGETS = {"@": "user info", "/": "path", "?": "query", "#": "fragment"}


def parse_target(text: str) -> HostPort:
    """
    Parse and validate a ``host:port`` or ``[v6addr]:port`` target, as the
    command line (and a configuration file) takes it.

    The text is taken as it is, or refused: no whitespace or control
    character anywhere (not even around it), no user info, path, query or
    fragment (``user@host:80/path``), a port of ASCII digits only, an IPv6
    address in brackets (``[::1]:80``, ``[fe80::1%lo]:80``) and nothing else
    in brackets; the host is checked as :func:`check_host` checks it.

    :param text: the target as a user typed it.
    :return: a :class:`HostPort` whose ``host`` and ``port`` are both set,
        with the port in 1..65535.
    :raises ValueError: with a one-line message that names the target and
        says what is wrong.

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
    if not isinstance(text, str):
        raise TypeError(f"a target is a str, not {type(text).__name__}: {text!r}")
    odd = _odd_character(text)
    if odd is not None:
        raise ValueError(f"{text!r}: a target has no whitespace, but this has {odd}")
    for char, what in _NOT_IN_TARGETS.items():
        if char in text:
            raise ValueError(
                f"{text!r}: a target has no {what} ({char!r}); {_TARGET_FORM}"
            )
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: missing port ({_TARGET_FORM})")
        if host and ":" not in host:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses only")
        port = rest[1:]
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r}: missing port ({_TARGET_FORM})")
        if ":" in host:
            raise ValueError(
                f"{text!r}: write an IPv6 address in brackets, as in [::1]:80"
            )
    if not port:
        raise ValueError(f"{text!r}: missing port ({_TARGET_FORM})")
    if not host:
        raise ValueError(f"{text!r}: missing host ({_TARGET_FORM})")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{text!r}: port must be a number in 1..65535")
    try:
        check_host(host)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    return HostPort(text)


def seconds(
    value: object,
    *,
    name: str = "timeout",
    unlimited: bool = True,
    negative: Literal["check once", "refuse"] = "refuse",
) -> float:
    """
    Normalise a duration argument to seconds: the one rule every
    ``timeout`` and ``interval`` of txportend follows.

    - Seconds as an :class:`int` or :class:`float` (any real number, but not
      a :class:`bool`), or a :class:`datetime.timedelta`.
    - ``None`` or ``math.inf``: no limit, where no limit makes sense
      (``unlimited=True``: the timeouts); refused elsewhere (intervals).
    - A negative value (``-inf`` included): with
      ``negative="check once"``, ``0.0``, meaning a deadline already past
      that still gets one check, as portend reads a negative timeout of
      ``occupied``, ``free`` and the command line's ``-t``; with
      ``negative="refuse"``, refused (intervals, a probe's own timeout).
    - NaN is refused; so is text: a string is parsed by
      :func:`parse_duration`, at the command line and in configuration
      files, never taken by the API.

    :param value: the argument as the caller gave it.
    :param name: what the argument is called, for the error message.
    :param unlimited: whether ``None`` and ``math.inf`` mean "no limit".
    :param negative: what a negative value means: ``"check once"`` (it
        reads as ``0.0``) or ``"refuse"``.
    :return: seconds, a float ``>= 0`` (``math.inf`` only when unlimited).
    :raises TypeError: for a value that is not seconds or a timedelta
        (a string, a bool, ``None`` where there must be a limit).
    :raises ValueError: for NaN, a negative value where refused, infinity
        where there must be a limit, or an int too large for a float.

    >>> seconds(datetime.timedelta(minutes=1))
    60.0
    >>> seconds(None)
    inf
    >>> seconds(-1, negative="check once")
    0.0
    >>> seconds("5")
    Traceback (most recent call last):
    ...
    TypeError: timeout must be seconds or a timedelta, not str: '5' (text is ...)
    """
    if value is None and unlimited:
        return math.inf
    if isinstance(value, datetime.timedelta):
        result = value.total_seconds()
    elif isinstance(value, (float, int, numbers.Real)) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            raise ValueError(f"{name} is too large: {value!r}") from None
    else:
        hint = (
            " (text is for the command line; parse it with parse_duration)"
            if isinstance(value, (str, bytes))
            else ""
        )
        raise TypeError(
            f"{name} must be seconds or a timedelta, not "
            f"{type(value).__name__}: {value!r}{hint}"
        )
    if math.isnan(result):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    if result < 0:
        if negative == "refuse":
            raise ValueError(f"{name} must not be negative: {value!r}")
        return 0.0
    if math.isinf(result) and not unlimited:
        raise ValueError(f"{name} must be finite: {value!r}")
    return result + 0.0  # -0.0 reads as 0.0


def timeout_seconds(timeout: TimeoutType) -> float:
    """
    Normalise the ``timeout`` of a wait or of ``assert_free`` to seconds:
    :func:`seconds` with no limit allowed and a negative timeout meaning
    "check once", as in portend.

    :param timeout: seconds, a :class:`datetime.timedelta`, ``None`` or
        ``math.inf``.
    :raises TypeError: for a string or another type (see :func:`seconds`).
    :raises ValueError: for NaN.

    >>> timeout_seconds(None)
    inf
    >>> timeout_seconds(datetime.timedelta(minutes=1))
    60.0
    >>> timeout_seconds(-1)
    0.0
    """
    return seconds(timeout, name="timeout", unlimited=True, negative="check once")


# Plain seconds as written at a prompt: 30, 2.5, .5, 1e3 (ASCII only).
_PLAIN = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# The human forms: numbers each with its unit (1m30s, '2 minutes', '1h, 5m').
_HUMAN = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+) ?[A-Za-zµ]+[ ,]*)+")
_DURATION_HINT = "try 30, 2.5, 1m30s or '2 minutes'"


def parse_duration(text: str) -> float:
    """
    Parse a duration typed by a person (a command-line argument, a value in
    a configuration file): plain seconds or a human form.

    The text is taken as written or refused, never read otherwise:

    - plain seconds: ``30``, ``2.5``, ``.5``, ``1e3``; ``inf`` (or
      ``infinity``) for no limit;
    - human forms, where every number has its unit: ``1m30s``, ``250ms``,
      ``'2 minutes'``, ``'1h, 5m'`` (units as :func:`tempora.parse_timedelta`
      reads them: ``us``/``µs``, ``ms``, ``s``/``sec``, ``m``/``min``,
      ``h``/``hr``, ``d``, ``w``, and their long names);
    - one sign, ``-`` or ``+``, only in front of the whole value: ``-1m30s``
      is -90 seconds (whether a negative value is allowed is for the caller
      to say, with :func:`seconds`); a sign inside (``1m -30s``) is refused.

    Refused with a :exc:`ValueError`: anything else, among it NaN, a clock
    form such as ``1:30`` (an hour and a half, or a minute and a half?), a
    number without its unit in a human form (``1m 30``, or ``1,5``, which
    would add up to 6 s), whitespace other than spaces, and a value too
    large: plain seconds that overflow a float (``1e400``), or a human form
    beyond :class:`datetime.timedelta`'s range; ``inf`` must be written to
    mean no limit.

    :param text: ``"5"``, ``"0.25"``, ``"1m30s"``, ``"2 minutes"``, ``"inf"``,
        ``"-1"``.
    :return: seconds as a float (``math.inf`` for ``"inf"``).
    :raises ValueError: with a one-line message when it is not a duration.

    >>> parse_duration('1m30s')
    90.0
    >>> parse_duration('250ms')
    0.25
    >>> parse_duration('-1')
    -1.0
    >>> parse_duration('soon')
    Traceback (most recent call last):
    ...
    ValueError: 'soon' is not a duration (try 30, 2.5, 1m30s or '2 minutes')
    """
    if not isinstance(text, str):
        raise TypeError(f"a duration is text here, not {type(text).__name__}")
    body = text.strip(" ")
    sign = -1.0 if body.startswith("-") else 1.0
    if body[:1] in ("-", "+"):
        body = body[1:]
    odd = _odd_character(body.replace(" ", ""))
    if odd is not None:
        raise ValueError(f"{text!r} is not a duration (it has {odd})")
    if any(char in body for char in "+-"):
        raise ValueError(
            f"{text!r} is not a duration (a sign goes only in front of the "
            "whole value, as in --timeout=-1m30s)"
        )
    if ":" in body:
        raise ValueError(f"{text!r} is not a duration (write 1h30m or 1m30s)")
    if body.lower() in ("inf", "infinity"):
        return sign * math.inf
    if _PLAIN.fullmatch(body):
        value = float(body)
        if math.isinf(value):
            raise ValueError(
                f"{text!r} is too large a duration (write inf for no limit)"
            )
    elif _HUMAN.fullmatch(body):
        # Only now: tempora takes tens of milliseconds to import, which a
        # plain number (the command line's usual case) never pays.
        from tempora import parse_timedelta

        try:
            value = parse_timedelta(body).total_seconds()
        except ArithmeticError:  # OverflowError, decimal's InvalidOperation
            raise ValueError(
                f"{text!r} is too large a duration (write inf for no limit)"
            ) from None
        except (ValueError, LookupError, TypeError):
            raise ValueError(f"{text!r} is not a duration ({_DURATION_HINT})") from None
    else:
        raise ValueError(f"{text!r} is not a duration ({_DURATION_HINT})")
    return sign * value + 0.0  # -0 reads as 0.0
