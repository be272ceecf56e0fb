"""
txportend: wait for TCP ports to be occupied or free, the Twisted way.

Every function here returns a :class:`~twisted.internet.defer.Deferred` and
takes an optional ``reactor``; see :mod:`txportend.blocking` for the
portend-compatible blocking API.

Every name is imported on first use (PEP 562): ``python -m txportend`` can
answer without importing Twisted when it doesn't have to, and importing the
package runs almost no code (a Ctrl-C in that window would be a traceback).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._errors import HostNotFound, PortNotFree, PortServerError, Timeout
    from ._hostport import HostPort, client_host
    from ._monitor import Change, LastProbe, Monitor
    from ._pacing import Pacing
    from ._portclient import request_port
    from ._portpool import PortPool, parse_port_ranges
    from ._portserver import CannotServe, PortServer
    from ._probe import (
        Outcome,
        ProbeResult,
        can_bind,
        find_available_local_port,
        probe,
    )
    from ._reactor import IPortendReactor as IPortendReactor
    from ._result import State
    from ._schedule import default_interval
    from ._version import __version__
    from ._wait import Checker, assert_free, free, occupied

_LAZY = {
    "HostNotFound": "._errors",
    "PortNotFree": "._errors",
    "PortServerError": "._errors",
    "Timeout": "._errors",
    "HostPort": "._hostport",
    "client_host": "._hostport",
    "__version__": "._version",
    "Change": "._monitor",
    "LastProbe": "._monitor",
    "Monitor": "._monitor",
    "Pacing": "._pacing",
    "request_port": "._portclient",
    "PortPool": "._portpool",
    "parse_port_ranges": "._portpool",
    "CannotServe": "._portserver",
    "PortServer": "._portserver",
    "State": "._result",
    "Outcome": "._probe",
    "ProbeResult": "._probe",
    "can_bind": "._probe",
    "find_available_local_port": "._probe",
    "probe": "._probe",
    "IPortendReactor": "._reactor",
    "default_interval": "._schedule",
    "Checker": "._wait",
    "assert_free": "._wait",
    "free": "._wait",
    "occupied": "._wait",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CannotServe",
    "Change",
    "Checker",
    "HostNotFound",
    "HostPort",
    "LastProbe",
    "Monitor",
    "Outcome",
    "Pacing",
    "PortNotFree",
    "PortPool",
    "PortServer",
    "PortServerError",
    "ProbeResult",
    "State",
    "Timeout",
    "__version__",
    "assert_free",
    "can_bind",
    "client_host",
    "default_interval",
    "find_available_local_port",
    "free",
    "occupied",
    "parse_port_ranges",
    "probe",
    "request_port",
]
