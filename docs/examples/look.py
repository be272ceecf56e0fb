"""
Look once at a port and say what each of its addresses answered.

    python look.py HOST:PORT
"""

import sys

from twisted.internet.task import react

import txportend


async def main(reactor, target):
    server = txportend.HostPort(target)
    result = await txportend.probe(server.host, server.port, timeout=1, reactor=reactor)
    for address, outcome in result.outcomes.items():
        print(f"{address}: {outcome.value}")
    bindable = await txportend.can_bind(server.host, server.port, reactor=reactor)
    print("this process could listen there:", bindable)


if __name__ == "__main__":
    react(main, sys.argv[1:])
