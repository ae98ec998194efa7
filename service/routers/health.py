"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import get_state
from service.queries import hide_paths
from service.schemas import Health
from service.state import ServiceState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive (answers even while the model loads)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "still loading, or loading failed"}})
def readyz(state: ServiceState = Depends(get_state)) -> Response:
    """200 once the model and the configured galleries are loaded; 503 before, or after a failure.

    A configured gallery that could not be opened (damaged files) is listed under "degraded"
    (kind -> reason) with status "degraded": /readyz stays 200 while the model and at least one
    configured gallery serve, since readiness gates all traffic and a 503 would take the healthy
    gallery out of service too (alert on cmhash_gallery_degraded instead); it is 503 ("failed")
    when every configured gallery is degraded."""
    if state.ready:
        loaded = ", ".join(f"{k} gallery ({len(g)})" for k, g in state.galleries.items())
        # --- issue 10: degraded galleries (owner of this block: service/state.py's gallery_status) ---
        degraded = {k: hide_paths(v.removeprefix("degraded: "))  # no server paths (the log has them)
                    for k, v in state.gallery_status().items() if v.startswith("degraded")}
        if degraded:
            detail = "; ".join(f"{k} gallery degraded: {v}" for k, v in degraded.items())
            if not state.galleries:
                return JSONResponse({"status": "failed", "detail": detail, "degraded": degraded, "error": {
                    "code": "not_ready", "message": detail}}, status_code=503)
            return JSONResponse({"status": "degraded", "detail": f"model, {loaded}; {detail}", "degraded": degraded})
        # --- end issue 10 ---
        return JSONResponse(Health(status="ok", detail=f"model{', ' + loaded if loaded else ''}").model_dump())
    status = "failed" if state.error else "loading"
    error = hide_paths(state.error) if state.error else None  # the server log has the full error
    body = Health(status=status, detail=error).model_dump()
    return JSONResponse({**body, "error": {"code": "not_ready", "message": error or "loading"}}, status_code=503)


@router.get("/metrics", response_class=Response)
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus text exposition: requests and latency per route, encode / search time, gallery sizes."""
    for kind, journaled in state.galleries.items():
        state.metrics.gallery_items.labels(kind).set(len(journaled))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
