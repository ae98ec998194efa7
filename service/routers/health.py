"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import get_state
from service.schemas import Health
from service.state import ServiceState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive (answers even while the model loads)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "still loading, or loading failed"}})
def readyz(state: ServiceState = Depends(get_state)) -> Response:
    """200 once the model and the configured galleries are loaded; 503 before, or after a failure."""
    if state.ready:
        loaded = ", ".join(f"{k} gallery ({len(g)})" for k, g in state.galleries.items())
        return JSONResponse(Health(status="ok", detail=f"model{', ' + loaded if loaded else ''}").model_dump())
    status = "failed" if state.error else "loading"
    body = Health(status=status, detail=state.error).model_dump()
    return JSONResponse({**body, "error": {"code": "not_ready", "message": state.error or "loading"}}, status_code=503)


@router.get("/metrics", response_class=Response)
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus text exposition: requests and latency per route, encode / search time, gallery sizes."""
    for kind, journaled in state.galleries.items():
        state.metrics.gallery_items.labels(kind).set(len(journaled))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
