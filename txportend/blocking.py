"""
The blocking, portend-compatible API: ``import txportend.blocking as portend``.

Every name, signature, default, return value, exception and message of the
``portend`` 3.2.1 module is here (:func:`occupied`, :func:`free`,
:class:`Checker`, :func:`find_available_local_port`, :func:`client_host`,
:class:`HostPort`, :class:`Timeout`, :class:`PortNotFree`), so code written
against portend runs unchanged. :func:`occupied` and :func:`free` also take a
keyword-only ``interval``, as the Deferred API does.

The exceptions are txportend's own: ``txportend.blocking.Timeout is
txportend.Timeout``, and so on.

How it works
------------
There is one implementation of the logic: each call here runs the Deferred
API (:func:`txportend.occupied`, :func:`txportend.free`,
:func:`txportend.assert_free`, :func:`txportend.find_available_local_port`)
on a *private reactor* and waits for its result.

- **A private reactor, never the global one.** A blocking call can't use the
  global reactor: in a plain script it isn't running, and starting it would
  install it for good (reactors can't be restarted), taking away the
  application's choice (``asyncioreactor.install()`` would then fail); and
  from the reactor's own thread one can't wait on it at all. So this module
  instantiates a reactor class directly (epoll on Linux, poll on other
  POSIX systems, select elsewhere, as Twisted's default chooser does) and
  never installs it as :mod:`twisted.internet.reactor`. Nothing here imports
  the global reactor.
- **One daemon thread for the life of the process, started lazily.** The
  reactor runs in a single daemon thread, ``txportend.blocking``, created on
  the first call (importing this module costs nothing) and reused by every
  call from every thread. Creating a reactor and a thread per call would cost
  milliseconds and file descriptors; a daemon thread never keeps the
  interpreter from exiting, so nothing needs shutting down. The reactor runs
  with ``installSignalHandlers=False`` (signal handlers belong to the main
  thread and the application) and is not registered as Twisted's I/O thread.
- **Calls go in through** ``callFromThread`` and the calling thread waits on
  a lock that the reactor thread releases when the Deferred fires, as
  :func:`twisted.internet.threads.blockingCallFromThread` does with a queue.
  That function isn't used as it is because it can't cancel: here, if the
  wait is interrupted (``KeyboardInterrupt`` in the main thread), the
  Deferred is cancelled in the reactor thread, which stops the wait and
  closes its sockets. This is best effort: the cancellation runs after the
  calls queued before it, and a name lookup already running in its thread
  finishes (its answer is dropped).
- **No hop when nothing needs waiting.** :meth:`Checker.assert_free` on an
  address literal first tries its connection in the calling thread with a
  non-blocking socket: on loopback the kernel answers within ``connect()``,
  and that answer decides, with the same check and verdict as the Deferred
  API's :func:`txportend.assert_free`. Only when the handshake is still
  under way, or for a host name, does the call go to the private reactor.
- **Host names** (not address literals) are resolved with ``getaddrinfo``,
  each lookup in a daemon thread of its own (``txportend.resolver``), up to
  32 at once, the next ones waiting their turn: a slow name never blocks the
  loop, nor holds up another name's lookup, so it can't turn another call's
  answer into a wrong :class:`Timeout`. A thread ends when no lookup is
  left for it, so when the module is idle the ``txportend.blocking`` thread
  is the only one left; nothing ever waits for a lookup thread, so the
  process exits at once even while one hangs.
- **A name that does not resolve** fails at once with
  :class:`txportend.HostNotFound` (a :exc:`socket.gaierror`), as in
  portend; the Deferred API's :func:`txportend.occupied` retries instead.
- **fork():** the child forgets the parent's reactor and thread (which does
  not exist in the child), closes the reactor's own descriptors it inherited,
  and starts a fresh reactor lazily on its first call.

Which threads may call
----------------------
Any thread: a plain script's main thread, many threads at once, a worker
thread while the global reactor runs elsewhere, and even the thread running
the global reactor, since the private reactor is separate. But a blocking
call there blocks the global reactor, which serves nothing until the call
returns: in Twisted code, use the Deferred API (:mod:`txportend`) instead.

Calling from the private reactor's own thread (a callback run by it) would
wait forever for a result only that thread can produce, so it raises
:exc:`RuntimeError` instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from . import _portclient, _resolver, _sockets, _wait
from ._errors import PortNotFree, Timeout
from ._hostport import HostPort, TimeoutType, client_host
from ._reactor import IPortendReactor
from ._schedule import IntervalType, default_interval

if TYPE_CHECKING:
    from twisted.internet.base import ReactorBase

__all__ = [
    "Checker",
    "HostPort",
    "PortNotFree",
    "Timeout",
    "client_host",
    "find_available_local_port",
    "free",
    "occupied",
    "request_port",
]

_T = TypeVar("_T")

#: The name of the thread that runs the private reactor.
THREAD_NAME = "txportend.blocking"

_SAME_THREAD = (
    "txportend.blocking was called from the thread running its own private "
    "reactor, where waiting for the result would deadlock; use the Deferred "
    "API (txportend.occupied, txportend.free, txportend.assert_free, ...) "
    "from reactor code instead."
)


def _new_reactor() -> ReactorBase:
    """
    Instantiate (never install) the reactor class Twisted's default chooser
    would pick for this platform.
    """
    reactor: ReactorBase
    if sys.platform.startswith("linux"):
        from twisted.internet.epollreactor import EPollReactor

        reactor = EPollReactor()  # type: ignore[no-untyped-call]
    elif os.name == "posix" and sys.platform != "darwin":
        from twisted.internet.pollreactor import PollReactor

        reactor = PollReactor()
    else:
        from twisted.internet.selectreactor import SelectReactor

        reactor = SelectReactor()
    # Don't claim twisted.python.threadable's "I/O thread" from the global
    # reactor (Twisted does the same for the reactor win32eventreactor runs
    # in a thread of its own).
    reactor._registerAsIOThread = False
    _resolver.install(cast(_resolver.IResolverReactor, reactor))
    return reactor


class _Loop:
    """The private reactor and the daemon thread running it."""

    def __init__(self) -> None:
        reactor = _new_reactor()
        self._base = reactor
        self.reactor = cast(IPortendReactor, reactor)
        self.call_from_thread = reactor.callFromThread
        self.thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name=THREAD_NAME,
            daemon=True,
        )
        self.thread.start()
        self.ident = self.thread.ident

    def close_inherited(self) -> None:
        """
        In a child after fork(): close the descriptors of the parent's
        reactor (its waker and poller), which the child will never use.
        Best effort: sockets of calls in flight at fork time are left open.
        """
        waker = getattr(self._base, "waker", None)
        poller = getattr(self._base, "_poller", None)  # epoll's descriptor
        closers: list[Callable[[], object]] = []
        if waker is not None:
            closers.append(partial(waker.connectionLost, None))
        poller_close = getattr(poller, "close", None)
        if callable(poller_close):
            closers.append(poller_close)
        for close in closers:
            with contextlib.suppress(OSError):
                close()


_loop: _Loop | None = None
_loop_lock = threading.Lock()


def _get_loop() -> _Loop:
    """Return the private reactor's loop, starting it on first use."""
    global _loop
    loop = _loop
    if loop is None:
        with _loop_lock:
            if _loop is None:
                _loop = _Loop()
            loop = _loop
    return loop


