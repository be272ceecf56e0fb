"""
What the ``twistd portend`` daemon watches, where it listens and whether it
runs a portserver: its command line and its TOML configuration file, merged
into one :class:`Plan`.

The daemon reads the file at start-up and again on every ``SIGHUP``, through
the same :func:`plan`, so both give the same messages. Targets and durations
are parsed by the command line's own functions
(:func:`~txportend._hostport.parse_target`,
:func:`~txportend._hostport.parse_duration`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._hostport import HostPort, parse_duration, parse_target, seconds
from ._portclient import unix_address
from ._portpool import DEFAULT_POOL, parse_port_ranges
from ._result import State

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Where the daemon's web site listens when neither ``--listen`` nor the
#: file's ``listen`` says: loopback only.
DEFAULT_LISTEN = ("tcp:9180:interface=127.0.0.1",)
#: The pause after each probe, in seconds, when nothing else says.
DEFAULT_INTERVAL = 10.0
#: How long each probe may take, in seconds, when nothing else says.
DEFAULT_TIMEOUT = 1.0
#: The states a target may be expected in, by their names in the file.
EXPECTS = {"occupied": State.OCCUPIED, "free": State.FREE}

_TOP_KEYS = ("listen", "interval", "timeout", "target", "portserver")
_TARGET_KEYS = ("address", "interval", "timeout", "expect")
_PORTSERVER_KEYS = ("address", "pool", "allow_other_users")


class ConfigError(ValueError):
    """
    The command line or the configuration file is wrong: the message is one
    line naming the file (if any), the key and the problem.
    """


@dataclass(frozen=True)
class TargetSpec:
    """
    One target as configured.

    :ivar address: ``"host:port"`` as :func:`parse_target` accepts it.
    :ivar interval: the pause after each probe, in seconds.
    :ivar timeout: how long each probe may take, in seconds.
    :ivar expect: :attr:`State.OCCUPIED` or :attr:`State.FREE`.
    """

    address: str
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    expect: State = State.OCCUPIED

    @property
    def key(self) -> str:
        """The target as its :class:`~txportend.Monitor` names it
        (``monitor.target``): two specs with one key are one target."""
        hostport = HostPort(self.address)
        return str(HostPort.from_addr((hostport.host, hostport.port)))


@dataclass(frozen=True)
class PortServerSpec:
    """
    The portserver as configured.

    :ivar address: its ``AF_UNIX`` socket: ``"@name"`` (Linux's abstract
        namespace) or a filesystem path.
    :ivar pool: the ports it hands out, in increasing order.
    :ivar allow_other_users: whether it answers every local user, not only
        its own.
    """

    address: str
    pool: tuple[int, ...] = field(repr=False)
    allow_other_users: bool = False


@dataclass(frozen=True)
class CommandLine:
    """
    What the daemon's command line says (the file is read by :func:`plan`).

    :ivar watch: targets given with ``--watch``.
    :ivar interval: ``--interval`` in seconds, or ``None``.
    :ivar timeout: ``--timeout`` in seconds, or ``None``.
    :ivar listen: endpoints given with ``--listen``.
    :ivar config: the ``--config`` file's path, or ``None``.
    :ivar portserver: ``--portserver``'s address, or ``None``.
    :ivar portserver_pool: ``--portserver-pool``'s ports, or ``None``.
    :ivar portserver_allow_other_users: whether
        ``--portserver-allow-other-users`` was given.
    """

    watch: tuple[str, ...] = ()
    interval: float | None = None
    timeout: float | None = None
    listen: tuple[str, ...] = ()
    config: str | None = None
    portserver: str | None = None
    portserver_pool: tuple[int, ...] | None = None
    portserver_allow_other_users: bool = False


@dataclass(frozen=True)
class Plan:
    """
    What the daemon does: where it listens, what it watches (in
    configuration order: the file's targets, then ``--watch``'s), and its
    portserver, if any.
    """

    listen: tuple[str, ...]
    targets: tuple[TargetSpec, ...]
    portserver: PortServerSpec | None = None


def plan(command_line: CommandLine) -> Plan:
    """
    Read the configuration file (if any) and merge it with the command line.

    Each target's interval is its own (in the file), else ``--interval``,
    else the file's top-level ``interval``, else :data:`DEFAULT_INTERVAL`;
    the same for timeouts. ``--listen`` replaces the file's ``listen``;
    without either the site listens on :data:`DEFAULT_LISTEN`.

    A portserver runs when ``--portserver`` is given or the file has a
    ``[portserver]`` table; each of ``--portserver``,
    ``--portserver-pool`` and ``--portserver-allow-other-users`` replaces
    the table's ``address``, ``pool`` and ``allow_other_users`` (the
    table's values are checked all the same). The pool is
    :data:`~txportend._portpool.DEFAULT_POOL` when neither gives one.

    :raises ConfigError: the file cannot be read or is not valid, a target
        is given twice, or a portserver option is given without a
        portserver's address.
    """
    top: Mapping[str, Any] = {}
    entries: list[tuple[str, Mapping[str, Any]]] = []
    where = ""
    if command_line.config is not None:
        where = f"{command_line.config}: "
        top = _read(command_line.config)
        entries = [
            (f"{where}[[target]] {n}: ", entry)
            for n, entry in enumerate(top.get("target", []), 1)
        ]
    entries += [("--watch: ", {"address": address}) for address in command_line.watch]

    default_interval = _pick(
        command_line.interval,
        _duration(top, "interval", where, interval=True),
        DEFAULT_INTERVAL,
    )
    default_timeout = _pick(
        command_line.timeout,
        _duration(top, "timeout", where, interval=False),
        DEFAULT_TIMEOUT,
    )
    targets: dict[str, TargetSpec] = {}
    first: dict[str, str] = {}  # key -> where it was first given
    for place, entry in entries:
        spec = _target(place, entry, default_interval, default_timeout)
        if spec.key in targets:
            raise ConfigError(
                f"{place}{spec.address!r}: this target is given twice "
                f"(first in {first[spec.key].removesuffix(': ')})"
            )
        targets[spec.key] = spec
        first[spec.key] = place

    listen = command_line.listen
    if not listen:
        listen = DEFAULT_LISTEN if "listen" not in top else _listen(top, where)
    portserver = _portserver(command_line, top.get("portserver"), where)
    return Plan(listen, tuple(targets.values()), portserver)


def check_endpoint(description: str) -> str:
    """
    Check a server endpoint string (``tcp:9180:interface=127.0.0.1``) as
    :func:`twisted.internet.endpoints.serverFromString` reads it, without
    listening.

    :return: ``description``.
    :raises ValueError: one line saying what is wrong.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)  # type: ignore[no-untyped-call]
    except Exception as error:
        raise ValueError(f"{description!r} is not a server endpoint: {error}") from None
    return description


