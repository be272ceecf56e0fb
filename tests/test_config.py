"""
The daemon's TOML configuration file and its merge with the command line
(txportend._config), and its reload on a running Watchlist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.logger import capturedLogs, formatEvent

from txportend import State
from txportend._config import (
    DEFAULT_INTERVAL,
    DEFAULT_LISTEN,
    DEFAULT_TIMEOUT,
    CommandLine,
    ConfigError,
    Plan,
    PortServerSpec,
    TargetSpec,
    plan,
)
from txportend._daemon import Watchlist

from .fakes import attempts, memory_reactor, refuse

EXAMPLE = """\
listen = ["tcp:9180:interface=127.0.0.1"]
interval = "10s"          # defaults for every target
timeout = "1s"
[[target]]
address = "db.internal:5432"
interval = 5
[[target]]
address = "127.0.0.1:2375"
expect = "free"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "portend.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_issues_example(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    assert plan(CommandLine(config=path)) == Plan(
        listen=("tcp:9180:interface=127.0.0.1",),
        targets=(
            TargetSpec("db.internal:5432", 5.0, 1.0, State.OCCUPIED),
            TargetSpec("127.0.0.1:2375", 10.0, 1.0, State.FREE),
        ),
    )


def test_defaults_without_a_file() -> None:
    assert plan(CommandLine(watch=("[::1]:80",))) == Plan(
        DEFAULT_LISTEN,
        (TargetSpec("[::1]:80", DEFAULT_INTERVAL, DEFAULT_TIMEOUT, State.OCCUPIED),),
    )
    assert DEFAULT_LISTEN == ("tcp:9180:interface=127.0.0.1",)


def test_watch_adds_to_the_files_targets_after_them(tmp_path: Path) -> None:
    path = write(tmp_path, '[[target]]\naddress = "a:1"\n')
    targets = plan(CommandLine(watch=("b:2",), config=path)).targets
    assert [t.address for t in targets] == ["a:1", "b:2"]


def test_which_interval_and_timeout_a_target_gets(tmp_path: Path) -> None:
    """Its own, else the command line's, else the file's, else the default."""
    path = write(
        tmp_path,
        'interval = 7\ntimeout = "2s"\n'
        '[[target]]\naddress = "a:1"\ninterval = "1m30s"\ntimeout = 0.5\n'
        '[[target]]\naddress = "b:2"\n',
    )
    by_file = plan(CommandLine(config=path)).targets
    assert [(t.interval, t.timeout) for t in by_file] == [(90.0, 0.5), (7.0, 2.0)]
    by_command_line = plan(
        CommandLine(config=path, watch=("c:3",), interval=3.0, timeout=4.0)
    ).targets
    assert [(t.interval, t.timeout) for t in by_command_line] == [
        (90.0, 0.5),
        (3.0, 4.0),
        (3.0, 4.0),
    ]


