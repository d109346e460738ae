"""Run the app with uvicorn on a socket of our own, and shut down gracefully on SIGTERM or SIGINT.

The socket is bound here, before uvicorn starts, for two reasons: a port that is taken becomes a one-line
`HfmtlError` (uvicorn would log it and exit), and ``port=0`` picks a free port whose number the caller
learns (`bind` returns it) and can print.

Shutdown: on SIGTERM or SIGINT uvicorn stops accepting connections, lets the requests in flight finish
(up to ``graceful_timeout`` seconds), then runs the app's shutdown (the batcher's last batch, its
thread). uvicorn then raises the signal again for whatever handler was there before it; we put a handler
there that only notes the signal, so a graceful stop ends with exit status 0 rather than death by signal.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import HfmtlError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` (port 0: a free port; see ``getsockname()``).

    Raises:
        HfmtlError: the address cannot be used (taken, or not an address of this machine).
    """
    if not 0 <= port <= 65535:
        raise HfmtlError(f"--port {port} is not a port number (0-65535; 0 picks a free one)")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise HfmtlError(f"--host {host!r} is not an address of this machine: {err.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise HfmtlError(
            f"cannot listen on {host}:{port}: {err.strerror}; choose another --port (0 picks a free one)"
        ) from None
    sock.set_inheritable(True)
    return sock


def run(
    app, sock: socket.socket, *, log_level: str = "info", access_log: bool = True, graceful_timeout: float = 30.0
) -> int:
    """Serve `app` on `sock` until SIGTERM or SIGINT; return the exit status (0 after a graceful stop).

    Args:
        app: the ASGI app (`hfmtl.serving.app.create_app`).
        sock: a listening socket (`bind`).
        log_level: uvicorn's log level (critical, error, warning, info, debug).
        access_log: log one line per request.
        graceful_timeout: seconds the requests in flight get to finish after the signal.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_timeout,
        lifespan="on",  # a failing start-up is an error, not a server without its batcher
    )
    server = uvicorn.Server(config)
    with _signals_noted() as received:
        server.run(sockets=[sock])
    if not server.started:
        return 1  # uvicorn logged why (the app's start-up failed)
    if received:
        print(f"stopped by {signal.Signals(received[0]).name}", file=sys.stderr)
    return 0


@contextmanager
def _signals_noted() -> Iterator[list[int]]:
    """While inside: SIGINT and SIGTERM only append to the yielded list (uvicorn handles them first)."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in _SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
