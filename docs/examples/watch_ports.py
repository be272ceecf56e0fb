"""
Watch ports for as long as the program runs, and log every change.

    python watch_ports.py HOST:PORT [HOST:PORT ...]

Stop it with Ctrl-C.
"""

import sys

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import Logger, formatEvent, globalLogBeginner

import txportend

log = Logger()


def log_change(change):
    log.info(
        "{target} is now {new} (was {old})",
        target=change.target,
        new=change.new.value,
        old=change.old.value,
    )


async def main(reactor, *targets):
    monitors = MultiService()
    for text in targets:
        target = txportend.HostPort(text)
        monitor = txportend.Monitor(
            target.host, target.port, interval=0.25, reactor=reactor
        )
        monitor.subscribe(log_change)
        monitor.setServiceParent(monitors)
    monitors.startService()
    reactor.addSystemEventTrigger("before", "shutdown", monitors.stopService)
    await Deferred()  # for ever: Ctrl-C stops the reactor


def show(event):
    if event.get("log_logger") is log:  # this program's lines only
        print(formatEvent(event), flush=True)


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([show], redirectStandardIO=False)
    react(main, sys.argv[1:])