def _forget_after_fork() -> None:
    """In a child after fork(): start a fresh private reactor lazily."""
    global _loop, _loop_lock
    _loop_lock = threading.Lock()
    loop, _loop = _loop, None
    if loop is not None:
        loop.close_inherited()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_after_fork)


class _Pending:
    """One blocking call: the Deferred, its outcome, and the lock to wait on."""

    __slots__ = ("deferred", "done", "outcome")

    def __init__(self) -> None:
        self.deferred: Deferred[Any] | None = None
        self.outcome: object = None
        self.done = threading.Lock()
        self.done.acquire()

    def finish(self, outcome: object) -> None:
        """Called in the reactor thread when the Deferred fires."""
        self.outcome = outcome
        self.done.release()
        # Returning None consumes a Failure: it is re-raised in the caller.


def _begin(
    reactor: IPortendReactor,
    pending: _Pending,
    function: Callable[..., Deferred[Any]],
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> None:
    """Start ``function`` in the reactor thread."""
    try:
        deferred = function(*args, reactor=reactor, **kwargs)
    except BaseException:
        pending.finish(Failure())  # type: ignore[no-untyped-call]
        return
    pending.deferred = deferred
    deferred.addBoth(pending.finish)


def _cancel(pending: _Pending) -> None:
    """Cancel an abandoned call, in the reactor thread."""
    if pending.deferred is not None:
        pending.deferred.cancel()


def _refuse_own_thread() -> None:
    """Raise RuntimeError in the private reactor's own thread, where waiting
    for a result would deadlock."""
    loop = _loop
    if loop is not None and threading.get_ident() == loop.ident:
        raise RuntimeError(_SAME_THREAD)


def _call(function: Callable[..., Deferred[_T]], *args: object, **kwargs: object) -> _T:
    """
    Run ``function(*args, reactor=<private reactor>, **kwargs)`` in the
    private reactor's thread, wait for its Deferred and return its result,
    or raise its exception.

    :raises RuntimeError: when called from the private reactor's thread.
    """
    loop = _get_loop()
    _refuse_own_thread()
    pending = _Pending()
    try:
        loop.call_from_thread(_begin, loop.reactor, pending, function, args, kwargs)
        pending.done.acquire()
    except BaseException:
        # Interrupted (KeyboardInterrupt, say): stop the wait, leave nothing.
        loop.call_from_thread(_cancel, pending)
        raise
    outcome = pending.outcome
    if isinstance(outcome, Failure):
        error = outcome.value
        assert error is not None
        # With the reactor thread's frames, when the Failure still has them.
        raise error.with_traceback(outcome.getTracebackObject())  # type: ignore[no-untyped-call]
    return cast(_T, outcome)


class Checker:
    """
    portend's ``Checker``: holds the per-connection timeout for
    :meth:`assert_free`.

    :param timeout: seconds each connection attempt may take.
    """

    def __init__(self, timeout: TimeoutType = 1.0) -> None:
        self.timeout = timeout

    def assert_free(self, host: str | Sequence[Any], port: int | None = None) -> None:
        """
        Assert that the given addr is free
        in that all attempts to connect fail within the timeout
        or raise a PortNotFree exception.

        >>> free_port = find_available_local_port()

        >>> Checker().assert_free('localhost', free_port)
        >>> Checker().assert_free('127.0.0.1', free_port)
        >>> Checker().assert_free('::1', free_port)

        Also accepts an addr tuple

        >>> addr = '::1', free_port, 0, 0
        >>> Checker().assert_free(addr)

        Host might refer to a server bind address like '::', which
        should use localhost to perform the check.

        >>> Checker().assert_free('::', free_port)

        :param host: a host name or address, or an address tuple such as
            ``('::1', 8080, 0, 0)`` when ``port`` is ``None``.
        :param port: the TCP port.
        :raises PortNotFree: ``Port 8080 is in use on 127.0.0.1.``, naming
            the address that accepted.
        :raises ValueError: for an empty host or a bad port.
        """
        _refuse_own_thread()  # as _call would, whatever the kernel says
        if not _wait.assert_free_now(host, port, self.timeout):
            _call(_wait.assert_free, host, port, self.timeout)


def free(
    host: str,
    port: int,
    timeout: TimeoutType = float("Inf"),
    *,
    interval: IntervalType = default_interval,
) -> None:
    """
    Wait for the specified port to become free (dropping or rejecting
    requests). Return when the port is free or raise a Timeout if timeout has
    elapsed.

    Timeout may be specified in seconds or as a timedelta.
    If timeout is None or ∞, the routine will run indefinitely.

    >>> free('localhost', find_available_local_port())

    >>> free(None, None)
    Traceback (most recent call last):
    ...
    ValueError: Host values of '' or None are not allowed.

    :param interval: the pause between probes (keyword only); see
        :func:`txportend.free`.
    :raises Timeout: ``Port 8080 not free on localhost.``
    :raises txportend.HostNotFound: (a :exc:`socket.gaierror`) for a name that
        does not resolve.
    """
    _call(_wait.free, host, port, timeout, interval=interval)


def occupied(
    host: str,
    port: int,
    timeout: TimeoutType = float("Inf"),
    *,
    interval: IntervalType = default_interval,
) -> None:
    """
    Wait for the specified port to become occupied (accepting requests).
    Return when the port is occupied or raise a Timeout if timeout has
    elapsed.

    Timeout may be specified in seconds or as a timedelta.
    If timeout is None or ∞, the routine will run indefinitely.

    >>> occupied('localhost', find_available_local_port(), .1)
    Traceback (most recent call last):
    ...
    Timeout: Port ... not bound on localhost.

    >>> occupied(None, None)
    Traceback (most recent call last):
    ...
    ValueError: Host values of '' or None are not allowed.

    :param interval: the pause between probes (keyword only); see
        :func:`txportend.occupied`.
    :raises Timeout: ``Port 8080 not bound on localhost.``
    :raises txportend.HostNotFound: (a :exc:`socket.gaierror`) at once for a
        name that does not resolve, as portend does (the Deferred API's
        :func:`txportend.occupied` retries it instead).
    """
    _call(
        _wait.wait_for,
        host,
        port,
        timeout,
        interval,
        want_occupied=True,
        retry_unresolved=False,
    )


def find_available_local_port() -> int:
    """
    Find a free port on localhost: a TCP port on 127.0.0.1 that the kernel
    picks, bound and closed at once in the calling thread, as portend's does
    (see :func:`txportend.find_available_local_port`). It starts no thread.

    >>> 0 < find_available_local_port() < 65536
    True

    :raises twisted.internet.error.CannotListenError: when no socket could be
        bound (out of file descriptors, say).
    """
    return _sockets.local_port_now()


def request_port(
    address: str | None = None,
    *,
    pid: int | None = None,
    timeout: TimeoutType = _portclient.DEFAULT_TIMEOUT,
) -> int:
    """
    Ask a portserver for a port reserved for process ``pid`` (this one by
    default), as portpicker's ``get_port_from_port_server`` does; see
    :func:`txportend.request_port`.

    :param address: ``"@name"`` (Linux's abstract namespace) or a socket
        path; ``PORTSERVER_ADDRESS`` by default.
    :param timeout: seconds the whole request may take; ``None`` waits for
        ever.
    :return: the port.
    :raises txportend.PortServerError: no address, the server unreachable,
        no port given, or no answer in time.
    :raises ValueError: for a bad address or timeout.
    """
    port: int = _call(_portclient.request_port, address, pid=pid, timeout=timeout)
    return port
