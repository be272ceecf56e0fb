"""
One TCP connection attempt with a plain non-blocking socket, the socket
habits every probe shares, and the bind check (:func:`bind_now`).

The core's probe on Twisted's POSIX reactors starts here and hands the socket
to the reactor only when the kernel has no answer yet; the blocking API and
the command line's quick look use the same start when no waiting is needed.
The command line's quick look runs before Twisted is imported, so nothing
here imports it (but a failing :func:`bind_now`, to raise Twisted's error).

Every probe leaves like a polite client: an accepted connection is closed
normally (FIN), as portend, ``nc -z`` and Prometheus' blackbox_exporter do,
so the server sees a client that connected and left, never a reset. Our
side keeps the connection in TIME_WAIT for a minute (Linux), at most one per
accepted probe; on loopback Linux reuses them for new connections
(``tcp_tw_reuse``), so polling never runs out of local ports.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import struct
import sys
from collections.abc import Callable


class Outcome(enum.Enum):
    """What one connection attempt to one address saw."""

    #: Something accepted the connection: the port is occupied.
    ACCEPTED = "accepted"
    #: The connection was refused (RST): nothing listens there. Also a
    #: probe connected to itself: when nothing listens on a port in the range
    #: the kernel picks local ports from, it may pick that very port for the
    #: probe, and TCP's simultaneous open connects the socket to itself.
    REFUSED = "refused"
    #: No answer before the probe timeout (a dropped SYN, a full backlog, a
    #: firewall). portend counts this as free; here the caller can tell.
    TIMED_OUT = "timed out"
    #: Any other failure to connect (no route, network unreachable, ...), or
    #: an address this machine can't try while another address of the same
    #: host got an answer (``::1`` where IPv6 is switched off).
    UNREACHABLE = "unreachable"


Outcome.__module__ = "txportend"

# connect() on a non-blocking socket: the handshake is under way. (On Linux
# EAGAIN, which is EWOULDBLOCK, means no local port is left, not "in progress";
# Windows says WSAEWOULDBLOCK for "in progress".)
_IN_PROGRESS = frozenset(
    {errno.EINPROGRESS, errno.EALREADY}
    | ({errno.EWOULDBLOCK} if sys.platform == "win32" else set())
)
# Errors of this machine, not answers of the peer: a probe that meets one
# fails with it, rather than report a port free that may not be.
_LOCAL_ERRORS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
    | ({errno.EAGAIN} if sys.platform != "win32" else set())
)


def outcome_of(code: int) -> Outcome:
    """The :class:`Outcome` of a finished connect(), from its errno."""
    if code in (0, errno.ECONNRESET):
        # A reset after the handshake: something accepted, then closed.
        return Outcome.ACCEPTED
    if code == errno.ECONNREFUSED:
        return Outcome.REFUSED
    if code == errno.ETIMEDOUT:
        return Outcome.TIMED_OUT
    return Outcome.UNREACHABLE


def answer_of(sock: socket.socket, unconnected: int) -> int:
    """
    A non-blocking connect()'s errno so far: 0 when connected, the error
    when it failed, ``unconnected`` while there is no answer yet.

    A socket connected to itself is ECONNREFUSED: when the port probed is in
    the range the kernel picks local ports from and nothing listens on it,
    the kernel may pick that very port for the probe, and TCP's simultaneous
    open then connects the socket to itself. Nothing accepted it. Such a
    socket is set to close with a reset: a normal close would leave the
    probed port itself in TIME_WAIT, where no server could bind it for a
    minute.
    """
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code == 0:
        try:
            peer = sock.getpeername()
        except OSError:
            return unconnected
        if peer == sock.getsockname():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            return errno.ECONNREFUSED
    return code


#: SO_LINGER on, for 0 seconds: close() resets the connection.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _sockaddr(address: str, port: int) -> tuple[object, ...]:
    if ":" not in address:
        return (address, port)
    if "%" in address:  # a scoped IPv6 literal: numeric, so no lookup
        return socket.getaddrinfo(
            address, port, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        )[0][4]
    return (address, port, 0, 0)


# Made non-blocking by socket() itself where it can: one system call fewer.
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


def new_socket(family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A non-blocking socket of ``family``: TCP, or ``kind``."""
    sock = socket.socket(family, kind | _NONBLOCK)
    if not _NONBLOCK:
        sock.setblocking(False)
    return sock


