"""
txportend's exceptions, with portend 3.2.1's names and bases.
"""

from __future__ import annotations

import socket


class Timeout(OSError):
    """
    A wait did not see the port reach the wanted state before its timeout.

    The message is portend's: ``Port 8080 not bound on localhost.`` or
    ``Port 8080 not free on localhost.``
    """


class PortNotFree(OSError):
    """
    Something accepted a connection on a port that was asserted free.

    The message is portend's: ``Port 8080 is in use on 127.0.0.1.``, naming
    the address that accepted.
    """


class HostNotFound(socket.gaierror):
    """
    A host name did not resolve to any IPv4 or IPv6 address.

    A subclass of :class:`socket.gaierror`, which is what portend lets
    through in the same case, so code that catches that keeps working.
    """


class PortServerError(OSError):
    """
    No port came from a portserver: no address was given and
    ``PORTSERVER_ADDRESS`` is not set, the server could not be reached, it
    closed without giving a port (its pool is exhausted, or it refused the
    request), or it did not answer within the timeout. The message says
    which, in one line.
    """


for _exception in (Timeout, PortNotFree, HostNotFound, PortServerError):
    # Tracebacks and doctests name them as users import them.
    _exception.__module__ = "txportend"
del _exception
