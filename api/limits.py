"""Request body size limit: a pure ASGI middleware, so it also covers bodies without Content-Length.

A declared ``Content-Length`` over the limit is refused before the body is read; a streamed body is
counted as it arrives and refused when it crosses the limit (FastAPI re-raises ``HTTPException`` from the
body read, so the app's handlers turn it into the 413).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from starlette.responses import JSONResponse

TOO_LARGE = "request body too large"


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"{TOO_LARGE}: limit {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        response = JSONResponse({"detail": f"{TOO_LARGE}: limit {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)
