"""`dlcr embed`: a re-id model's features of any records, image folder or dataset, to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import InputArg, RevisionOpt, parse_size, state
from dlcr_cli.commands.evaluate import Epoch
from dlcr_cli.commands.train import Precision


def embed(
    ctx: typer.Context,
    source: InputArg,
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="A dlcr train run folder, a model folder (model.json, model.safetensors) or a hub id (owner/name): what dlcr evaluate -c takes.", metavar="RUN", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The feature file: .npz (what evaluate --features reads) or .safetensors, by its suffix. Parts of an unfinished run are kept in FEATS.parts/ beside it.", metavar="FEATS", dir_okay=False, show_default=False)] = None,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="Print each input record on stdout with its feature vector added as the field embedding (a list of floats).")] = False,
    image_size: Annotated[Optional[str], typer.Option(help="HEIGHTxWIDTH the model sees.  \\[default: the checkpoint's, else 384x192]", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass.", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads reading images.", show_default=False)] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Add the mirrored image's embedding (image models).  \\[default: flip]", show_default=False)] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="fp32, or fp16 / bf16 autocast.  \\[default: auto: the precision the model was trained and evaluated with]", show_default=False)] = None,
    epoch: Annotated[Optional[Epoch], typer.Option(help="Of a run folder: its best evaluated epoch's model (best/), or its last epoch's.  \\[default: best when the run kept one]", show_default=False)] = None,
    variant: Annotated[Optional[str], typer.Option("--variant", help="Query and gallery of a dataset's alternative protocol: VC-Clothes sc or cc (as evaluate).", show_default=False)] = None,
    protocol: Annotated[Optional[str], typer.Option("--protocol", help="Records with split query/gallery: the protocol of the query and gallery arrays (as evaluate).", show_default=False)] = None,
    revision: RevisionOpt = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Items per part written to FEATS.parts/ (what an interrupted run keeps).", min=1)] = 4096,
) -> None:
    """Write a re-id model's features of every record of INPUT (a dataset, a folder of images,
    JSONL, -) to a .npz or .safetensors file, resumably; --jsonl emits them as records.

    Features are those of dlcr evaluate: the image's embedding plus its mirror's,
    L2-normalised (a video model: frames as one-frame clips, and the query and gallery
    tracklets as evaluate averages their clips), batched on the device while threads read
    the next images.

    The file holds feats (N x D float32, in input order), paths, and pids, camids, clothes
    and splits when the records have them (-1 or "" where one has not). Records with query
    and gallery splits (a dataset) also get exactly what `dlcr evaluate --features` reads:
    the query_/gallery_ features and labels, the paths and the protocol's settings, so it
    gives the metrics of `dlcr evaluate -c RUN`. A .safetensors file keeps the numbers as
    tensors and the strings as JSON in its metadata.

    Resumable: items go in parts of --chunk-size, each written to FEATS.parts/ when done; a
    rerun reuses them when the model's weights, the settings and the inputs (the images in
    order and their contents) are those of the parts, and otherwise says what changed and
    starts over (--batch-size and --workers change nothing). The file is written
    atomically, then the parts removed.

    Examples:

        dlcr --device cuda embed /data/LTCC_ReID -c runs/ltcc --out ltcc.npz

        dlcr evaluate --features ltcc.npz --json

        dlcr embed photos/ -c runs/ltcc --out photos.safetensors

        dlcr embed records.jsonl -c runs/ltcc --jsonl | jq -c '{image, pid, embedding}'
    """
    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.embed import embed as run_embed
    from dlcr_cli.runtime import resolve_device

    if out is None and not as_jsonl:
        raise UsageError("embed writes --out FEATS (.npz or .safetensors), or records with --jsonl, or both")
    settings = state(ctx).resolve(evaluate=dict(
        image_size=parse_size(image_size, "--image-size") if image_size else None, batch_size=batch_size,
        workers=workers, flip=flip, precision=precision, epoch=epoch,
    )).settings
    device = resolve_device(settings.device)
    done = run_embed(source, checkpoint, settings.evaluate, device, out=out, chunk=chunk_size, variant=variant,
                     protocol=protocol, revision=revision)
    if as_jsonl:
        from dlcr_cli.records import write_record

        for record, vector in zip(done.records, done.feats):
            write_record(record.model_copy(update={"embedding": vector.tolist()}))