# Twisted's tcp.Port.createInternetSocket sets SO_REUSEADDR on POSIX only,
# not on Cygwin (on Windows it would let the socket bind a port in use);
# listenTCP's default backlog.
_REUSE_ADDRESS = os.name == "posix" and sys.platform != "cygwin"
_BACKLOG = 50


def bind_now(address: str, port: int, kind: int = socket.SOCK_STREAM) -> int:
    """
    Bind ``address:port`` as Twisted's ``listenTCP`` (``kind``
    ``SOCK_STREAM``) or ``listenUDP`` (``SOCK_DGRAM``) binds it, then close
    the socket at once: no reactor, so nothing is logged. None of these
    calls blocks, so this may run on the reactor thread.

    Twisted's choices, so the answers are the ones ``listenTCP`` and
    ``listenUDP`` give: a non-blocking socket; for TCP ``SO_REUSEADDR`` on
    POSIX, then ``bind()`` and ``listen()``; for UDP ``bind()`` only,
    without ``SO_REUSEADDR``. An IPv6 literal, ``%scope`` included, is bound
    at the address Twisted resolves it to. The socket comes from
    :func:`new_socket`, looked up when called.

    :param address: an IPv4 or IPv6 address literal (``0.0.0.0``, ``::``:
        every interface).
    :param port: the port, 0 for one the kernel picks.
    :param kind: ``socket.SOCK_STREAM`` (TCP) or ``socket.SOCK_DGRAM`` (UDP).
    :return: the port bound: ``port``, or the kernel's pick for 0.
    :raises twisted.internet.error.CannotListenError: with the
        :exc:`OSError` of ``socket()``, ``bind()`` or ``listen()`` (or the
        error of an IPv6 scope that names no interface, or can't be one) as
        its ``socketError``, as ``listenTCP`` raises it. The socket is closed
        whatever happens.
    """
    sock: socket.socket | None = None
    try:
        sockaddr = _sockaddr(address, port)
        sock = new_socket(socket.AF_INET6 if ":" in address else socket.AF_INET, kind)
        if kind == socket.SOCK_STREAM and _REUSE_ADDRESS:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        if kind == socket.SOCK_STREAM:
            sock.listen(_BACKLOG)
        bound: int = sock.getsockname()[1]
    except (OSError, UnicodeError) as e:  # UnicodeError: a bad %scope
        # Imported here: the command line's quick look uses this module
        # before Twisted is imported.
        from twisted.internet.error import CannotListenError

        raise CannotListenError(address, port, e) from e  # type: ignore[no-untyped-call]
    finally:
        if sock is not None:
            sock.close()
    return bound


def local_port_now() -> int:
    """
    A TCP port on 127.0.0.1 that nothing is bound to, picked by the kernel:
    port 0 bound as ``reactor.listenTCP(0)`` would bind it (with
    ``SO_REUSEADDR`` on POSIX), and the socket closed at once. It never
    blocks and needs no reactor.

    :raises twisted.internet.error.CannotListenError: when no socket could be
        bound (out of file descriptors, say).
    """
    return bind_now("127.0.0.1", 0)


# What socket() or connect() says when this machine has no address of the
# family to connect from: IPv6 switched off (no ::1), or not built in.
_NO_FAMILY = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})
_LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
#: The errnos :func:`settle` looks into: this machine's errors, and the
#: signs of a family it lacks.
MACHINE_ERRORS = _LOCAL_ERRORS | _NO_FAMILY


