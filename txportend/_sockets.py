"""
One TCP connection attempt with a plain non-blocking socket, and the socket
habits every probe shares.

The core's probe on Twisted's POSIX reactors starts here and hands the socket
to the reactor only when the kernel has no answer yet; the blocking API and
the command line's quick look use the same start when no waiting is needed.
The command line's quick look runs before Twisted is imported, so nothing
here imports it.
"""

from __future__ import annotations

import contextlib
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
    #: The connection was refused (RST): nothing listens there.
    REFUSED = "refused"
    #: No answer before the probe timeout (a dropped SYN, a full backlog, a
    #: firewall). portend counts this as free; here the caller can tell.
    TIMED_OUT = "timed out"
    #: Any other failure to connect (no route, network unreachable, ...), or
    #: an address this machine can't try while another address of the same
    #: host got an answer (``::1`` where IPv6 is switched off).
    UNREACHABLE = "unreachable"


Outcome.__module__ = "txportend"

_LINGER_RESET = struct.pack("ii", 1, 0)

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


def reset_on_close(sock: socket.socket) -> None:
    """
    Make closing ``sock`` send a reset (SO_LINGER 0), as every probe does
    with a connection it made: no TIME_WAIT is left on our side, so polling
    a listening port fast for a long time can't use up ephemeral ports.
    """
    with contextlib.suppress(OSError):  # a platform without SO_LINGER
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


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


def close_socket(sock: socket.socket, code: int) -> None:
    """Close a probe's socket; with a reset if its connect() succeeded."""
    if code == 0:
        reset_on_close(sock)
    sock.close()


def answer_of(sock: socket.socket, unconnected: int) -> int:
    """A non-blocking connect()'s errno so far: 0 when connected, the error
    when it failed, ``unconnected`` while there is no answer yet."""
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code == 0:
        try:
            sock.getpeername()
        except OSError:
            return unconnected
    return code


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


def new_socket(family: int) -> socket.socket:
    """A non-blocking TCP socket of ``family``."""
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    if not _NONBLOCK:
        sock.setblocking(False)
    return sock


def start_connect(
    address: str,
    port: int,
    make_socket: Callable[[int], socket.socket] = new_socket,
) -> tuple[socket.socket | None, Outcome | None]:
    """
    Begin one non-blocking TCP connection to an address literal.

    On loopback the kernel usually knows the answer within ``connect()``:
    then the socket is closed at once (with a reset if it connected) and the
    answer returned. Otherwise the handshake is under way and the socket is
    returned for the caller to watch (it turns writable with the answer,
    which :func:`answer_of` reads).

    :return: ``(None, outcome)`` with the kernel's answer, or
        ``(socket, None)`` while the handshake is under way.
    :raises OSError: (or :exc:`UnicodeError` for a bad scope) for an error of
        this machine rather than an answer: no socket to be had (EMFILE), no
        local port left, an IPv6 scope that names no interface. No socket is
        left open then.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = _sockaddr(address, port)
    sock = make_socket(family)
    try:
        code = sock.connect_ex(sockaddr)
        if code in _IN_PROGRESS:
            code = answer_of(sock, unconnected=errno.EINPROGRESS)
        if code in _LOCAL_ERRORS:
            raise OSError(code, os.strerror(code))
    except BaseException:
        sock.close()
        raise
    if code == errno.EINPROGRESS:
        return sock, None
    close_socket(sock, code)
    return None, outcome_of(code)


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
