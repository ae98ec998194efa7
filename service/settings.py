"""Service settings, read from CMHASH_* environment variables (or passed to `create_app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STATIC_DIR = Path(__file__).parent / "static"


class Settings(BaseSettings):
    """Everything `create_app` needs; each field is also the env var CMHASH_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="CMHASH_", extra="ignore")

    model_dir: Path  # exported model directory (`cmhash export`)
    image_gallery: Path | None = None  # image gallery directory (created empty if missing); None: no image search
    text_gallery: Path | None = None  # text gallery directory (created empty if missing); None: no text search
    upload_dir: Path | None = None  # where uploaded gallery images are stored (default: <image_gallery>/uploads)
    host: str = "127.0.0.1"  # interface `cmhash serve` binds
    port: int = Field(8000, ge=0, le=65535)  # TCP port `cmhash serve` binds
    server_workers: int = Field(1, ge=1)  # uvicorn worker processes (each loads the model; galleries need 1 writer)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where the encoder and the FAISS k-NN run
    encoder_threads: int | None = Field(None, ge=1)  # ONNX Runtime intra-op threads (None: its default)
    spinning: bool = False  # let idle ONNX Runtime threads busy-wait between runs (burns the cores the server shares)
    api_key: str | None = None  # required on writes (X-API-Key or Bearer) when set; None or "": open
    milvus_token: str | None = None  # credentials of the Milvus server behind a Milvus-backed gallery
    protect_reads: bool = False  # also require the API key on searches, encoding and gallery reads
    max_upload_bytes: int = Field(10 * 2**20, ge=1)  # largest request body (an upload, a JSON body)
    max_text_chars: int = Field(2000, ge=1)  # longest query or gallery text
    max_image_pixels: int = Field(40_000_000, ge=1)  # largest width x height of an image (decompression bombs)
    max_image_aspect: float = Field(20.0, ge=1)  # largest longer / shorter side of an image (thin strips resize huge)
    max_decoded_pixels: int = Field(16_000_000, ge=1)  # largest width x height decoded (a JPEG after 1/2..1/8 scaling)
    max_concurrent_decodes: int = Field(2, ge=1)  # image uploads decoded at once (each holds a decoded image in memory)
    max_k: int = Field(1000, ge=1)  # largest page size k
    max_offset: int = Field(100_000, ge=0)  # largest pagination offset
    max_rerank: int = Field(1000, ge=1)  # most Hamming candidates a search may re-rank by h . b (rerank: R)
    max_items: int = Field(256, ge=1)  # most items per gallery add request
    max_metadata_bytes: int = Field(16 * 2**10, ge=2)  # largest stored metadata of one item, as compact UTF-8 JSON
    max_metadata_depth: int = Field(16, ge=1)  # deepest nesting of objects/arrays in one item's metadata ({} is 1)
    batch_window_ms: float = Field(0.0, ge=0)  # how long a search reaching an idle batcher waits for others (0: none)
    max_batch: int = Field(32, ge=1)  # most queries in one encoder call / store search
    compact_every: int = Field(1000, ge=1)  # journaled gallery changes between full saves
    static_dir: Path | None = STATIC_DIR  # the search page (index.html at /, files at /static); None: no page
    # Browser safety and slow clients (list settings are comma-separated in the environment)
    allowed_hosts: Annotated[list[str], NoDecode] = ["127.0.0.1", "localhost", "[::1]"]  # Host names served ("*": any)
    allowed_origins: Annotated[list[str], NoDecode] = []  # other origins whose pages may send writes ("*": any)
    anonymous_write_clients: Annotated[list[str], NoDecode] = ["127.0.0.0/8", "::1"]  # may write if no api_key
    header_timeout_s: float = Field(10.0, gt=0)  # seconds to send the request head before the connection closes
    body_timeout_s: float = Field(60.0, gt=0)  # seconds to send the whole body once the head is in (then 408)
    keep_alive_s: int = Field(5, ge=1)  # idle keep-alive connections close after this (timeout_keep_alive)
    max_connections: int = Field(200, ge=1)  # open connections beyond which uvicorn answers 503 (limit_concurrency)
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # largest request head buffered (h11_max_incomplete_event_size)

    @field_validator(
        "image_gallery",
        "text_gallery",
        "upload_dir",
        "encoder_threads",
        "api_key",
        "milvus_token",
        "static_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        """An empty variable (e.g. `CMHASH_API_KEY=` in a compose file) means unset."""
        return None if value == "" else value

    @field_validator("allowed_hosts", "allowed_origins", "anonymous_write_clients", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """A list setting from the environment: comma-separated ("" is an empty list)."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
