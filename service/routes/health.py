"""GET /healthz (the process answers) and GET /readyz (every collection is loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.problems import ProblemRoute
from service.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"], route_class=ProblemRoute)


@router.get("/healthz", response_model=HealthOut, summary="Liveness")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, summary="Readiness: every collection loaded",
            responses={503: {"model": ReadyOut, "description": "collections still loading"}})
def readyz(request: Request) -> JSONResponse:
    ready, states, shards = request.app.state.backend.readiness_of_shards()
    body = ReadyOut(status="ready" if ready else "loading", collections=states, shards=shards)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
