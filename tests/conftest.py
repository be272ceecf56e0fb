"""
Shared fixtures.

pytest-twisted runs the tests on a global reactor (``--reactor=default`` or
``--reactor=asyncio``) but has no ``reactor`` fixture and does not notice a
dirty reactor. The ``reactor`` fixture here does both.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings

settings.register_profile("txportend", derandomize=True, deadline=None, max_examples=60)
settings.load_profile("txportend")


def leftovers(reactor: Any, calls: set[Any], selectables: set[Any]) -> list[Any]:
    """DelayedCalls and selectables the reactor holds now that it did not before."""
    now_calls = [
        c
        for c in reactor.getDelayedCalls()
        if c not in calls
        # pytest-twisted schedules its own fixture tear-down.
        and not getattr(c.func, "__module__", "").startswith("pytest_twisted")
    ]
    now_selectables = [
        s
        for s in set(reactor.getReaders()) | set(reactor.getWriters())
        if s not in selectables
    ]
    return now_calls + now_selectables


@pytest_twisted.async_yield_fixture
async def reactor() -> AsyncIterator[Any]:
    """
    The global reactor, imported here (never at module level, which would
    break ``--reactor=asyncio``). The test fails if it leaves a DelayedCall or
    a selectable behind.

    Twisted's TCP client starts and ends some connection attempts with a
    ``callLater(0)`` of its own, so one reactor turn is allowed before the
    check; anything still pending after that is a leak.
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.task import deferLater

    calls = set(global_reactor.getDelayedCalls())
    selectables = set(global_reactor.getReaders()) | set(global_reactor.getWriters())
    yield global_reactor
    await deferLater(global_reactor, 0, lambda: None)
    left = leftovers(global_reactor, calls, selectables)
    assert not left, f"the test left these behind in the reactor: {left!r}"


def open_fds() -> set[int]:
    """The file descriptors this process has open now (Linux ``/proc``)."""
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


class _ScriptedSocket(socket.socket):
    """A real socket (a real file descriptor) whose bind() and listen() only
    record the call, or fail as scripted; it never binds anything."""

    script: BindScript
    kind_name: str
    #: What bind() was given, and whether SO_REUSEADDR was set then.
    address: tuple[Any, ...] | None = None
    reuse_address: bool | None = None

    def bind(self, address: Any) -> None:
        self.script.call("bind", self.kind_name, address[0])
        self.address = address
        option = self.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        self.reuse_address = bool(option)

    def listen(self, backlog: int = 0) -> None:
        assert self.address is not None, "listen() before bind()"
        self.script.call("listen", self.kind_name, self.address[0])

    def getsockname(self) -> Any:
        return self.address


class BindScript:
    """
    Stands in for the socket factory of txportend's bind checks
    (``_sockets.new_socket``): its sockets fail with the errno scripted in
    :attr:`errors` for a ``(call, kind, where)``, where ``call`` is
    ``"socket"``, ``"bind"`` or ``"listen"``, ``kind`` is ``"tcp"`` or
    ``"udp"``, and ``where`` is the address bound (``"v4"`` or ``"v6"`` for
    ``"socket"``). Every call is recorded in :attr:`calls`, every socket
    made in :attr:`sockets`.
    """

    def __init__(self) -> None:
        self.errors: dict[tuple[str, str, str], int] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.sockets: list[socket.socket] = []

    def call(self, call: str, kind: str, where: str) -> None:
        self.calls.append((call, kind, where))
        code = self.errors.get((call, kind, where))
        if code is not None:
            raise OSError(code, os.strerror(code))

    def __call__(self, family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
        kind_name = "tcp" if kind == socket.SOCK_STREAM else "udp"
        self.call("socket", kind_name, "v6" if family == socket.AF_INET6 else "v4")
        sock = _ScriptedSocket(family, kind)
        sock.script = self
        sock.kind_name = kind_name
        self.sockets.append(sock)
        return sock


@pytest.fixture
def bind_script(monkeypatch: pytest.MonkeyPatch) -> BindScript:
    """Bind checks (``can_bind``, ``find_available_local_port``,
    ``port_is_free``) get their sockets from a :class:`BindScript`."""
    from txportend import _sockets

    script = BindScript()
    monkeypatch.setattr(_sockets, "new_socket", script)
    return script


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listener on 127.0.0.1, on a port the kernel picks, that accepts
    only when the test says so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s
