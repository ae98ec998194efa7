"""`cmhash search`: the gallery items nearest to one text or image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from index.search import Rerank
from model.runtime.choices import Device
from model.runtime.errors import UserError
from service.cli.common import env_option, flag_option, user_errors

NAME = "search"


def parse_filter(items: list[str] | None) -> dict[str, str | int | float | bool] | None:
    """`--filter KEY=VALUE` options as a metadata filter: VALUE is a number or true / false when
    it reads as one in JSON, a JSON string when quoted ("2020" stays text), else the text itself."""
    if not items:
        return None
    out: dict[str, str | int | float | bool] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--filter takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if not isinstance(value, str | int | float | bool) or value is None:
            value = raw
        out[key] = value
    return out


def parse_rerank(text: str | None) -> Rerank:
    """`--rerank R|all` as index.search's rerank: None, a positive int, or "all"."""
    if text is None:
        return None
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"--rerank takes a positive number of candidates or 'all', got {text!r}")
    return value


def run(
    model: Annotated[Path, env_option("Exported model directory.", "MODEL_DIR", "--model")],
    gallery: Annotated[Path, flag_option("Gallery directory (written by `cmhash index`).")],
    text: Annotated[str | None, flag_option("Text query.")] = None,
    image: Annotated[Path | None, flag_option("Image file query.")] = None,
    k: Annotated[int, flag_option("Number of results.", "--k", "-k", min=1)] = 10,
    radius: Annotated[
        int | None, flag_option("Hash lookup: every item within this Hamming distance (up to k shown).", min=0)
    ] = None,
    device: Annotated[
        Device, env_option("Where the work runs: auto (CUDA when present), cpu or cuda.", "DEVICE")
    ] = "auto",
    encoder_threads: Annotated[
        int | None, env_option("ONNX Runtime intra-op threads.", "ENCODER_THREADS", min=1)
    ] = None,
    as_json: Annotated[bool, flag_option("Print the hits as JSON.", "--json")] = False,
    milvus_token: Annotated[
        str | None, env_option("Milvus server credentials, for a Milvus gallery.", "MILVUS_TOKEN")
    ] = None,
    filter: Annotated[
        list[str] | None,
        flag_option("Only items whose metadata KEY equals VALUE or lists it: KEY=VALUE (repeatable: all must match)."),
    ] = None,
    rerank: Annotated[
        str | None,
        flag_option(
            "Re-rank by the query's continuous h . b: R (the Hamming top R) or all (every item); default: Hamming order.",
            metavar="R|all",
        ),
    ] = None,
) -> None:
    """Print the gallery items nearest to a text or image query (Hamming distance, ties by insertion order)."""
    from index.commands import search_gallery

    with user_errors():
        page = search_gallery(
            model,
            gallery,
            text=text,
            image=image,
            k=k,
            radius=radius,
            device=device,
            threads=encoder_threads,
            milvus_token=milvus_token,
            filter=parse_filter(filter),
            rerank=parse_rerank(rerank),
        )
    if page.unknown_words:
        typer.secho(
            f"warning: words the model does not know (not used): {', '.join(page.unknown_words)}",
            fg=typer.colors.YELLOW,
            err=True,
        )
    if as_json:
        typer.echo(json.dumps([h.model_dump() for h in page.hits], ensure_ascii=False, indent=1))
        return
    if not page.hits:
        if radius is not None and page.nearest is not None:
            typer.echo(f"no results within radius {radius}: the nearest item is at distance {page.nearest}")
        elif filter:
            typer.echo("no results: no item matches the filter")
        else:
            typer.echo("no results: the gallery is empty")
        return
    if radius is not None and page.found > len(page.hits):
        typer.echo(f"{page.found} items within radius {radius}; the first {len(page.hits)} shown")
    scored = rerank is not None
    typer.echo(f"{'rank':>4}  {'dist':>4}  " + (f"{'score':>7}  " if scored else "") + "id  item")
    for h in page.hits:
        shown = h.metadata.get("path") or h.metadata.get("text") or ""
        labels = h.metadata.get("labels")
        score = (f"{h.score:7.4f}  " if h.score is not None else f"{'-':>7}  ") if scored else ""
        typer.echo(f"{h.rank:4d}  {h.distance:4d}  {score}{h.id}  {shown}" + (f"  {labels}" if labels else ""))
