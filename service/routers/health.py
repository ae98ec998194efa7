"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import get_state
from service.queries import hide_paths
from service.schemas import ErrorDetail, Health, Readiness
from service.state import ServiceState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive (answers even while the model loads)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "still loading, loading failed, or no gallery serves"}},
)
def readyz(state: ServiceState = Depends(get_state)) -> Response:
    """200 once the model and the configured galleries are loaded; 503 before, or after a failure.

    A configured gallery that could not be opened (damaged files) is listed under "degraded"
    (kind -> reason) with status "degraded": /readyz stays 200 while the model and at least one
    configured gallery serve, since readiness gates all traffic and a 503 would take the healthy
    gallery out of service too (alert on cmhash_gallery_degraded instead); it is 503 ("failed")
    when every configured gallery is degraded. Messages carry no server paths (the log has them)."""
    if not state.ready:
        status = "failed" if state.error else "loading"
        message = hide_paths(state.error) if state.error else "the model and galleries are still loading"
        body = Readiness(status=status, detail=message, error=ErrorDetail(code="not_ready", message=message))
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    galleries = {kind: len(g) for kind, g in state.galleries.items()}
    degraded = {
        kind: hide_paths(reason.removeprefix("degraded: "))
        for kind, reason in state.gallery_status().items()
        if reason.startswith("degraded")
    }
    loaded = ", ".join(f"{kind} gallery ({n})" for kind, n in galleries.items())
    detail = f"model{', ' + loaded if loaded else ''}"
    device = state.require_encoder().device
    if degraded:
        broken = "; ".join(f"{kind} gallery degraded: {reason}" for kind, reason in degraded.items())
        if not galleries:
            body = Readiness(
                status="failed",
                detail=broken,
                encoder_device=device,
                degraded=degraded,
                error=ErrorDetail(code="not_ready", message=broken),
            )
            return JSONResponse(body.model_dump(mode="json"), status_code=503)
        return JSONResponse(
            Readiness(
                status="degraded",
                detail=f"{detail}; {broken}",
                encoder_device=device,
                galleries=galleries,
                degraded=degraded,
            ).model_dump(mode="json")
        )
    return JSONResponse(
        Readiness(status="ok", detail=detail, encoder_device=device, galleries=galleries).model_dump(mode="json")
    )


@router.get("/metrics", response_class=Response)
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus text exposition: requests and latency per route, encode / search time, gallery sizes."""
    for kind, journaled in state.galleries.items():
        state.metrics.gallery_items.labels(kind).set(len(journaled))
    if state.ready and state.encoder is not None:
        state.metrics.encoder_device.labels(state.encoder.device).set(1)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
