"""
Wait until a server accepts connections, then go on.

    python wait_for_server.py HOST:PORT [TIMEOUT]
"""

import sys

from twisted.internet.task import react

import txportend


async def main(reactor, target, timeout="30"):
    server = txportend.HostPort(target)
    try:
        await txportend.occupied(
            server.host, server.port, timeout=float(timeout), reactor=reactor
        )
    except txportend.Timeout as e:
        print(e)  # Port 8080 not bound on localhost.
        raise SystemExit(1) from None
    print(f"{server} is up")
    # ... connect to it, run the tests, start the next service ...


if __name__ == "__main__":
    react(main, sys.argv[1:])
