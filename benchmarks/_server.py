"""
The helper server: a separate process that makes loopback ports appear and
disappear on a schedule, so its CPU never counts against the process being
measured.

Run as a script (``python _server.py``); it speaks JSON lines. Each request
on stdin gets exactly one reply on stdout:

``{"op": "bind", "n": N, "host": "127.0.0.1"}``
    Bind N TCP sockets to kernel-chosen ports without listening (a
    connection to them is refused). Reply ``{"ports": [...]}``.
``{"op": "listen", "ports": [...], "at": T}``
    At ``time.monotonic()`` T (0: now), call ``listen()`` on each; from then
    on every connection is accepted and closed. Reply, once done,
    ``{"times": [...]}``: for each port, the monotonic time just after its
    ``listen()`` returned.
``{"op": "close", "ports": [...], "at": T}``
    At T, close each listening socket. Reply ``{"times": [...]}``, the time
    just after each ``close()``.
``{"op": "quit"}``
    Reply ``{}`` and exit.

``time.monotonic()`` is ``CLOCK_MONOTONIC`` on Linux, shared by every
process, so the measuring process compares these times with its own.

Nothing here is unbounded: the process exits after ``--lifetime`` seconds
or after a fixed number of loop turns, whichever comes first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import socket
import sys
import time

MAX_TURNS = 50_000_000


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Server:
    def __init__(self, lifetime: float) -> None:
        self.deadline = time.monotonic() + lifetime
        self.selector = selectors.DefaultSelector()
        self.sockets: dict[int, socket.socket] = {}
        self.listening: set[int] = set()
        # (when, op, ports); kept sorted by `when`.
        self.pending: list[tuple[float, str, list[int]]] = []
        self.inbuf = b""
        self.running = True
        os.set_blocking(sys.stdin.fileno(), False)
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)

    def reply(self, message: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def bind(self, n: int, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        ports = []
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((host, 0))
            port = s.getsockname()[1]
            self.sockets[port] = s
            ports.append(port)
        self.reply({"ports": ports})

    def do_listen(self, ports: list[int]) -> None:
        times = []
        for port in ports:
            s = self.sockets[port]
            s.listen(1024)
            times.append(time.monotonic())
            self.listening.add(port)
            self.selector.register(s, selectors.EVENT_READ, port)
        self.reply({"times": times})

    def do_close(self, ports: list[int]) -> None:
        times = []
        for port in ports:
            s = self.sockets.pop(port)
            if port in self.listening:
                self.listening.discard(port)
                self.selector.unregister(s)
            s.close()
            times.append(time.monotonic())
        self.reply({"times": times})

    def request(self, line: bytes) -> None:
        message = json.loads(line)
        op = message["op"]
        if op == "bind":
            self.bind(int(message["n"]), message.get("host", "127.0.0.1"))
        elif op in ("listen", "close"):
            self.pending.append((float(message.get("at", 0)), op, message["ports"]))
            self.pending.sort(key=lambda item: item[0])
        elif op == "quit":
            self.reply({})
            self.running = False
        else:
            raise ValueError(f"unknown op {op!r}")

    def read_requests(self) -> None:
        try:
            chunk = os.read(sys.stdin.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.running = False
            return
        self.inbuf += chunk
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            if line.strip():
                self.request(line)

    def accept_all(self, s: socket.socket) -> None:
        for _ in range(4096):
            try:
                conn, _addr = s.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED and the like
                continue
            conn.close()

    def run_due(self) -> None:
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            _when, op, ports = self.pending.pop(0)
            if op == "listen":
                self.do_listen(ports)
            else:
                self.do_close(ports)
            now = time.monotonic()

    def serve(self) -> None:
        for _ in range(MAX_TURNS):
            if not self.running or time.monotonic() > self.deadline:
                break
            self.run_due()
            timeout = 0.05
            if self.pending:
                timeout = max(0.0, min(timeout, self.pending[0][0] - time.monotonic()))
            for key, _mask in self.selector.select(timeout):
                if key.data is None:
                    self.read_requests()
                else:
                    self.accept_all(key.fileobj)  # type: ignore[arg-type]
        for s in self.sockets.values():
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lifetime", type=float, default=900.0)
    args = parser.parse_args()
    raise_nofile()
    Server(args.lifetime).serve()


if __name__ == "__main__":
    main()
