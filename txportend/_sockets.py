"""
Socket habits shared by the core and the command line's quick look (which
runs before Twisted is imported, so nothing here imports it).
"""

from __future__ import annotations

import contextlib
import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_on_close(sock: socket.socket) -> None:
    """
    Make closing ``sock`` send a reset (SO_LINGER 0), as every probe does
    with a connection it made: no TIME_WAIT is left on our side, so polling
    a listening port fast for a long time can't use up ephemeral ports.
    """
    with contextlib.suppress(OSError):  # a platform without SO_LINGER
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