def test_listen_from_the_command_line_replaces_the_files(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ["tcp:1"]\n')
    assert plan(CommandLine(config=path)).listen == ("tcp:1",)
    assert plan(CommandLine(config=path, listen=("tcp:2",))).listen == ("tcp:2",)
    path = write(tmp_path, "listen = []\n")
    assert plan(CommandLine(config=path)).listen == ()  # no web site


def test_a_file_with_no_targets_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    assert plan(CommandLine(config=path)) == Plan(DEFAULT_LISTEN, ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "colour: unknown key (expected one of listen, interval"),
        (
            '[portserver]\naddress = "@p"\nadress = "@q"\n',
            "[portserver] adress: unknown key (expected one of address, pool, "
            "allow_other_users)",
        ),
        ('[portserver]\npool = "1-5"\n', "[portserver] address: missing (the"),
        (
            "[portserver]\naddress = 5\n",
            "[portserver] address: must be a string (@NAME or a path), not an "
            "integer 5",
        ),
        (
            '[portserver]\naddress = "@"\n',
            "[portserver] address: Portserver address '@' is empty.",
        ),
        (
            '[portserver]\naddress = "@p"\npool = "20-10"\n',
            "[portserver] pool: Port range '20-10' starts above its end.",
        ),
        (
            '[portserver]\naddress = "@p"\npool = ["1-5", "5-9"]\n',
            "[portserver] pool: Port ranges '1-5' and '5-9' overlap.",
        ),
        (
            '[portserver]\naddress = "@p"\npool = []\n',
            "[portserver] pool: must be port ranges",
        ),
        (
            '[portserver]\naddress = "@p"\npool = 15000\n',
            '[portserver] pool: must be port ranges ("15000-24999,30000-30099") '
            "or a non-empty list of them, not an integer 15000",
        ),
        (
            '[portserver]\naddress = "@p"\nallow_other_users = "yes"\n',
            "[portserver] allow_other_users: must be true or false, not a string 'yes'",
        ),
        ('portserver = "@p"\n', "portserver: must be a [portserver] table, not a"),
        (
            '[[portserver]]\naddress = "@p"\n',
            "portserver: must be a [portserver] table, not an array",
        ),
        (
            '[[target]]\naddress = "a:1"\nintervall = 5\n',
            "[[target]] 1: intervall: unknown key (expected one of address",
        ),
        ("[[target]]\ninterval = 5\n", "[[target]] 1: address: missing"),
        (
            '[[target]]\naddress = "a:1"\n[[target]]\naddress = 5\n',
            "[[target]] 2: address: must be a string (HOST:PORT), not an integer 5",
        ),
        (
            '[[target]]\naddress = "db"\n',
            "[[target]] 1: address: 'db': missing port",
        ),
        (
            '[[target]]\naddress = "a:1"\nexpect = "up"\n',
            '[[target]] 1: expect: must be "occupied" or "free", not a string \'up\'',
        ),
        (
            '[[target]]\naddress = "a:1"\nexpect = ["free"]\n',
            '[[target]] 1: expect: must be "occupied" or "free", not an array',
        ),
        ('interval = "soon"\n', "interval: 'soon' is not a duration"),
        ("interval = -5\n", "interval: the interval must not be negative: -5"),
        ('interval = "-5"\n', "interval: the interval must not be negative: -5.0"),
        ("interval = inf\n", "interval: the interval must be finite: inf"),
        ("interval = nan\n", "interval: the interval must be a number of seconds"),
        (
            "interval = true\n",
            "interval: must be seconds (a number) or a duration string, "
            "not a boolean True",
        ),
        (
            "interval = [1]\n",
            "interval: must be seconds (a number) or a duration string, not an array",
        ),
        ("timeout = 0\n", "timeout: the timeout must be more than 0 seconds"),
        ('timeout = "inf"\n', "timeout: the timeout must be finite: inf"),
        ('listen = "tcp:9180"\n', "listen: must be a list of endpoint strings"),
        ('listen = ["tcp:x"]\n', "listen: 'tcp:x' is not a server endpoint"),
        ('listen = ["nope:1"]\n', "listen: 'nope:1' is not a server endpoint"),
        ('target = "a:1"\n', "target: must be [[target]] tables, not a string"),
        ("interval = \n", "not valid TOML: "),
        (
            '[[target]]\naddress = "a:1"\n[[target]]\naddress = "a:1"\n',
            "[[target]] 2: 'a:1': this target is given twice (first in {path}: "
            "[[target]] 1)",
        ),
        (
            '[[target]]\naddress = "0.0.0.0:1"\n[[target]]\naddress = "127.0.0.1:1"\n',
            "[[target]] 2: '127.0.0.1:1': this target is given twice (first in",
        ),
    ],
)
def test_a_bad_file_is_one_line_naming_file_key_and_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        plan(CommandLine(config=path))
    assert str(raised.value).startswith(f"{path}: {message.format(path=path)}")
    assert "\n" not in str(raised.value)


def test_a_target_in_the_file_and_with_watch_names_both(tmp_path: Path) -> None:
    path = write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError) as raised:
        plan(CommandLine(config=path, watch=("127.0.0.1:1",)))
    assert str(raised.value) == (
        f"--watch: '127.0.0.1:1': this target is given twice "
        f"(first in {path}: [[target]] 1)"
    )


def test_the_portserver_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[portserver]\naddress = "/run/ports.sock"\n'
        'pool = ["20000-20001", "20005"]\nallow_other_users = true\n',
    )
    assert plan(CommandLine(config=path)) == Plan(
        DEFAULT_LISTEN,
        (),
        PortServerSpec("/run/ports.sock", (20000, 20001, 20005), True),
    )
    path = write(tmp_path, '[portserver]\naddress = "@p"\npool = "20000-20001,20005"\n')
    assert plan(CommandLine(config=path)).portserver == PortServerSpec(
        "@p", (20000, 20001, 20005), False
    )


def test_the_portserver_table_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[portserver]\naddress = "@p"\n')
    spec = plan(CommandLine(config=path)).portserver
    assert spec == PortServerSpec("@p", tuple(range(15000, 25000)), False)
    assert plan(CommandLine(config=write(tmp_path, ""))).portserver is None


