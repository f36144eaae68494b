"""GET /healthz (the process answers) and GET /readyz (every collection is loaded, kernels warm)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.problems import ProblemRoute
from service.schemas import HealthOut, ReadyOut, WarmupOut

router = APIRouter(tags=["health"], route_class=ProblemRoute)


@router.get("/healthz", response_model=HealthOut, summary="Liveness")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=ReadyOut, summary="Readiness: every collection loaded, kernels compiled",
            responses={503: {"model": ReadyOut, "description": "collections still loading or kernels compiling"}})
def readyz(request: Request) -> JSONResponse:
    ready, states, shards = request.app.state.backend.readiness_of_shards()
    # the warm-up (service/warmup.py, issue 16): absent when the app runs without its lifespan
    warmup = getattr(request.app.state, "warmup", None)
    if warmup is not None:
        ready = warmup.finished() and ready
    body = ReadyOut(status="ready" if ready else "loading", collections=states, shards=shards,
                    warmup=None if warmup is None else WarmupOut(**warmup.status()))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)
