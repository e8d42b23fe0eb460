"""`dlcr evaluate`: a re-id model (or saved features) under the dataset's CC-ReID protocol."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from dlcr_cli.commands.common import RevisionOpt, parse_size, state
from dlcr_cli.commands.train import Precision

DATASET_HELP = ("A dataset root (PRCC, LTCC, VC-Clothes, LaST, DeepChange, CCVID: layout detected), a JSONL file "
                "of records with split query/gallery, or - for records on stdin.")


class Epoch(str, Enum):
    best = "best"
    last = "last"


def evaluate(
    ctx: typer.Context,
    dataset: Annotated[Optional[str], typer.Argument(help=DATASET_HELP, metavar="DATASET", show_default=False)] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="A dlcr train run folder (its model.json and model.safetensors), or a hub id (owner/name, e.g. one `dlcr push` uploaded) fetched into huggingface_hub's cache.", metavar="RUN", show_default=False)] = None,
    revision: RevisionOpt = None,
    features: Annotated[Optional[Path], typer.Option("--features", help="Evaluate a feature file (.npz, or .safetensors from dlcr embed: query_feats, gallery_feats, query_pids, gallery_pids, query_camids, gallery_camids, query_clothes, gallery_clothes) instead of a model.", dir_okay=False, show_default=False)] = None,
    setting: Annotated[Optional[str], typer.Option("--setting", help="Settings to report, comma-separated (standard, cc, sc; PRCC: sc, cc), or all.  \\[default: all]", show_default=False)] = None,
    variant: Annotated[Optional[str], typer.Option("--variant", help="A dataset's alternative protocol: VC-Clothes sc (cameras 2 and 3) or cc (3 and 4), as CAL's vcclothes_sc / vcclothes_cc.", show_default=False)] = None,
    protocol: Annotated[Optional[str], typer.Option("--protocol", help="Records: evaluate with this dataset's protocol (prcc, ltcc, vcclothes, last, deepchange, ccvid, generic) instead of the one their dataset field names.", show_default=False)] = None,
    save_features: Annotated[Optional[Path], typer.Option("--save-features", help="Also write the extracted features, labels and settings to this .npz (evaluate it again with --features).", dir_okay=False, show_default=False)] = None,
    image_size: Annotated[Optional[str], typer.Option(help="HEIGHTxWIDTH the model sees.  \\[default: the checkpoint's, else 384x192]", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass.", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Threads reading images.", show_default=False)] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Add the mirrored image's embedding.  \\[default: flip]", show_default=False)] = None,
    precision: Annotated[Optional[Precision], typer.Option(help="fp32, or fp16 / bf16 autocast.  \\[default: auto: the precision the model was trained and evaluated with]", show_default=False)] = None,
    epoch: Annotated[Optional[Epoch], typer.Option(help="Of a run folder: its best evaluated epoch's model (best/, CAL's reporting protocol), or its last epoch's.  \\[default: best when the run kept one]", show_default=False)] = None,
    rerank: Annotated[Optional[bool], typer.Option("--rerank/--no-rerank", help="k-reciprocal re-ranking of every setting.  \\[default: no-rerank]", show_default=False)] = None,
    k1: Annotated[Optional[int], typer.Option(help="Re-ranking: k-reciprocal neighbours.", show_default=False)] = None,
    k2: Annotated[Optional[int], typer.Option(help="Re-ranking: query expansion neighbours.", show_default=False)] = None,
    lambda_value: Annotated[Optional[float], typer.Option("--lambda", help="Re-ranking: weight of the original distance.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write cmc.png and retrieval-SETTING.png (queries and their top 10: green good, red wrong, grey junk) here.", file_okay=False, show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"SETTING": {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "queries", "skipped"}} on stdout (fractions in 0..1).')] = False,
) -> None:
    """Score a re-id model with the dataset's protocol: rank-1/5/10/20, mAP and mINP of every
    setting it defines (PRCC: sc and cc against camera A; LTCC, VC-Clothes: standard, sc, cc;
    LaST, DeepChange: standard; CCVID: standard, sc and cc over tracklets).

    Features are the embedding of each image plus that of its mirror image, L2-normalised
    (a video model: the mean of each tracklet's clip features, as CAL), compared by cosine.
    A run folder gives its best epoch's model when training kept one (CAL's reporting
    protocol; `--epoch last` for the last), evaluated in the precision it was trained with. Per query, same-pid same-camera images are junk; cc also junks
    same-clothes ones and sc other-clothes ones; queries without a good match are skipped
    and counted. The table goes to stderr, `--json` prints the numbers on stdout. A hub id
    (owner/name) as --checkpoint is fetched into huggingface_hub's cache (`--revision` pins a
    branch, tag or commit; with HF_HUB_OFFLINE=1 the cached snapshot is used).

    Examples:

        dlcr --device cuda evaluate /data/prcc --checkpoint runs/prcc

        dlcr evaluate /data/LTCC_ReID -c runs/ltcc --setting cc --save-features ltcc.npz --plot plots

        dlcr evaluate --features ltcc.npz --rerank --json | jq .cc.rank1

        dlcr evaluate /data/VC-Clothes -c runs/vc --variant cc

        dlcr evaluate /data/prcc -c user/cal-prcc-dlcr --revision v1
    """
    from dlcr_cli.reid.evaluate import Rerank, as_json as results_json, evaluate_settings, print_table, select_settings
    from dlcr_cli.runtime import resolve_device

    settings = state(ctx).resolve(evaluate=dict(
        image_size=parse_size(image_size, "--image-size") if image_size else None, batch_size=batch_size,
        workers=workers, flip=flip, precision=precision, epoch=epoch, rerank=rerank, k1=k1, k2=k2, lambda_value=lambda_value,
    )).settings
    s = settings.evaluate
    wanted = [name.strip() for name in setting.split(",") if name.strip()] if setting else None
    device = resolve_device(settings.device)
    if features is not None:
        if dataset is not None or checkpoint is not None or save_features is not None or variant or protocol or revision:
            from dlcr_cli.errors import UsageError

            raise UsageError("--features evaluates a feature file alone: no DATASET, --checkpoint, --revision, "
                             "--save-features, --variant or --protocol with it")
        from dlcr_cli.reid.features import load_features

        feature_set = load_features(features)
    else:
        feature_set = _extract(dataset, checkpoint, s, device, variant, protocol, revision)
        if save_features is not None:
            _save(feature_set, save_features)
    chosen = select_settings(feature_set, wanted)
    ranked = Rerank(s.k1, s.k2, s.lambda_value) if s.rerank else None
    results = evaluate_settings(feature_set, chosen, device=device, rerank=ranked, show=6 if plot else 0)
    title = f"{feature_set.protocol}: {len(feature_set.query)} query, {len(feature_set.gallery)} gallery" + (
        f", re-ranked (k1 {s.k1}, k2 {s.k2}, lambda {s.lambda_value})" if ranked else "")
    print_table(results, title)
    _skipped_warning(results)
    if plot is not None:
        _plot(feature_set, results, plot)
    if as_json:
        import json
        import sys

        sys.stdout.write(json.dumps(results_json(results)) + "\n")


def _extract(dataset: str | None, checkpoint: str | None, s, device, variant: str | None, protocol: str | None,
             revision: str | None = None):
    from dlcr_cli.errors import UsageError
    from dlcr_cli.reid.evaluate import extract_with_checkpoint

    if dataset is None or checkpoint is None:
        raise UsageError("evaluate needs a DATASET and --checkpoint RUN, or --features FILE")
    return extract_with_checkpoint(dataset, checkpoint, s, device, variant=variant, protocol=protocol,
                                   revision=revision).features


def _save(feature_set, path: Path) -> None:
    from dlcr_cli.console import log
    from dlcr_cli.reid.features import save_features

    save_features(feature_set, path)
    log.info("evaluate: features saved to %s", path)


def _skipped_warning(results) -> None:
    from dlcr_cli.console import log

    for r in results:
        if r.scores.skipped:
            log.warning("evaluate: %s: %d of %d queries have no good match and are skipped", r.setting.name,
                        r.scores.skipped, r.scores.skipped + r.scores.queries)


def _plot(feature_set, results, folder: Path) -> None:
    from dlcr_cli.console import log
    from dlcr_cli.reid.evaluate import write_plots

    written = write_plots(feature_set, results, folder)
    if feature_set.query_paths is None or feature_set.gallery_paths is None:
        log.warning("evaluate: the feature file names no images: no retrieval strips")
    log.info("evaluate: %s", ", ".join(str(p) for p in written) if written else "nothing to plot")