def test_the_command_line_replaces_the_portserver_table_key_by_key(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[portserver]\naddress = "@file"\npool = "20000"\n')
    assert plan(
        CommandLine(config=path, portserver="@cli")
    ).portserver == PortServerSpec("@cli", (20000,), False)
    assert plan(
        CommandLine(config=path, portserver_pool=(30000, 30001))
    ).portserver == PortServerSpec("@file", (30000, 30001), False)
    assert plan(
        CommandLine(config=path, portserver_allow_other_users=True)
    ).portserver == PortServerSpec("@file", (20000,), True)


def test_the_command_line_gives_the_address_a_table_lacks(tmp_path: Path) -> None:
    path = write(tmp_path, '[portserver]\npool = "20000"\n')
    assert plan(
        CommandLine(config=path, portserver="@cli")
    ).portserver == PortServerSpec("@cli", (20000,), False)


def test_a_bad_portserver_table_is_refused_even_where_the_command_line_replaces_it(
    tmp_path: Path,
) -> None:
    """Input is taken as documented or refused, never silently dropped."""
    path = write(tmp_path, '[portserver]\naddress = "@p"\npool = "20-10"\n')
    with pytest.raises(ConfigError, match="pool: Port range '20-10' starts above"):
        plan(CommandLine(config=path, portserver_pool=(30000,)))


def test_a_watch_that_repeats_a_files_target_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[[target]]\naddress = "a:1"\n')
    with pytest.raises(ConfigError, match=r"^--watch: 'a:1': this target is given"):
        plan(CommandLine(config=path, watch=("a:1",)))


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError) as raised:
        plan(CommandLine(config=missing))
    assert str(raised.value) == f"{missing}: cannot read it: No such file or directory"
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'# caf\xe9\n[[target]]\naddress = "a:1"\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: not UTF-8 text$"):
        plan(CommandLine(config=str(path)))


# The reload, on a memory reactor.


def watching(path: str, **kw: Any) -> tuple[Any, Watchlist]:
    reactor = memory_reactor({"a": ["127.0.0.1"], "b": ["127.0.0.2"]})
    command_line = CommandLine(config=path, **kw)
    watchlist = Watchlist(
        plan(command_line), load=lambda: plan(command_line), reactor=reactor
    )
    watchlist.startService()
    return reactor, watchlist


def addresses(watchlist: Watchlist) -> list[str]:
    return [target.monitor.target for target in watchlist.targets()]


def test_reload_starts_added_stops_removed_and_keeps_unchanged(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        '[[target]]\naddress = "127.0.0.1:1"\n[[target]]\naddress = "127.0.0.1:2"\n',
    )
    reactor, watchlist = watching(path)
    kept, removed = (target.monitor for target in watchlist.targets())
    refuse(reactor, 0)
    assert (kept.state, kept.changes) == (State.FREE, 1)
    write(
        tmp_path,
        '[[target]]\naddress = "127.0.0.1:3"\n[[target]]\naddress = "127.0.0.1:1"\n',
    )
    with capturedLogs() as events:
        watchlist.reload()
    assert addresses(watchlist) == ["127.0.0.1:3", "127.0.0.1:1"]  # the file's order
    assert watchlist.targets()[1].monitor is kept
    assert (kept.running, kept.state, kept.changes) == (True, State.FREE, 1)
    assert not removed.running and removed.parent is None
    added = watchlist.targets()[0].monitor
    assert added.running and added.parent is watchlist
    assert attempts(reactor)[-1] == ("127.0.0.1", 3)
    assert [formatEvent(e) for e in events] == [
        "Configuration reloaded: 1 added, 1 removed, 0 changed, 1 unchanged"
    ]
    assert watchlist.reload_successful
    watchlist.stopService()
    assert not added.running and not kept.running


def test_reload_of_a_changed_schedule_carries_the_state_on(tmp_path: Path) -> None:
    """A changed interval or timeout needs a new Monitor: it takes over the
    old one's state, since, history and counters, and the change of schedule
    is not a change of state."""
    path = write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\ninterval = 10\n')
    reactor, watchlist = watching(path)
    (target,) = watchlist.targets()
    old = target.monitor
    reactor.advance(0.5)
    refuse(reactor)
    write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\ninterval = 2\n')
    with capturedLogs() as events:
        watchlist.reload()
    new = target.monitor
    assert new is not old and not old.running and new.running
    assert watchlist.targets() == [target]
    assert (new.state, new.since, new.changes) == (State.FREE, 0.5, 1)
    assert (new.last_probe, new.probes) == (old.last_probe, old.probes)
    assert [formatEvent(e) for e in events] == [
        "Configuration reloaded: 0 added, 0 removed, 1 changed, 0 unchanged"
    ]
    n = len(attempts(reactor))  # the new monitor probes at once
    refuse(reactor)
    assert new.changes == 1  # still free: no change
    reactor.advance(2)
    assert len(attempts(reactor)) == n + 1  # on its new schedule
    watchlist.stopService()


