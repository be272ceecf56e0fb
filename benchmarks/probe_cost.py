"""
Where a probe's CPU goes, layer by layer: ``python -m benchmarks.probe_cost``
(``tox -e bench -- --probe-cost`` runs it too, after the table).

Each layer is timed on a loopback port that refuses connections (a socket
bound, not listening) and on one that accepts (the helper server, in its own
process), one probe after another, reporting user and system CPU per probe
(``getrusage(RUSAGE_SELF)``). The layers, cheapest first:

``raw socket``
    ``socket()``, non-blocking ``connect_ex()``, ``SO_ERROR`` and a plain
    ``close()`` in a loop: the floor. On loopback the kernel
    finishes the handshake (or the RST) inside ``connect()``, so ``SO_ERROR``
    already holds the answer.
``portend``
    ``portend.Checker().assert_free`` (blocking, ``getaddrinfo`` each call).
``connectTCP bare``
    ``reactor.connectTCP(..., timeout=None)`` with a minimal factory, awaited.
``connectTCP t=1``
    The same with a connect timeout: a ``callLater`` and a ``TimeoutError``
    instance per attempt.
``connect_once``
    ``txportend._connect.connect_once``: adds the Deferred and its checks.
``probe``
    ``txportend.probe``: adds ``resolve`` (an IP literal: ``succeed``),
    ``gatherResults`` and the ``ProbeResult``.
``wait loop``
    ``txportend.occupied``/``free`` with ``interval=0``: the whole per-probe
    cost of a wait, ``callLater`` included (probes counted by the policy).
    Where the core imposes a minimum pause (a per-reactor probe budget), the
    wall time includes it and user + sys is the figure to read: the CPU of
    a probe and of the reactor waking up for it.
``timer only``
    A ``callLater(0)`` chain doing nothing: the reactor's cost per wake-up.

Then the cost of waking up after a pause, which polling pays once per probe
(``wakeups``): CPU per wake-up of ``time.sleep(pause)``, of a bare
``epoll.poll(pause)``, and of a Twisted epoll reactor's ``callLater(pause)``
chain, for pauses from 1 to 100 ms, each over about 0.6 s.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from ._common import LOOPBACK, HelperServer


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


class _Timer:
    def __init__(self) -> None:
        self.u, self.s = _usage()
        self.t = time.perf_counter()

    def per(self, n: int) -> dict[str, float]:
        u, s = _usage()
        return {
            "wall_us": (time.perf_counter() - self.t) / n * 1e6,
            "user_us": (u - self.u) / n * 1e6,
            "sys_us": (s - self.s) / n * 1e6,
        }


def _raw_probe(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        rc = s.connect_ex((LOOPBACK, port))
        if rc == errno.EINPROGRESS:
            rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return rc == 0
    finally:
        s.close()


def measure(n: int) -> dict[str, dict[str, Any]]:
    """Time every layer ``n`` times per outcome; return the figures."""
    import portend
    from twisted.internet import task
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ClientFactory, Protocol

    import txportend
    from txportend import _connect

    results: dict[str, dict[str, Any]] = {}

    class _Quick(Protocol):
        def connectionMade(self) -> None:
            self.transport.loseConnection()  # type: ignore[union-attr]

    class _Factory(ClientFactory):
        noisy = False
        protocol = _Quick

        def __init__(self, d: Deferred[bool]) -> None:
            self.d = d

        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
            self.d.callback(False)

        def clientConnectionLost(self, connector: Any, reason: Any) -> None:
            self.d.callback(True)

    async def run(reactor: Any) -> None:
        helper = HelperServer()
        refused_holder = socket.socket()
        refused_holder.bind((LOOPBACK, 0))
        ports = {"refused": refused_holder.getsockname()[1]}
        (ports["accepted"],) = helper.bind(1)
        helper.listen([ports["accepted"]])
        helper.times()

        def bare(port: int, timeout: float | None) -> Deferred[bool]:
            d: Deferred[bool] = Deferred()
            reactor.connectTCP(LOOPBACK, port, _Factory(d), timeout)
            return d

        async_layers: dict[str, Callable[[int], Any]] = {
            "connectTCP bare": lambda p: bare(p, None),
            "connectTCP t=1": lambda p: bare(p, 1.0),
            "connect_once": lambda p: _connect.connect_once(reactor, LOOPBACK, p, 1.0),
            "probe": lambda p: txportend.probe(LOOPBACK, p, 1.0, reactor=reactor),
        }
        checker = portend.Checker()
        for outcome, port in ports.items():
            for name, sync in (
                ("raw socket", _raw_probe),
                ("portend", lambda p: _portend_probe(checker, p)),
            ):
                for _ in range(50):
                    sync(port)
                t = _Timer()
                for _ in range(n):
                    sync(port)
                results.setdefault(name, {})[outcome] = t.per(n)
            for name, layer in async_layers.items():
                for _ in range(50):
                    await layer(port)
                t = _Timer()
                for _ in range(n):
                    await layer(port)
                results.setdefault(name, {})[outcome] = t.per(n)
            # The whole wait loop: never satisfied, so it probes until the
            # timeout; the policy counts the pauses.
            count = [0]

            def policy(attempt: int, count: list[int] = count) -> float:
                count[0] += 1
                return 0.0

            wait = txportend.free if outcome == "accepted" else txportend.occupied
            t = _Timer()
            with contextlib.suppress(txportend.Timeout):
                await wait(LOOPBACK, port, n * 200e-6, interval=policy, reactor=reactor)
            results.setdefault("wait loop", {})[outcome] = t.per(max(count[0], 1))
            results["wait loop"][outcome]["probes"] = count[0]
        # The reactor's own cost per timed wake-up.
        left = [n]
        done: Deferred[None] = Deferred()

        def tick() -> None:
            left[0] -= 1
            if left[0] > 0:
                reactor.callLater(0, tick)
            else:
                done.callback(None)

        t = _Timer()
        reactor.callLater(0, tick)
        await done
        results["timer only"] = {"-": t.per(n)}
        refused_holder.close()
        helper.stop()

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return results


WAKEUP_PAUSES = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1)


def wakeups() -> dict[str, dict[str, float]]:
    """CPU (µs) per wake-up after each pause, three ways (see above)."""
    import select

    from twisted.internet.epollreactor import EPollReactor

    def cpu() -> float:
        return sum(_usage())

    results: dict[str, dict[str, float]] = {}
    for pause in WAKEUP_PAUSES:
        n = max(6, int(0.6 / pause))
        row: dict[str, float] = {}
        started = cpu()
        for _ in range(n):
            time.sleep(pause)
        row["sleep"] = (cpu() - started) / n * 1e6
        poller = select.epoll()
        started = cpu()
        for _ in range(n):
            poller.poll(pause)
        row["epoll"] = (cpu() - started) / n * 1e6
        poller.close()
        reactor = EPollReactor()  # type: ignore[no-untyped-call]
        left = [n]

        def tick(
            reactor: Any = reactor, left: list[int] = left, pause: float = pause
        ) -> None:
            left[0] -= 1
            if left[0] > 0:
                reactor.callLater(pause, tick)
            else:
                reactor.stop()

        reactor.callLater(pause, tick)
        started = cpu()
        reactor.run(installSignalHandlers=False)
        row["reactor"] = (cpu() - started) / n * 1e6
        results[f"{pause * 1000:g} ms"] = row
    return results


def _portend_probe(checker: Any, port: int) -> bool:
    try:
        checker.assert_free(LOOPBACK, port)
    except OSError:
        return True
    return False


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_cost")
    parser.add_argument("-n", type=int, default=3000, help="probes per layer")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    results = measure(min(args.n, 100_000))
    print(f"{'layer':<18} {'outcome':<9} {'wall':>8} {'user':>8} {'sys':>8}")
    print("(microseconds per probe)")
    for layer, outcomes in results.items():
        for outcome, f in outcomes.items():
            print(
                f"{layer:<18} {outcome:<9} {f['wall_us']:8.1f} "
                f"{f['user_us']:8.1f} {f['sys_us']:8.1f}"
            )
    woken = wakeups()
    print()
    print(f"{'pause':<18} {'sleep':>8} {'epoll':>8} {'reactor':>8}")
    print("(microseconds of CPU per wake-up)")
    for pause, row in woken.items():
        print(
            f"{pause:<18} {row['sleep']:8.1f} {row['epoll']:8.1f} {row['reactor']:8.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"probes": results, "wakeups": woken}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
