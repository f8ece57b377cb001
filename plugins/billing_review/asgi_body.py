"""The request body in the plugin's ASGI middlewares: read whole (with a limit) before deciding, then handed on to
Airflow's app unchanged, as if it had never been read."""

from __future__ import annotations

from typing import Any


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it is larger than `limit` bytes (the rest is never read)."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            return None
    return body


def replaying(body: bytes, receive: Any) -> Any:
    """A `receive` that hands the app the body already read, then whatever the connection says next."""
    replayed = False

    async def replay() -> Any:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
