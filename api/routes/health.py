"""GET /healthz: liveness (the Docker HEALTHCHECK calls it)."""

from __future__ import annotations

from fastapi import APIRouter

import memplan

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": getattr(memplan, "__version__", "unknown")}