def check_portserver_address(address: str) -> str:
    """
    Check a portserver address (``"@name"`` or a path) as the portserver
    and its clients read it (:func:`~txportend._portclient.unix_address`).

    :return: ``address``.
    :raises ValueError: one line saying what is wrong.
    """
    unix_address(address)
    return address


def check_interval(value: object) -> float:
    """An interval: seconds, finite and not negative (the one duration rule,
    :func:`~txportend._hostport.seconds`); return it, or raise ValueError
    (TypeError for a value that is not seconds)."""
    return seconds(value, name="the interval", unlimited=False, negative="refuse")


def check_timeout(value: object) -> float:
    """A probe's timeout: seconds, finite and more than 0; return it, or
    raise ValueError (TypeError for a value that is not seconds)."""
    limit = seconds(value, name="the timeout", unlimited=False, negative="refuse")
    if limit == 0:
        raise ValueError("the timeout must be more than 0 seconds")
    return limit


def _read(path: str) -> Mapping[str, Any]:
    try:
        with open(path, "rb") as file:
            top = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    _known_keys(top, _TOP_KEYS, f"{path}: ")
    targets = top.get("target", [])
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise ConfigError(
            f"{path}: target: must be [[target]] tables, not {_shown(targets)}"
        )
    return top


def _target(
    place: str, entry: Mapping[str, Any], interval: float, timeout: float
) -> TargetSpec:
    _known_keys(entry, _TARGET_KEYS, place)
    if "address" not in entry:
        raise ConfigError(f"{place}address: missing (the HOST:PORT to watch)")
    address = entry["address"]
    if not isinstance(address, str):
        raise ConfigError(
            f"{place}address: must be a string (HOST:PORT), not {_shown(address)}"
        )
    try:
        address = str(parse_target(address))
    except ValueError as error:
        raise ConfigError(f"{place}address: {error}") from None
    expect = entry.get("expect", "occupied")
    if not isinstance(expect, str) or expect not in EXPECTS:
        raise ConfigError(
            f'{place}expect: must be "occupied" or "free", not {_shown(expect)}'
        )
    return TargetSpec(
        address=address,
        interval=_pick(_duration(entry, "interval", place, interval=True), interval),
        timeout=_pick(_duration(entry, "timeout", place, interval=False), timeout),
        expect=EXPECTS[expect],
    )


