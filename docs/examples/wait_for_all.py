"""
Wait until every server of a stack accepts connections, all at once.

    python wait_for_all.py TIMEOUT HOST:PORT [HOST:PORT ...]
"""

import sys

from twisted.internet.defer import FirstError, gatherResults, inlineCallbacks
from twisted.internet.task import react

import txportend


@inlineCallbacks
def main(reactor, timeout, *targets):
    servers = [txportend.HostPort(target) for target in targets]
    waits = [
        txportend.occupied(
            server.host, server.port, timeout=float(timeout), reactor=reactor
        )
        for server in servers
    ]
    try:
        yield gatherResults(waits, consumeErrors=True)
    except FirstError as e:
        for wait in waits:
            wait.cancel()  # stop the others; a no-op for those already done
        print(e.subFailure.value)
        raise SystemExit(1) from None
    print("all up:", ", ".join(servers))


if __name__ == "__main__":
    react(main, sys.argv[1:])
