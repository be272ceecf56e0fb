"""
A portserver: hands each port to one live process at a time, so that test
suites running in parallel never get the same port.

It speaks portpicker 1.6.0's protocol (``portserver.py`` there, its
``_PortServerRequestHandler``), so suites calling
``portpicker.pick_unused_port()`` with ``PORTSERVER_ADDRESS`` set use it
unchanged: the server listens on an ``AF_UNIX`` stream socket and reads one
request per connection, the pid as ASCII decimal and a newline. It answers
``b"<port>\\n"`` and closes, or closes without an answer when the request is
bad or no port is left. The ports and who holds them are the pool's
(``txportend._portpool``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable
from typing import cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IReactorUNIX,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from ._portclient import unix_address
from ._portpool import (
    DEFAULT_POOL,
    PortCheck,
    PortPool,
    parse_port_ranges,
    port_is_free,
)

log = Logger()

#: The address portpicker's portserver listens on by default (``@`` stands
#: for Linux's abstract namespace).
DEFAULT_ADDRESS = "@unittest-portserver"

#: Seconds a client may take to send its request after connecting.
DEFAULT_REQUEST_TIMEOUT = 5.0

#: Connections served at once; while that many are open, new ones wait in
#: the kernel's queue.
DEFAULT_MAX_CONNECTIONS = 100

# portpicker's portserver reads one chunk of at most 100 bytes and refuses
# a request longer than 20 bytes.
_MAX_REQUEST = 20


class IPortServerReactor(IReactorUNIX, IReactorTime, Interface):
    """
    What the portserver needs from a reactor: it listens on ``AF_UNIX``
    (:class:`~twisted.internet.interfaces.IReactorUNIX`) and times out slow
    clients. Its port checks bind plain sockets, without the reactor.
    """


class CannotServe(CannotListenError):
    """
    The portserver could not listen on its address: another server is
    listening there, the path is taken by something that is not a socket, or
    the system refused. The message says which, in one line.
    """

    def __init__(self, address: str, message: str) -> None:
        super().__init__(None, address, None)  # type: ignore[no-untyped-call]
        self.message = message

    def __str__(self) -> str:
        return self.message


CannotServe.__module__ = "txportend"


def peer_uid(transport: ITransport) -> int | None:
    """
    The user id of the process at the other end of an ``AF_UNIX``
    connection (``SO_PEERCRED``, Linux), or ``None`` when it can't be known.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    handle = getattr(transport, "getHandle", None)
    if option is None or handle is None:
        return None
    size = struct.calcsize("3i")
    try:
        _pid, uid, _gid = struct.unpack(
            "3i", handle().getsockopt(socket.SOL_SOCKET, option, size)
        )
    except (OSError, struct.error):
        return None
    return int(uid)


class _Request(Protocol):
    """
    One connection, one request: read the pid, wait for a port in the
    server's queue, answer and close.
    """

    def __init__(self, server: PortServer) -> None:
        self._server = server
        self.pid = 0
        #: "reading", then "queued", then "done".
        self.state = "reading"
        self.gone = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._server._opened(self)
        if self.state == "reading":
            self._timer = self._server._clock.callLater(
                self._server.request_timeout, self._too_slow
            )

    def _too_slow(self) -> None:
        self._timer = None
        self.refuse(f"nothing came within {self._server.request_timeout:g} seconds")

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def dataReceived(self, data: bytes) -> None:
        # The first chunk is the request, as portpicker's portserver reads
        # it; anything after it is ignored.
        if self.state == "reading":
            self._stop_timer()
            self._server._received(self, data)

    def refuse(self, why: str) -> None:
        """Close without an answer, counting a bad request."""
        if self.state == "done":
            return
        self.state = "done"
        self._stop_timer()
        self._server.bad_requests += 1
        log.info("Refused a request: {why}.", why=why)
        if self.transport is not None:
            self.transport.loseConnection()

    def reply(self, port: int | None) -> None:
        """Answer with the port, or close without an answer for ``None``."""
        self.state = "done"
        if self.gone or self.transport is None:
            return
        if port is not None:
            self.transport.write(b"%d\n" % port)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_timer()
        if self.state == "reading":
            self.refuse("the client closed without sending a pid")
        self.gone = True
        self._server._closed(self)


class _Factory(ServerFactory):
    noisy = False

    def __init__(self, server: PortServer) -> None:
        self._server = server

    def buildProtocol(self, addr: IAddress | None) -> _Request:
        return _Request(self._server)


def _listen_error(address: str, error: CannotListenError) -> CannotServe:
    reason = error.socketError
    code = getattr(reason, "errno", None)
    if code == errno.EADDRINUSE:
        return CannotServe(address, f"Another server is listening on {address}.")
    text = os.strerror(code) if code else str(reason)
    return CannotServe(address, f"Cannot listen on {address}: {text}.")


