"""
Shared fixtures.

pytest-twisted runs the tests on a global reactor (``--reactor=default`` or
``--reactor=asyncio``) but has no ``reactor`` fixture and does not notice a
dirty reactor. The ``reactor`` fixture here does both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

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
