"""`cmhash` command line. Every flag can also be set by an environment variable (shown in
--help as env var CMHASH_...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from model.config import TrainConfig
from model.data import DataError

app = typer.Typer(help="cmhash: cross-modal hashing (text <-> image) with binary codes.", no_args_is_help=True)


def _opt(help_text: str, env: str, *decls: str, **kw):
    return typer.Option(*decls, help=help_text, envvar=f"CMHASH_{env}", **kw)


def _parse_hp(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--hp expects NAME=NUMBER, got {item!r}") from None
    return out


def _parse_hidden(hidden: str) -> list[int]:
    try:
        return [int(h) for h in hidden.split(",") if h.strip()]
    except ValueError:
        raise typer.BadParameter(f"--hidden expects comma-separated integers, got {hidden!r}") from None


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def train(
    dataset: Annotated[str, _opt("Dataset loader: wikipedia, mirflickr or manifest.", "DATASET")],
    out: Annotated[Path, _opt("Run directory to write (checkpoint, metrics, codes, plots).", "OUT")],
    data: Annotated[Optional[Path], _opt("Dataset path (default: ../shared/data/<dataset>).", "DATA")] = None,
    method: Annotated[str, _opt("bi_ncmh, dcmh, djsrh or cca_itq.", "METHOD")] = "bi_ncmh",
    bits: Annotated[int, _opt("Code length in bits (multiple of 8; 16-128 typical).", "BITS")] = 64,
    seed: Annotated[int, _opt("Seed of split, initialisation and batch order.", "SEED")] = 0,
    epochs: Annotated[int, _opt("Training epochs.", "EPOCHS")] = 60,
    batch_size: Annotated[int, _opt("Mini-batch size.", "BATCH_SIZE")] = 128,
    optimizer: Annotated[str, _opt("adam or sgd.", "OPTIMIZER")] = "adam",
    lr: Annotated[float, _opt("Learning rate of the hash heads.", "LR")] = 1e-3,
    weight_decay: Annotated[float, _opt("L2 weight decay.", "WEIGHT_DECAY")] = 0.0,
    hidden: Annotated[str, _opt("Hidden widths of the hash heads, comma separated ('' = linear).", "HIDDEN")] = "2048",
    dropout: Annotated[float, _opt("Dropout after hidden layers.", "DROPOUT")] = 0.0,
    hp: Annotated[list[str], _opt("Method hyper-parameter NAME=VALUE (repeatable), e.g. alpha=1.", "HP")] = [],
    text_features: Annotated[str, _opt("Wikipedia text features: lda or tfidf.", "TEXT_FEATURES")] = "lda",
    text_encoder: Annotated[str, _opt("Text input: bow (bag of words) or minilm.", "TEXT_ENCODER")] = "bow",
    min_word_count: Annotated[int, _opt("Vocabulary cut-off for raw texts.", "MIN_WORD_COUNT")] = 1,
    image_backbone: Annotated[str, _opt("efficientnet-lite0 or efficientnet-lite2 (pixel inputs).", "IMAGE_BACKBONE")] = "efficientnet-lite0",
    finetune_backbone: Annotated[bool, _opt("Also train the image backbone (slow on CPU).", "FINETUNE_BACKBONE")] = False,
    backbone_lr: Annotated[float, _opt("Learning rate of the backbone when fine-tuned.", "BACKBONE_LR")] = 1e-5,
    query_size: Annotated[Optional[int], _opt("Number of queries (default: dataset protocol).", "QUERY_SIZE")] = None,
    train_size: Annotated[Optional[int], _opt("Training items drawn from retrieval (default: protocol).", "TRAIN_SIZE")] = None,
    validation_fraction: Annotated[float, _opt("Evaluate on this fraction of the training set instead (tuning).", "VALIDATION_FRACTION")] = 0.0,
    cache_dir: Annotated[Optional[Path], _opt("Feature cache directory.", "CACHE_DIR")] = None,
    device: Annotated[str, _opt("auto, cpu or cuda.", "DEVICE")] = "auto",
    threads: Annotated[Optional[int], _opt("Torch CPU threads.", "THREADS")] = None,
    progress: Annotated[bool, _opt("Show progress bars.", "PROGRESS")] = True,
) -> None:
    """Train a cross-modal hashing model and evaluate it (MAP over the whole ranking and MAP@50)."""
    from model.evaluate import summary_line
    from model.run import train_run

    fields = dict(
        dataset=dataset, out=out, data=data, method=method, bits=bits, seed=seed, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        hidden=_parse_hidden(hidden), dropout=dropout, hp=_parse_hp(hp),
        text_features=text_features, text_encoder=text_encoder, min_word_count=min_word_count,
        image_backbone=image_backbone, finetune_backbone=finetune_backbone, backbone_lr=backbone_lr,
        query_size=query_size, train_size=train_size,
        validation_fraction=validation_fraction, device=device, threads=threads,
    )
    if cache_dir is not None:
        fields["cache_dir"] = cache_dir
    try:
        cfg = TrainConfig(**fields)
        metrics = train_run(cfg, progress=progress)
    except ValidationError as exc:
        _fail(str(exc))
    except (DataError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(summary_line(metrics))
    typer.echo(f"run written to {out}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cmhash train`.")],
    progress: Annotated[bool, _opt("Show progress bars.", "PROGRESS")] = True,
) -> None:
    """Recompute a run's codes, metrics.json and P-R plot from its checkpoint and the data."""
    from model.evaluate import summary_line
    from model.run import evaluate_run

    if not (run_dir / "checkpoint.pt").exists():
        _fail(f"{run_dir} is not a run directory (no checkpoint.pt)")
    try:
        metrics = evaluate_run(run_dir, progress=progress)
    except (DataError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(summary_line(metrics))
    typer.echo(json.dumps({k: {m: metrics[k][m] for m in ("map", "map@50")} for k in ("i2t", "t2i")}))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `cmhash train`.")],
    out: Annotated[Path, _opt("Model directory to write (image.onnx, text.onnx, model.json).", "OUT")],
    opset: Annotated[Optional[int], _opt("ONNX opset to target (default: the exporter's).", "OPSET")] = None,
) -> None:
    """Export a run's image and text encoders to ONNX for serving with ONNX Runtime; the graphs are
    checked against PyTorch before the model directory is written."""
    from model.export import ExportError, export_run

    if not (run_dir / "checkpoint.pt").is_file():
        _fail(f"{run_dir} is not a run directory (no checkpoint.pt)")
    try:
        info = export_run(run_dir, out, opset=opset)
    except (ExportError, ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    image, text = info.image, info.text
    image_desc = (f"pixels 3x{image.preprocess['size']}x{image.preprocess['size']} through {image.backbone}"
                  if image.kind == "pixels" and image.preprocess else f"{image.dim}-d feature vectors")
    text_desc = {"bow": f"bag of words over {text.dim} words", "minilm": "MiniLM tokens",
                 "features": f"{text.dim}-d feature vectors (no vocabulary: raw texts cannot be encoded)"}[text.kind]
    typer.echo(f"exported {info.method} {info.bits} bits from {run_dir} (ONNX opset {info.opset})")
    typer.echo(f"image input: {image_desc}")
    typer.echo(f"text input: {text_desc}")
    typer.echo(f"checksum: {info.checksum}")
    typer.echo(f"model written to {out}")



@app.command()
def sources(
    dataset: Annotated[str, _opt("Dataset loader: mirflickr or manifest (image files needed).", "DATASET")],
    out: Annotated[Path, _opt("Folder to write images.jsonl and texts.jsonl into.", "OUT")],
    data: Annotated[Optional[Path], _opt("Dataset path (default: ../shared/data/<dataset>).", "DATA")] = None,
) -> None:
    """Write a dataset's images and texts as `cmhash index` inputs (JSONL with ids, labels, texts)."""
    from index.sources import write_dataset_sources
    from model.data import load_dataset

    try:
        path = TrainConfig(dataset=dataset, data=data, out=out).data_path()  # type: ignore[arg-type]
        images, texts = write_dataset_sources(load_dataset(dataset, path), out)  # type: ignore[arg-type]
    except ValidationError as exc:
        _fail(str(exc))
    except (DataError, ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {images}" + (f" and {texts}" if texts else ""))


@app.command("index")
def index_gallery(
    model: Annotated[Path, _opt("Exported model directory (written by `cmhash export`).", "MODEL")],
    out: Annotated[Path, _opt("Gallery directory to create or update.", "OUT")],
    images: Annotated[Optional[Path], _opt("Image folder, or a JSONL manifest with id and image per line.", "IMAGES")] = None,
    texts: Annotated[Optional[Path], _opt("Text file: one text per line, or .jsonl with id and text.", "TEXTS")] = None,
    remove: Annotated[list[str], _opt("Remove this id from the gallery (repeatable).", "REMOVE")] = [],
    prune: Annotated[bool, _opt("Remove gallery items that are no longer in the input.", "PRUNE")] = False,
    rebuild: Annotated[bool, _opt("Build a fresh gallery and swap it in when complete.", "REBUILD")] = False,
    batch_size: Annotated[int, _opt("Items per encoder call.", "BATCH_SIZE", min=1)] = 64,
    workers: Annotated[int, _opt("Image decoding threads running ahead of the encoder.", "WORKERS", min=0)] = 2,
    device: Annotated[str, _opt("Encoder device: auto, cpu or cuda.", "DEVICE")] = "auto",
    threads: Annotated[Optional[int], _opt("ONNX Runtime intra-op threads (default: all cores).", "THREADS")] = None,
    save_every: Annotated[float, _opt("Seconds between intermediate saves (resume point).", "SAVE_EVERY")] = 60.0,
    milvus_uri: Annotated[Optional[str], _opt("Keep a new gallery's codes in Milvus: server URI or Milvus Lite file.", "MILVUS_URI")] = None,
    milvus_collection: Annotated[str, _opt("Milvus collection of a new gallery.", "MILVUS_COLLECTION")] = "cmhash_gallery",
    milvus_token: Annotated[Optional[str], _opt("Milvus server credentials (user:password or API key).", "MILVUS_TOKEN")] = None,
    progress: Annotated[bool, _opt("Show progress bars.", "PROGRESS")] = True,
) -> None:
    """Encode an image folder / manifest or a text file into a gallery; re-runs add only new items."""
    from index.commands import MilvusTarget, build_gallery

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device must be auto, cpu or cuda, got {device!r}")
    milvus = None if milvus_uri is None else MilvusTarget(milvus_uri, milvus_collection, milvus_token)
    try:
        report = build_gallery(model, out, images=images, texts=texts, remove=remove, prune=prune,
                               rebuild=rebuild, batch_size=batch_size, workers=workers, device=device,  # type: ignore[arg-type]
                               threads=threads, save_every_s=save_every, milvus=milvus, progress=progress)
    except (DataError, ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    typer.echo(report.summary())
    typer.echo(f"gallery written to {out}")


@app.command()
def search(
    model: Annotated[Path, _opt("Exported model directory.", "MODEL")],
    gallery: Annotated[Path, _opt("Gallery directory (written by `cmhash index`).", "GALLERY")],
    text: Annotated[Optional[str], _opt("Text query.", "TEXT")] = None,
    image: Annotated[Optional[Path], _opt("Image file query.", "IMAGE")] = None,
    k: Annotated[int, _opt("Number of results.", "K", "--k", "-k", min=1)] = 10,
    radius: Annotated[Optional[int], _opt("Hash lookup: every item within this Hamming distance (up to k shown).", "RADIUS", min=0)] = None,
    device: Annotated[str, _opt("Encoder device: auto, cpu or cuda.", "DEVICE")] = "auto",
    threads: Annotated[Optional[int], _opt("ONNX Runtime intra-op threads.", "THREADS")] = None,
    as_json: Annotated[bool, _opt("Print the hits as JSON.", "JSON", "--json")] = False,
    milvus_token: Annotated[Optional[str], _opt("Milvus server credentials, for a Milvus gallery.", "MILVUS_TOKEN")] = None,
) -> None:
    """Print the gallery items nearest to a text or image query (Hamming distance, ties by insertion order)."""
    from index.commands import search_gallery

    if device not in ("auto", "cpu", "cuda"):
        _fail(f"--device must be auto, cpu or cuda, got {device!r}")
    try:
        hits = search_gallery(model, gallery, text=text, image=image, k=k, radius=radius,
                              device=device, threads=threads, milvus_token=milvus_token)  # type: ignore[arg-type]
    except (DataError, ValueError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps([vars(h) for h in hits], ensure_ascii=False, indent=1))
        return
    if not hits:
        typer.echo("no results")
    for h in hits:
        shown = h.metadata.get("path") or h.metadata.get("text") or ""
        labels = h.metadata.get("labels")
        typer.echo(f"{h.rank:4d}  {h.distance:4d}  {h.id}  {shown}" + (f"  {labels}" if labels else ""))



@app.command()
def serve(
    model: Annotated[Path, _opt("Exported model directory (written by `cmhash export`).", "MODEL_DIR", "--model")],
    image_gallery: Annotated[Optional[Path], _opt("Image gallery directory (created empty when missing).", "IMAGE_GALLERY")] = None,
    text_gallery: Annotated[Optional[Path], _opt("Text gallery directory (created empty when missing).", "TEXT_GALLERY")] = None,
    host: Annotated[str, _opt("Interface to bind (0.0.0.0 for every interface).", "HOST")] = "127.0.0.1",
    port: Annotated[int, _opt("TCP port.", "PORT", min=0, max=65535)] = 8000,
    workers: Annotated[int, _opt("Worker processes; more than 1 only without galleries (each would hold its own copy).", "WORKERS", min=1)] = 1,
    device: Annotated[str, _opt("Encoder and k-NN device: auto, cpu or cuda.", "DEVICE")] = "auto",
    threads: Annotated[Optional[int], _opt("ONNX Runtime intra-op threads (default: all cores).", "THREADS", min=1)] = None,
    api_key: Annotated[Optional[str], _opt("Require this key (X-API-Key or Bearer) on gallery writes.", "API_KEY")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) and the search page; other limits are read
    from CMHASH_* variables (see service/settings.py)."""
    import os

    import uvicorn

    from service.settings import Settings

    values = {"MODEL_DIR": model, "IMAGE_GALLERY": image_gallery, "TEXT_GALLERY": text_gallery, "HOST": host,
              "PORT": port, "WORKERS": workers, "DEVICE": device, "THREADS": threads, "API_KEY": api_key}
    for name, value in values.items():
        if value is not None:
            os.environ[f"CMHASH_{name}"] = str(value)  # the app factory (in every worker) reads them
    try:
        Settings()  # type: ignore[call-arg]
    except ValidationError as exc:
        _fail(str(exc))
    if workers > 1 and (image_gallery or text_gallery):
        _fail("--workers > 1 would give each worker its own copy of the galleries (writes would diverge); "
              "use 1 worker: searches are batched and run in threads")
    typer.echo(f"cmhash serving on http://{host}:{port} (API docs at http://{host}:{port}/docs)")
    uvicorn.run("service.app:create_app", factory=True, host=host, port=port, workers=workers)

if __name__ == "__main__":
    app()