def lacks_family(
    family: int, code: int, make_socket: Callable[[int], socket.socket] = new_socket
) -> bool:
    """
    Whether error ``code`` from ``socket()`` or ``connect()`` means that this
    machine lacks the address ``family`` altogether (IPv6 switched off, so
    no ``::1``), rather than an error of its own: EADDRNOTAVAIL also means
    "no local port left", which must stay an error, never "free".

    It tells the two apart by binding the family's loopback address to port
    0: that fails with EADDRNOTAVAIL (or EAFNOSUPPORT) only when the address
    does not exist; out of local ports, it fails with EADDRINUSE. Asked
    anew each time (a few microseconds, on this error path only), so
    switching IPv6 back on is seen at once.
    """
    if code not in _NO_FAMILY or family not in _LOOPBACK:
        return False
    try:
        sock = make_socket(family)
    except OSError as e:
        return e.errno in _NO_FAMILY
    try:
        sock.bind((_LOOPBACK[family], 0))
    except OSError as e:
        return e.errno in _NO_FAMILY
    finally:
        sock.close()
    return False


def settle(
    address: str,
    code: int,
    make_socket: Callable[[int], socket.socket] = new_socket,
) -> Outcome:
    """
    The :class:`Outcome` of a ``connect()`` to ``address`` from its errno,
    for an answer known when it is started: :func:`outcome_of`, unless the
    error is this machine's.

    An address family this machine lacks has nothing listening on it: such
    an attempt is :attr:`Outcome.UNREACHABLE` (``::1`` or ``::`` where IPv6
    is switched off), as portend's ``free`` returns there.

    :raises OSError: for an error of this machine rather than an answer: no
        socket to be had (EMFILE), no local port left (EADDRNOTAVAIL,
        EAGAIN).
    """
    if code in MACHINE_ERRORS:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if lacks_family(family, code, make_socket):
            return Outcome.UNREACHABLE
        raise OSError(code, os.strerror(code))
    return outcome_of(code)


def start_connect(
    address: str,
    port: int,
    make_socket: Callable[[int], socket.socket] = new_socket,
) -> tuple[socket.socket | None, Outcome | None]:
    """
    Begin one non-blocking TCP connection to an address literal.

    On loopback the kernel usually knows the answer within ``connect()``:
    then the socket is closed at once (normally: a FIN, if it connected) and
    the answer returned. Otherwise the handshake is under way and the socket
    is returned for the caller to watch (it turns writable with the answer,
    which :func:`answer_of` reads).

    :return: ``(None, outcome)`` with the kernel's answer, or
        ``(socket, None)`` while the handshake is under way. An address
        family this machine lacks is :attr:`Outcome.UNREACHABLE`
        (:func:`settle`).
    :raises OSError: (or :exc:`UnicodeError` for a bad scope) for an error of
        this machine rather than an answer: no socket to be had (EMFILE), no
        local port left, an IPv6 scope that names no interface. No socket is
        left open then.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = _sockaddr(address, port)
    try:
        sock = make_socket(family)
    except OSError as e:
        if e.errno is not None and lacks_family(family, e.errno, make_socket):
            return None, Outcome.UNREACHABLE
        raise
    try:
        code = sock.connect_ex(sockaddr)
        if code == 0 or code in _IN_PROGRESS:
            code = answer_of(sock, unconnected=errno.EINPROGRESS)
        if code == errno.EINPROGRESS:
            return sock, None
    except BaseException:
        sock.close()
        raise
    sock.close()
    return None, settle(address, code, make_socket)


def connect_now(
    address: str,
    port: int,
    make_socket: Callable[[int], socket.socket] = new_socket,
) -> Outcome | None:
    """
    One connection attempt that never waits: the kernel's answer when it has
    one within ``connect()`` (as on loopback), else ``None`` (the attempt is
    abandoned and its socket closed).

    :raises OSError: as :func:`start_connect`.
    """
    sock, outcome = start_connect(address, port, make_socket)
    if sock is not None:
        sock.close()
    return outcome