def test_reload_of_a_changed_expect_keeps_the_monitor(tmp_path: Path) -> None:
    path = write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\n')
    reactor, watchlist = watching(path)
    (target,) = watchlist.targets()
    monitor = target.monitor
    refuse(reactor)
    assert not target.as_expected
    write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\nexpect = "free"\n')
    watchlist.reload()
    assert target.monitor is monitor and target.expect is State.FREE
    assert target.as_expected
    watchlist.stopService()


def test_a_bad_reload_changes_nothing_and_logs_one_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\n')
    _, watchlist = watching(path)
    before = list(watchlist.targets())
    monitor = before[0].monitor
    write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\nexpect = "up"\n')
    with capturedLogs() as events:
        watchlist.reload()
    assert watchlist.targets() == before and before[0].monitor is monitor
    assert monitor.running and before[0].expect is State.OCCUPIED
    assert not watchlist.reload_successful
    (event,) = events
    assert event["log_level"].name == "error"
    assert formatEvent(event) == (
        f"Configuration not reloaded: {path}: [[target]] 1: expect: "
        'must be "occupied" or "free", not a string \'up\''
    )
    Path(path).unlink()
    watchlist.reload()
    assert not watchlist.reload_successful
    write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\n')
    watchlist.reload()
    assert watchlist.reload_successful
    assert watchlist.targets() == before and before[0].monitor is monitor
    watchlist.stopService()


def test_reload_keeps_the_command_lines_targets_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    _, watchlist = watching(path, watch=("127.0.0.1:9",), interval=3.0)
    (watched,) = watchlist.targets()
    write(tmp_path, '[[target]]\naddress = "127.0.0.1:1"\n')
    watchlist.reload()
    assert addresses(watchlist) == ["127.0.0.1:1", "127.0.0.1:9"]
    assert watchlist.targets()[1] is watched
    assert watchlist.reload_successful
    watchlist.stopService()


def test_reload_warns_that_listen_changes_wait_for_a_restart(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ["tcp:1"]\n')
    _, watchlist = watching(path)
    write(tmp_path, 'listen = ["tcp:2"]\n')
    with capturedLogs() as events:
        watchlist.reload()
    assert [formatEvent(e) for e in events][-1] == (
        "The listening endpoints changed: they take effect on restart"
    )
    assert watchlist.reload_successful
    watchlist.stopService()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", '[portserver]\naddress = "@p"\n'),
        ('[portserver]\naddress = "@p"\n', ""),
        ('[portserver]\naddress = "@p"\n', '[portserver]\naddress = "@q"\n'),
        (
            '[portserver]\naddress = "@p"\n',
            '[portserver]\naddress = "@p"\npool = "1"\n',
        ),
        (
            '[portserver]\naddress = "@p"\n',
            '[portserver]\naddress = "@p"\nallow_other_users = true\n',
        ),
    ],
)
def test_reload_warns_that_portserver_changes_wait_for_a_restart(
    tmp_path: Path, before: str, after: str
) -> None:
    path = write(tmp_path, before)
    _, watchlist = watching(path)
    write(tmp_path, after + '[[target]]\naddress = "127.0.0.1:1"\n')
    with capturedLogs() as events:
        watchlist.reload()
    assert [formatEvent(e) for e in events][-2:] == [
        "Configuration reloaded: 1 added, 0 removed, 0 changed, 0 unchanged",
        "The portserver's settings changed: they take effect on restart",
    ]
    assert addresses(watchlist) == ["127.0.0.1:1"]  # the rest did apply
    assert watchlist.reload_successful
    watchlist.stopService()


def test_reload_with_the_same_portserver_says_nothing_of_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[portserver]\naddress = "@p"\npool = "20000-20009"\n')
    _, watchlist = watching(path)
    with capturedLogs() as events:
        watchlist.reload()
    assert [e["log_level"].name for e in events] == ["info"]
    watchlist.stopService()