def _stale(address: str, path: str) -> bool:
    """
    Whether the socket file at ``path`` is left over from a server that is
    gone: connecting to it is refused. A path that is not a socket is never
    taken for stale.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True  # gone meanwhile
    if not stat.S_ISSOCK(mode):
        raise CannotServe(address, f"{address} exists and is not a socket.")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except BlockingIOError:  # a live server, busy
        return False
    except OSError as e:
        raise CannotServe(
            address,
            f"Cannot tell whether a server is listening on {address}: "
            f"{e.strerror or e}.",
        ) from None
    finally:
        probe.close()
    return False


class PortServer(Service):
    """
    A portserver, speaking portpicker 1.6.0's protocol: a
    :class:`~twisted.application.service.Service` listening on an
    ``AF_UNIX`` stream socket while it runs.

    Each connection carries one request: the pid the port is for, in ASCII
    decimal and a newline, read as one chunk of at most 100 bytes. A request
    longer than 20 bytes, not an integer, a pid of 1 or less or a pid that is
    not a live process is refused: the connection is closed with nothing
    sent. Otherwise the server answers ``b"<port>\\n"`` and closes; with no
    port left it closes without answering, and the client falls back on
    finding a port itself. Requests are served one at a time, in order.

    Beyond portpicker's portserver:

    - A client that sends nothing within ``request_timeout`` seconds is
      disconnected. A client that leaves before its turn is skipped; once
      its port was chosen, the port stays with its pid, as in portpicker.
    - The connections open at once stay near ``max_connections``: at that
      many, the server stops accepting and new clients wait in the kernel's
      queue, to be served in turn (none is turned away). One round of
      accepts takes at most the room left, but Twisted may widen a round
      before the server can narrow it again, so a burst can go a little
      over; the server's file descriptors stay bounded whatever the number
      of clients.
    - Only processes of the server's own user are answered (the peer's
      credentials, ``SO_PEERCRED``), and a filesystem socket is created with
      mode ``0600``, unless ``allow_other_users`` is set (then any local
      user may reserve ports, for any pid; the socket file gets mode
      ``0666``). Where the peer's user can't be known, only
      ``allow_other_users`` lets requests through.
    - A socket file left over by a server that is gone is replaced; a live
      server's is never taken: starting fails with :class:`CannotServe`.

    :param address: ``"@name"`` for Linux's abstract namespace or a
        filesystem path; ``DEFAULT_ADDRESS`` by default.
    :param pool: the ports to hand out, ``PortPool(parse_port_ranges(
        DEFAULT_POOL))`` by default. The pool also says which processes live.
    :param reactor: a reactor providing ``IReactorUNIX`` and
        ``IReactorTime``, the global reactor by default (looked up when the
        service starts).
    :param allow_other_users: answer every local user, not only the server's.
    :param max_connections: connections served at once (roughly, see
        above).
    :param request_timeout: seconds a client may take to send its request.
    :param port_check: says whether a port is free right now;
        ``port_is_free`` by default.
    :param peer_uid: the user id at the other end of a connection, ``None``
        when unknown; ``peer_uid`` by default.
    :raises ValueError: for a bad address.

    The figures, for a status page: :attr:`ports_managed`,
    :attr:`ports_allocated`, :attr:`requests_served`,
    :attr:`requests_denied` (no port left), :attr:`bad_requests` (refused:
    malformed, a pid that is not a live process, another user, nothing sent
    in time, or closed before sending) and :attr:`connections` (open now).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        pool: PortPool | None = None,
        *,
        reactor: IPortServerReactor | None = None,
        allow_other_users: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        port_check: PortCheck | None = None,
        peer_uid: Callable[[ITransport], int | None] = peer_uid,
    ) -> None:
        unix_address(address)  # refuse a bad one now
        if not request_timeout > 0:
            raise ValueError(
                f"request_timeout must be more than 0 seconds, not {request_timeout!r}."
            )
        if max_connections < 1:
            raise ValueError(
                f"max_connections must be 1 or more, not {max_connections}."
            )
        self.address = address
        self.pool = (
            pool if pool is not None else PortPool(parse_port_ranges(DEFAULT_POOL))
        )
        self.allow_other_users = allow_other_users
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._reactor = reactor
        self._port_check = port_check
        self._peer_uid = peer_uid
        #: Ports handed out.
        self.requests_served = 0
        #: Valid requests that got no port: none was left.
        self.requests_denied = 0
        #: Requests refused.
        self.bad_requests = 0
        #: Connections open now.
        self.connections = 0
        self._open: set[_Request] = set()
        self._queue: deque[_Request] = deque()
        self._serving = False
        self._worker: Deferred[None] | None = None
        self._listening: IListeningPort | None = None
        self._paused = False

    @property
    def ports_managed(self) -> int:
        """The number of ports in the pool."""
        return len(self.pool)

    @property
    def ports_allocated(self) -> int:
        """The number of ports held by live processes now."""
        return self.pool.allocated()

    @property
    def _clock(self) -> IPortServerReactor:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = cast(IPortServerReactor, reactor)
        return self._reactor

    def startService(self) -> None:
        """
        Listen on the address.

        :raises CannotServe: when another server listens there, the path is
            not a socket, or the system refuses.
        """
        self._listening = self._listen()
        self._pace()
        super().startService()  # type: ignore[no-untyped-call]
        log.info(
            "Portserver on {address}, handing out {count} {ports}.",
            address=self.address,
            count=len(self.pool),
            ports="port" if len(self.pool) == 1 else "ports",
        )

    def _listen(self) -> IListeningPort:
        path = unix_address(self.address)
        mode = 0o666 if self.allow_other_users else 0o600
        factory = _Factory(self)
        try:
            return self._clock.listenUNIX(path, factory, mode=mode)
        except CannotListenError as e:
            in_use = getattr(e.socketError, "errno", None) == errno.EADDRINUSE
            if not in_use or path.startswith("\0") or not _stale(self.address, path):
                raise _listen_error(self.address, e) from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.info("Replaced the stale socket file {path}.", path=path)
        try:
            return self._clock.listenUNIX(path, factory, mode=mode)
        except CannotListenError as e:
            raise _listen_error(self.address, e) from None

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, drop the open connections and the queued requests.

        :return: a Deferred firing once the socket is closed and the
            allocation under way, if any, is done.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        waits: list[Deferred[object]] = []
        listening, self._listening = self._listening, None
        if listening is not None:
            waits.append(maybeDeferred(listening.stopListening))
        self._queue.clear()
        for request in list(self._open):
            request.state = "done"  # not the client's doing: not counted
            if request.transport is not None:
                request.transport.abortConnection()  # type: ignore[attr-defined]
        if self._serving and self._worker is not None:
            waits.append(cast("Deferred[object]", self._worker))
        return DeferredList(waits).addCallback(lambda _: None)

    # Connections

    def _opened(self, request: _Request) -> None:
        self.connections += 1
        self._open.add(request)
        self._pace()
        if self.allow_other_users:
            return
        assert request.transport is not None
        uid = self._peer_uid(request.transport)
        if uid != os.getuid():
            who = "an unknown user" if uid is None else f"user {uid}"
            request.refuse(f"the client is {who}, not this server's")

    def _closed(self, request: _Request) -> None:
        self.connections -= 1
        self._open.discard(request)
        self._pace()

    def _pace(self) -> None:
        """
        Accept no more connections than there is room for: none at the cap,
        and at most the room left in one round (a listening port of
        Twisted's accepts up to its ``numberAccepts`` in a round).
        """
        port = self._listening
        room = self.max_connections - self.connections
        if port is not None and hasattr(port, "numberAccepts"):
            port.numberAccepts = max(1, room)
        pause = room <= 0
        if pause == self._paused or not IPushProducer.providedBy(port):
            return
        self._paused = pause
        producer = cast(IPushProducer, port)
        if pause:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    # Requests

    def _received(self, request: _Request, data: bytes) -> None:
        """The request, as portpicker's portserver reads it."""
        if len(data) > _MAX_REQUEST:
            request.refuse(f"more than {_MAX_REQUEST} bytes")
            return
        try:
            pid = int(data)
        except ValueError:
            request.refuse(f"{data!r} is not a pid")
            return
        if pid <= 1:
            request.refuse(f"pid {pid} can't have a port")
            return
        if self.pool.process_start(pid) is None:
            request.refuse(f"there is no process {pid}")
            return
        request.pid = pid
        request.state = "queued"
        self._queue.append(request)
        if not self._serving:
            self._serving = True
            self._worker = Deferred.fromCoroutine(self._serve())

    def _check(self, port: int) -> Deferred[bool]:
        if self._port_check is not None:
            return self._port_check(port)
        return port_is_free(port)

    async def _serve(self) -> None:
        """Serve the queued requests, one at a time."""
        try:
            while self._queue:
                request = self._queue.popleft()
                if request.gone:
                    continue
                port: int | None = None
                try:
                    port = await self.pool.allocate(request.pid, self._check)
                except Exception:
                    log.failure(
                        "Looking for a port for pid {pid} failed.", pid=request.pid
                    )
                if port is None:
                    self.requests_denied += 1
                    log.warn("No port left for pid {pid}.", pid=request.pid)
                else:
                    self.requests_served += 1
                    log.debug("Port {port} for pid {pid}.", port=port, pid=request.pid)
                request.reply(port)
        finally:
            self._serving = False


__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_REQUEST_TIMEOUT",
    "CannotServe",
    "IPortServerReactor",
    "PortServer",
    "peer_uid",
]