def _duration(
    table: Mapping[str, Any], key: str, place: str, *, interval: bool
) -> float | None:
    """A duration in the file: seconds (int or float) or a string as the
    command line takes it; ``None`` when absent."""
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(
            f"{place}{key}: must be seconds (a number) or a duration string, "
            f"not {_shown(value)}"
        )
    try:
        if isinstance(value, str):
            value = parse_duration(value)
        return check_interval(value) if interval else check_timeout(value)
    except ValueError as error:
        raise ConfigError(f"{place}{key}: {error}") from None


def _listen(top: Mapping[str, Any], where: str) -> tuple[str, ...]:
    listen = top["listen"]
    if not isinstance(listen, list) or not all(isinstance(e, str) for e in listen):
        raise ConfigError(
            f"{where}listen: must be a list of endpoint strings, not {_shown(listen)}"
        )
    try:
        return tuple(check_endpoint(description) for description in listen)
    except ValueError as error:
        raise ConfigError(f"{where}listen: {error}") from None


def _portserver(
    command_line: CommandLine, table: object, where: str
) -> PortServerSpec | None:
    """The portserver the command line and the file's ``[portserver]``
    table (``None`` when absent) ask for, or ``None``."""
    if table is None:
        if command_line.portserver is None:
            for option, given in (
                ("--portserver-pool", command_line.portserver_pool is not None),
                (
                    "--portserver-allow-other-users",
                    command_line.portserver_allow_other_users,
                ),
            ):
                if given:
                    raise ConfigError(
                        f"{option}: needs --portserver ADDRESS (or a "
                        "[portserver] table in the configuration file)"
                    )
            return None
        table = {}
    if not isinstance(table, dict):
        raise ConfigError(
            f"{where}portserver: must be a [portserver] table, not {_shown(table)}"
        )
    place = f"{where}[portserver] "
    _known_keys(table, _PORTSERVER_KEYS, place)
    in_file = _portserver_address(table, place)  # checked even if replaced
    address = command_line.portserver or in_file
    if address is None:
        raise ConfigError(
            f"{place}address: missing (the portserver's socket: @NAME or a path)"
        )
    pool = _pool(table, place)
    allow = table.get("allow_other_users", False)
    if not isinstance(allow, bool):
        raise ConfigError(
            f"{place}allow_other_users: must be true or false, not {_shown(allow)}"
        )
    return PortServerSpec(
        address=address,
        pool=_pick_pool(command_line.portserver_pool, pool),
        allow_other_users=command_line.portserver_allow_other_users or allow,
    )


def _portserver_address(table: Mapping[str, Any], place: str) -> str | None:
    if "address" not in table:
        return None
    address = table["address"]
    if not isinstance(address, str):
        raise ConfigError(
            f"{place}address: must be a string (@NAME or a path), not {_shown(address)}"
        )
    try:
        return check_portserver_address(address)
    except ValueError as error:
        raise ConfigError(f"{place}address: {error}") from None


def _pool(table: Mapping[str, Any], place: str) -> tuple[int, ...] | None:
    """The file's pool: ranges in a string, or a list of such strings."""
    if "pool" not in table:
        return None
    pool = table["pool"]
    if isinstance(pool, list) and pool and all(isinstance(p, str) for p in pool):
        text = ",".join(pool)
    elif isinstance(pool, str):
        text = pool
    else:
        raise ConfigError(
            f'{place}pool: must be port ranges ("15000-24999,30000-30099") or '
            f"a non-empty list of them, not {_shown(pool)}"
        )
    try:
        return tuple(parse_port_ranges(text))
    except ValueError as error:
        raise ConfigError(f"{place}pool: {error}") from None


def _pick_pool(*pools: tuple[int, ...] | None) -> tuple[int, ...]:
    for pool in pools:
        if pool is not None:
            return pool
    return tuple(parse_port_ranges(DEFAULT_POOL))


def _known_keys(table: Mapping[str, Any], known: Sequence[str], place: str) -> None:
    for key in table:
        if key not in known:
            expected = ", ".join(known)
            raise ConfigError(f"{place}{key}: unknown key (expected one of {expected})")


def _pick(*values: float | None) -> float:
    return next(value for value in values if value is not None)


def _shown(value: object) -> str:
    """A value from the file as the message shows it: its TOML type, and the
    value itself when short."""
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    kind = kinds.get(type(value))
    if kind is None:
        kind = "a table" if isinstance(value, dict) else type(value).__name__
        return kind if kind != "list" else "an array"
    text = repr(value)
    return f"{kind} {text}" if len(text) <= 40 else kind
