"""
txportend: wait for TCP ports to be occupied or free, the Twisted way.

Every function here returns a :class:`~twisted.internet.defer.Deferred` and
takes an optional ``reactor``; see :mod:`txportend.blocking` for the
portend-compatible blocking API.
"""

from ._errors import HostNotFound, PortNotFree, Timeout
from ._hostport import HostPort, client_host
from ._probe import Outcome, ProbeResult, can_bind, find_available_local_port, probe
from ._schedule import default_interval
from ._version import __version__
from ._wait import Checker, assert_free, free, occupied

__all__ = [
    "Checker",
    "HostNotFound",
    "HostPort",
    "Outcome",
    "PortNotFree",
    "ProbeResult",
    "Timeout",
    "__version__",
    "assert_free",
    "can_bind",
    "client_host",
    "default_interval",
    "find_available_local_port",
    "free",
    "occupied",
    "probe",
]
