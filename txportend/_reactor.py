"""
What txportend needs from a reactor, and how it finds one.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)


class IPortendReactor(IReactorTCP, IReactorTime, IReactorPluggableNameResolver):
    """
    The reactor interfaces txportend uses:
    :class:`~twisted.internet.interfaces.IReactorTCP` (connections and
    listening ports), :class:`~twisted.internet.interfaces.IReactorTime`
    (timed calls) and
    :class:`~twisted.internet.interfaces.IReactorPluggableNameResolver`
    (name resolution without blocking).

    Every reactor that ships with Twisted provides them, and so does
    :class:`twisted.internet.testing.MemoryReactorClock`.
    """


def get_reactor(reactor: IPortendReactor | None) -> IPortendReactor:
    """
    Return ``reactor``, or the global reactor when it is ``None``.

    The global reactor is imported here, at call time, never when txportend is
    imported, so an application can still choose and install its reactor.
    """
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as global_reactor

    return cast(IPortendReactor, global_reactor)
