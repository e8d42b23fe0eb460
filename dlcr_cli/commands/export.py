"""`dlcr export`: a re-id model as an ONNX graph, checked against torch with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import RevisionOpt, parse_size, state
from dlcr_cli.commands.evaluate import Epoch


def export(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="A dlcr train run folder, a model folder (model.json and model.safetensors), or a hub id (owner/name).", metavar="RUN", show_default=False)],
    onnx: Annotated[Path, typer.Option("--onnx", help="The ONNX file to write (replaced only when the new one passes the check).", dir_okay=False, show_default=False)],
    epoch: Annotated[Optional[Epoch], typer.Option(help="Of a run folder: its best evaluated epoch's model (best/), or its last epoch's.  \\[default: best when the run kept one]", show_default=False)] = None,
    image_size: Annotated[Optional[str], typer.Option(help="HEIGHTxWIDTH of the graph's input.  \\[default: the checkpoint's, else 384x192]", show_default=False)] = None,
    revision: RevisionOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (18 or later).")] = 20,
    half: Annotated[bool, typer.Option("--half", help="fp16 weights and compute (float32 input and output), for CUDA deployment; checked with the looser bound.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="An image model's bare embedding: no mirror-image sum, no L2 normalisation.")] = False,
    check_bound: Annotated[Optional[float], typer.Option(help="Largest absolute difference allowed between onnxruntime and torch.  \\[default: 1e-4, with --half 1e-2]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"onnx", "model", "head", "opset", "input", "output", "precision", "mirror_sum_and_l2", "check": {"provider", "batches", "max_abs_diff", "bound"}} on stdout.')] = False,
) -> None:
    """Export a re-id model to ONNX with a dynamic batch axis, and check it with onnxruntime.

    The graph takes normalised images (float32 batch x 3 x H x W: RGB in 0..1 resized to the
    model's size, minus ImageNet's mean, over its std, as dlcr's test transform) and returns
    the test-time feature of `dlcr evaluate`, the embedding of the image plus that of its
    mirror image, L2-normalised (`--raw`: the bare embedding). A video model takes clips
    (batch x T x 3 x H x W, T the run's clip length) and returns the raw clip feature.
    The metadata holds the opset, the input size, the normalisation, the backbone.

    After export, onnxruntime runs random inputs at batch sizes 1 and 3 and the largest
    absolute difference from torch's features is printed; above the bound the command fails
    (exit 65) and writes nothing. Needs the extra: pip install 'dlcr[export]'.

    Examples:

        dlcr export runs/prcc --onnx prcc.onnx

        dlcr --device cuda export runs/ltcc --epoch last --half --onnx ltcc-fp16.onnx --json
    """
    from dlcr_cli.reid.export import export_onnx
    from dlcr_cli.runtime import resolve_device

    size = parse_size(image_size, "--image-size") if image_size else None
    settings = state(ctx).resolve().settings
    device = resolve_device(settings.device)
    result = export_onnx(run, onnx, epoch=(epoch or Epoch.best).value, image_size=size, opset=opset, half=half,
                         raw=raw, bound=check_bound, device=device, revision=revision)
    if as_json:
        import json
        import sys

        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
