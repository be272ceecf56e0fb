"""
The ``twistd portend`` plugin: a monitoring daemon for TCP ports.

Twisted imports this module to list its plugins (``twistd --help``), so it
imports nothing but :class:`~twisted.application.service.ServiceMaker`; the
daemon itself is :mod:`txportend.tap`, imported when ``portend`` runs.
"""

from twisted.application.service import ServiceMaker

TxPortend = ServiceMaker(
    "portend",
    "txportend.tap",
    "Watch TCP ports: log every change, serve their state over HTTP "
    "(a status page, JSON and Prometheus metrics); optionally a portserver "
    "that hands out ports to test suites (portpicker's protocol).",
    "portend",
)
