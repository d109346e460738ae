"""A cap on request bodies: a larger body is answered 413 before it is parsed or held in memory whole.

Neither uvicorn nor Starlette caps a request body, so this small ASGI middleware does: a body that
declares a larger ``Content-Length`` is refused before a byte of it is read; a body sent without one
(chunked) is counted as it arrives and refused as soon as it passes the cap.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

Scope = dict[str, Any]


class BodyTooLarge(HTTPException):
    """A request body over the cap (answered 413 by the app's HTTP error handler)."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=too_large_message(limit))


def too_large_message(limit: int) -> str:
    """The one-line 413 message."""
    return (
        f"the request body is larger than {limit} bytes (the server's --max-body-bytes); send fewer inputs per request"
    )


class BodySizeLimit:
    """ASGI middleware: HTTP request bodies of more than `max_body_bytes` get a 413.

    Args:
        app: the ASGI app it wraps.
        max_body_bytes: the largest body accepted.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_413(send, self.max_body_bytes)
            return
        received = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)  # raised inside the route: its handler answers
            return message

        await self.app(scope, counting_receive, send)


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"error": too_large_message(limit)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # the unread body would otherwise be parsed as the next request on this connection
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
