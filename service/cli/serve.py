"""`cmhash serve`: the HTTP API and the search page."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from model.runtime.choices import Device
from model.runtime.model_dir import INFO_FILE
from service.cli.common import env_option, fail, user_errors

if TYPE_CHECKING:
    from service.settings import Settings

NAME = "serve"


def port_in_use(host: str, port: int) -> bool:
    """Whether `host:port` cannot be bound right now (another server holds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's limits on slow or many clients, from `settings`: the request-head timeout
    (`service.middleware.HeadTimeoutProtocol`, which reads CMHASH_HEADER_TIMEOUT_S in each
    worker), the keep-alive timeout, the connection limit (beyond it new requests get 503) and
    the h11 head size limit. The body timeout is the app's own (`service.middleware.BodyTimeout`)."""
    from service.middleware import HeadTimeoutProtocol

    return {
        "http": HeadTimeoutProtocol or "auto",
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


def run(
    model: Annotated[
        Path, env_option("Exported model directory (written by `cmhash export`).", "MODEL_DIR", "--model")
    ],
    image_gallery: Annotated[
        Path | None, env_option("Image gallery directory (created empty when missing).", "IMAGE_GALLERY")
    ] = None,
    text_gallery: Annotated[
        Path | None, env_option("Text gallery directory (created empty when missing).", "TEXT_GALLERY")
    ] = None,
    host: Annotated[str, env_option("Interface to bind (0.0.0.0 for every interface).", "HOST")] = "127.0.0.1",
    port: Annotated[int, env_option("TCP port.", "PORT", min=0, max=65535)] = 8000,
    server_workers: Annotated[
        int,
        env_option(
            "Server processes; more than 1 only without galleries (each would hold its own copy).",
            "SERVER_WORKERS",
            "--workers",
            min=1,
        ),
    ] = 1,
    device: Annotated[
        Device, env_option("Where the work runs: auto (CUDA when present), cpu or cuda.", "DEVICE")
    ] = "auto",
    encoder_threads: Annotated[
        int | None, env_option("ONNX Runtime intra-op threads (default: all cores).", "ENCODER_THREADS", min=1)
    ] = None,
    api_key: Annotated[
        str | None, env_option("Require this key (X-API-Key or Bearer) on gallery writes.", "API_KEY")
    ] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) and the search page. Every other setting
    (limits, timeouts, batching) is a CMHASH_* variable: see the README's settings table."""
    import uvicorn

    from service.settings import Settings

    values = {
        "MODEL_DIR": model,
        "IMAGE_GALLERY": image_gallery,
        "TEXT_GALLERY": text_gallery,
        "HOST": host,
        "PORT": port,
        "SERVER_WORKERS": server_workers,
        "DEVICE": device,
        "ENCODER_THREADS": encoder_threads,
        "API_KEY": api_key,
    }
    for name, value in values.items():
        if value is not None:
            os.environ[f"CMHASH_{name}"] = str(value)  # the app factory (in every worker) reads them
    with user_errors():
        settings = Settings()
    os.environ["CMHASH_HEADER_TIMEOUT_S"] = str(settings.header_timeout_s)  # for HeadTimeoutProtocol in each worker
    os.environ["CMHASH_MAX_HEADER_BYTES"] = str(settings.max_header_bytes)  # likewise
    if not (model / INFO_FILE).is_file():
        fail(
            f"no exported model in {model} ({INFO_FILE} missing): run `cmhash export RUN_DIR --out {model}` "
            "first (in Docker, the trainer writes it: docker compose up runs it before the API)"
        )
    if server_workers > 1 and (image_gallery or text_gallery):
        fail(
            "--workers > 1 would give each worker its own copy of the galleries (writes would diverge); "
            "use 1 worker: searches are batched and run in threads"
        )
    if port and port_in_use(host, port):
        fail(
            f"{host}:{port} is already in use (another cmhash serve?); choose another port with --port "
            "(make demo PORT=8080)"
        )
    typer.echo(f"cmhash serving on http://{host}:{port} (API docs at http://{host}:{port}/docs)")
    uvicorn.run(
        "service.app:create_app", factory=True, host=host, port=port, workers=server_workers, **server_options(settings)
    )
