"""Runs on the Hugging Face Hub: a checkpoint named by hub id (`owner/name`), fetched through
huggingface_hub into its cache, and `dlcr push`: a run's model, its records and a generated
model card uploaded with huggingface_hub's upload API.

huggingface_hub is imported when a hub id is resolved or a run pushed, never at import: the
CLI's start stays light. Its environment holds as it does for every other hub model: the
cache is HF_HUB_CACHE (or HF_HOME/hub), HF_HUB_OFFLINE=1 serves snapshots from the cache and
downloads nothing, HF_TOKEN (or `hf auth login`) authenticates.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlcr_cli.errors import InputMissing, MalformedInput, Unavailable, UsageError

MODEL_FILES = ("model.safetensors", "model.json")
RUN_FILES = ("settings.json", "metrics.jsonl")
CARD = "README.md"
DOWNLOADED = [*MODEL_FILES, *RUN_FILES, "best/*", CARD]
"""What a checkpoint's snapshot fetches: a pushed model, or a whole run folder with its best/."""
TAGS = ("person-reid", "clothes-changing", "dlcr")
LOGIN = "log in with `hf auth login` (formerly `huggingface-cli login`) or set HF_TOKEN to a token with write access"


# --- checkpoints by hub id -------------------------------------------------------------------


def is_hub_id(spec: str) -> bool:
    """`owner/name` as huggingface_hub validates a repo id; a path that starts like one
    (/, ./, ../, ~) or has more parts never is."""
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")) or "\\" in spec:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def resolve_checkpoint(spec: str | Path, revision: str | None = None) -> Path:
    """The local folder of a checkpoint: an existing path as is; else the snapshot of hub id
    `spec` at `revision` (branch, tag or commit; default main) in huggingface_hub's cache,
    downloaded first unless HF_HUB_OFFLINE is set. One line and exit 66 for a path that is
    neither a folder nor a hub id, or a repository without a dlcr model; exit 69 for a hub
    that cannot be reached (offline, no network, gated) with nothing cached."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        if revision is not None:
            raise UsageError(f"--revision pins a hub revision; {text} is a local folder")
        return Path(spec)
    if not is_hub_id(text):
        raise InputMissing(f"no re-id model in {text}: no such folder, and no hub id (owner/name)")
    return _snapshot(text, revision)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars

    from dlcr_cli.console import log

    at = f"revision {revision}" if revision else "revision main"
    offline = bool(constants.HF_HUB_OFFLINE)
    if offline:
        log.debug("hub: %s (%s) from the cache %s (HF_HUB_OFFLINE)", repo_id, at, constants.HF_HUB_CACHE)
    else:
        log.info("hub: fetching %s (%s) into the cache %s", repo_id, at, constants.HF_HUB_CACHE)
    disable_progress_bars()  # they would interleave with our log on stderr
    nowhere = f"no folder {repo_id} here, and hub id {repo_id!r} ({at})"
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOADED))
    except GatedRepoError:
        raise Unavailable(f"{nowhere} is gated: accept its terms on the Hub, then {LOGIN}") from None
    except RevisionNotFoundError:
        raise InputMissing(f"hub id {repo_id!r} has no {at}") from None
    except RepositoryNotFoundError:
        raise InputMissing(f"{nowhere} is not on the Hub (or private: {LOGIN})") from None
    except LocalEntryNotFoundError as err:
        if offline:
            raise Unavailable(f"{nowhere} is not in the Hugging Face cache {constants.HF_HUB_CACHE}, and "
                              f"HF_HUB_OFFLINE is set: fetch it once online (unset HF_HUB_OFFLINE)") from None
        cause = err.__cause__ or err  # what the Hub call met (no network, a proxy, a timeout)
        raise Unavailable(f"{nowhere}: the Hub cannot be reached ({type(cause).__name__}: {_first_line(cause)}) "
                          f"and it is not in the cache {constants.HF_HUB_CACHE}") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise Unavailable(f"hub id {repo_id!r} ({at}): {_first_line(err)}") from None
    if not any((folder / where / "model.json").is_file() for where in ("", "best")):
        raise InputMissing(f"hub id {repo_id!r} ({at}) holds no dlcr re-id model (no model.json; `dlcr push` "
                           f"uploads one)")
    return folder


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    end = text.find(". ", 20)
    text = text[: end + 1] if end > 0 else text
    return (text if len(text) <= 200 else text[:197] + "...") or type(err).__name__


# --- dlcr push -------------------------------------------------------------------------------


@dataclass
class Pushed:
    """What `dlcr push` sends: the files of the upload folder (name -> source) and its card."""

    files: dict[str, Path]
    card: str
    notes: list[str] = field(default_factory=list)


def gather(run: Path, repo_id: str, which: str = "best", revision: str | None = None) -> Pushed:
    """The upload of run folder (or model folder) `run`: the model `dlcr evaluate -c RUN`
    would load (best/ when the run kept one and `which` is best), the run's settings.json and
    metrics.jsonl where it has them, and the model card."""
    from dlcr_cli.reid.evaluate import run_model

    if not run.is_dir():
        raise InputMissing(f"no such run folder: {run}")
    folder, config, _ = run_model(run, which)
    files = {name: folder / name for name in MODEL_FILES}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise InputMissing(f"no {missing[0]} in {folder}")
    files.update({name: run / name for name in RUN_FILES if (run / name).is_file()})
    card = model_card(run, folder, config, repo_id, revision)
    notes = [] if "settings.json" in files else [f"{run} has no settings.json: the card names no training command"]
    return Pushed(files, card, notes)


def write_folder(pushed: Pushed, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, source in pushed.files.items():
        shutil.copyfile(source, out / name)
    (out / CARD).write_text(pushed.card, encoding="utf-8")
    return out


def push(run: Path, repo_id: str, *, private: bool = False, revision: str | None = None, which: str = "best",
         dry_run: Path | None = None) -> str:
    """Upload the run's model, records and card to `repo_id` (created when missing, private
    with `private`; on branch `revision`, created from main when missing); with `dry_run`,
    write the folder there and upload nothing. Returns the commit's URL, or the folder."""
    import tempfile

    from dlcr_cli.console import log

    check_repo_id(repo_id)
    pushed = gather(run, repo_id, which, revision)
    for note in pushed.notes:
        log.warning("push: %s", note)
    if dry_run is not None:
        write_folder(pushed, dry_run)
        log.info("push: dry run: %s holds what would be uploaded to %s (%s); nothing was sent", dry_run, repo_id,
                 ", ".join([*pushed.files, CARD]))
        return str(dry_run)
    api = _api()
    with tempfile.TemporaryDirectory(prefix="dlcr-push-") as tmp:
        folder = write_folder(pushed, Path(tmp))
        log.info("push: uploading %s to %s%s", ", ".join([*pushed.files, CARD]), repo_id,
                 f" (branch {revision})" if revision else "")
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                     commit_message=f"dlcr push {run.resolve().name}")
        except Exception as err:  # whatever the network or the Hub answers: one line
            raise Unavailable(f"cannot push to {repo_id!r}: {_first_line(err)} ({LOGIN})") from err
    url = str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
    log.info("push: %s", url)
    return url


def check_repo_id(repo_id: str) -> None:
    if repo_id.count("/") != 1 or not is_hub_id(repo_id):
        raise UsageError(f"REPO_ID is a hub id owner/name (letters, digits, -, _, .), not {repo_id!r}")


def _api() -> Any:
    """The HfApi client, after the checks that would otherwise fail inside an upload."""
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise Unavailable("cannot push with HF_HUB_OFFLINE set: unset it to upload (or --dry-run DIR to write "
                          "the folder only)")
    try:
        token = get_token()
    except Exception as err:  # an OIDC exchange that failed, an unreadable token file
        raise Unavailable(f"no usable Hugging Face token ({_first_line(err)}): {LOGIN}") from err
    if not token:
        raise Unavailable(f"no Hugging Face token: {LOGIN}")
    return HfApi(token=token)


# --- the model card --------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise MalformedInput(f"{path}: not readable JSON ({err})") from None


def _metrics_rows(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    rows = []
    if path.is_file():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise MalformedInput(f"{path}:{number}: not JSON") from None
    return rows


def model_evaluation(run: Path, folder: Path, config: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
    """The uploaded model's epoch and its evaluation during training: best/metrics.json for a
    best/ model, else metrics.jsonl's line of its epoch (None where it was not evaluated)."""
    epoch = config.get("epoch")
    kept = _read_json(folder / "metrics.json")
    if isinstance(kept, dict) and isinstance(kept.get("evaluation"), dict):
        return kept.get("epoch", epoch), kept["evaluation"]
    for row in _metrics_rows(run):
        if row.get("epoch") == epoch and isinstance(row.get("evaluation"), dict):
            return epoch, row["evaluation"]
    return epoch, None


METRIC_COLUMNS = (("R1", "rank1"), ("R5", "rank5"), ("R10", "rank10"), ("R20", "rank20"), ("mAP", "mAP"),
                  ("mINP", "mINP"))


def metrics_table(evaluation: dict[str, Any]) -> str:
    """Markdown, percent with one decimal as `dlcr evaluate` prints them."""
    head = ["setting", *(name for name, _ in METRIC_COLUMNS), "queries", "skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, scores in evaluation.items():
        cells = [setting, *(f"{100 * float(scores[key]):.1f}" for _, key in METRIC_COLUMNS),
                 str(scores.get("queries", "")), str(scores.get("skipped", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def history_table(rows: list[dict[str, Any]]) -> str | None:
    """Rank-1 and mAP of every evaluated epoch of metrics.jsonl (None: none evaluated)."""
    evaluated = [r for r in rows if isinstance(r.get("evaluation"), dict)]
    if not evaluated:
        return None
    settings = list(evaluated[-1]["evaluation"])
    head = ["epoch", "loss", *(f"{s} {m}" for s in settings for m in ("R1", "mAP"))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in evaluated:
        scores = row["evaluation"]
        cells = [str(row.get("epoch")), f"{row['loss']:.4f}" if isinstance(row.get("loss"), (int, float)) else ""]
        for s in settings:
            got = scores.get(s) or {}
            cells += [f"{100 * got['rank1']:.1f}" if "rank1" in got else "", f"{100 * got['mAP']:.1f}" if "mAP" in got
                      else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TRAIN_OPTIONS = {
    "backbone": "--backbone", "loss": "--loss", "image_size": "--image-size", "epochs": "--epochs", "lr": "--lr",
    "seed": "--seed", "workers": "--workers", "eval_every": "--eval-every", "keep": "--keep",
    "precision": "--precision",
}
"""Settings `dlcr train` has an option for (besides --batch, --video/--images, --progressive)."""


def data_defaults(dataset: str | None, video: bool, settings: list[str]) -> dict[str, Any]:
    """What `dlcr train` resolves an unset setting to for this data (reid.train.resolve_for_data),
    as JSON values; precision as auto gives it on CUDA."""
    from dlcr_cli.reid.train import DATASET_DEFAULTS, FP16_DATASETS, IMAGE_DEFAULTS, VIDEO_DEFAULTS
    from dlcr_cli.settings import TrainSettings

    defaults = TrainSettings().model_dump(mode="json")
    chosen = VIDEO_DEFAULTS if video else {**IMAGE_DEFAULTS, **DATASET_DEFAULTS.get(dataset or "", {})}
    defaults.update(json.loads(json.dumps(chosen)))  # tuples as lists, as settings.json has them
    defaults["video"] = video
    defaults["precision"] = "fp16" if not video and dataset in FP16_DATASETS else "fp32"
    defaults["select"] = ("cc" if "cc" in settings else settings[0]) if settings else None
    return defaults


def train_command(record: dict[str, Any], dataset_name: str | None, run_name: str, settings: list[str]) -> str:
    """The `dlcr train` line that trains this run again, from its settings.json: the dataset and
    --generated as given, every setting that differs from what the data's defaults resolve to
    (as its option, else as a DLCR_TRAIN__* variable: `dlcr train` has no --set)."""
    train = record.get("train") or {}
    video = bool(train.get("video"))
    defaults = data_defaults(dataset_name, video, settings)
    words = ["dlcr", "train", str(record.get("dataset", "DATASET"))]
    if record.get("generated"):
        words += ["--generated", str(record["generated"])]
    words += ["--out", run_name]
    env: list[str] = []
    for key in sorted(train):
        value = train[key]
        if key in ("ids_per_batch", "images_per_id", "video") or value == defaults.get(key, value):
            continue
        if key == "select" and defaults.get("select") is None:
            continue  # the data's settings are unknown: cannot tell
        if key in TRAIN_OPTIONS:
            shown = f"{value[0]}x{value[1]}" if key == "image_size" else f"{value:g}" if isinstance(value, float) \
                else str(value)
            words += [TRAIN_OPTIONS[key], shown]
        elif key == "progressive":
            words.append("--progressive" if value else "--no-progressive")
        else:
            from dlcr_cli.settings import env_name

            env.append(f"{env_name('train.' + key)}={shlex.quote(json.dumps(value) if not isinstance(value, str) else value)}")
    pk = (train.get("ids_per_batch"), train.get("images_per_id"))
    if pk != (defaults.get("ids_per_batch"), defaults.get("images_per_id")) and None not in pk:
        words += ["--batch", f"{pk[0]}x{pk[1]}"]
    if not video and dataset_name == "ccvid":
        words.append("--images")
    return " ".join([*env, *(shlex.quote(w) for w in words)])


def model_card(run: Path, folder: Path, config: dict[str, Any], repo_id: str, revision: str | None = None) -> str:
    """README.md of the upload: YAML front matter (library, tags), what the model is and was
    trained on, its metrics during training, the command that trained it and how to use it."""
    meta = _read_json(folder / "model.json") or {}
    record = _read_json(run / "settings.json")
    rows = _metrics_rows(run)
    epoch, evaluation = model_evaluation(run, folder, config)
    dataset = config.get("dataset")
    train = (record or {}).get("train") or {}
    epochs = train.get("epochs") or (rows[-1].get("epoch") if rows else None)
    evaluated = [r["evaluation"] for r in rows if isinstance(r.get("evaluation"), dict)]
    settings = list(evaluation or (evaluated[-1] if evaluated else {}))
    generated = (record or {}).get("generated")
    method = "CAL on real + DLCR-generated images" if generated else "CAL" if config.get("loss") != "ce" else \
        "the identity (cross-entropy) baseline"
    if config.get("loss") == "ce" and generated:
        method = "the identity (cross-entropy) baseline on real + DLCR-generated images"
    size = config.get("image_size")
    pin = f" --revision {revision}" if revision else ""
    lines = [
        "---",
        "library_name: dlcr",
        "tags:",
        *(f"- {tag}" for tag in TAGS),
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A clothes-changing person re-identification model trained with dlcr (`dlcr train`): {method}" + (f", on {dataset}" if dataset else "") + ".",
        "",
        f"- Backbone: `{meta.get('backbone', '?')}` ({meta.get('head', 'image')} head, "
        f"{meta.get('dim', '?')}-d embedding)" + (f", input {size[0]}x{size[1]}" if size else "")
        + (f", {config['precision']}" if config.get("precision") else "") + ".",
        f"- Dataset: {dataset or 'not recorded'}" + (f" (`{record['dataset']}` as given to `dlcr train`)"
                                                     if record and record.get("dataset") else "")
        + (f"; generated variants from `{generated}`" if generated else "") + ".",
        "- Model: " + _which_note(config, epoch, epochs, (run / "best" / "model.json").is_file()),
        "- Files: `model.safetensors` (weights, no pickle) and `model.json` (the architecture, rebuilt without "
        "network)" + (", `settings.json` (every training setting)" if record else "")
        + (", `metrics.jsonl` (one line per epoch, with the evaluations)" if rows else "") + ".",
        "",
        "## Evaluation",
        "",
    ]
    if evaluation:
        lines += [
            f"The {dataset or 'dataset'} protocol as `dlcr evaluate` runs it (settings {', '.join(settings)}): "
            "features of each image and its mirror image, L2-normalised, ranked by cosine; per query, "
            "same-identity same-camera gallery images are junk, `cc` also junks same-clothes ones and `sc` "
            "other-clothes ones; queries without a good match are skipped. Percent, measured during training "
            f"on the model uploaded here (epoch {epoch}):",
            "",
            metrics_table(evaluation),
            "",
        ]
    else:
        lines += ["No evaluation of this model is recorded (its epoch was not evaluated during training).", ""]
    history = history_table(rows)
    if history:
        lines += ["Every evaluation of the run (metrics.jsonl):", "", history, ""]
    lines += ["## Training", ""]
    if record:
        lines += ["```bash", train_command(record, dataset, run.resolve().name, settings), "```", "",
                  "The options are those whose values differ from what `dlcr train` resolves for this data "
                  "(`settings.json` holds them all); on a GPU, `dlcr --device cuda train ...`.", ""]
    else:
        lines += ["Not recorded: the folder pushed had no `settings.json`.", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        f"dlcr evaluate DATASET -c {repo_id}{pin}",
        f"dlcr refine DATASET -c {repo_id}{pin} --variants QUERY_VARIANTS.jsonl",
        "```",
        "",
        f"Every dlcr command that takes a checkpoint (`dlcr evaluate`, `dlcr refine`, `dlcr embed`, `dlcr export`) "
        f"takes `{repo_id}` in its place, through huggingface_hub's cache (`--revision` pins a branch, tag or "
        "commit; HF_HUB_OFFLINE=1 uses the cached snapshot). In Python:",
        "",
        "```python",
        "from huggingface_hub import snapshot_download",
        "from dlcr_cli.reid.model import load_checkpoint",
        "",
        f"model = load_checkpoint(snapshot_download({repo_id!r}" + (f", revision={revision!r}" if revision else "")
        + "))  # eval mode: model(images) embeds normalised B x 3 x H x W images",
        "```",
        "",
    ]
    return "\n".join(lines)


def _which_note(config: dict[str, Any], epoch: Any, epochs: Any, run_kept_best: bool) -> str:
    of = f" of {epochs}" if epochs else ""
    chosen = config.get("selection")
    if isinstance(chosen, dict):
        return (f"epoch {epoch}{of}, the run's best/: the best `{chosen.get('setting')}` rank-1 over the evaluated "
                "epochs (CAL's reporting protocol: selected on the test set). The last epoch's model is not "
                "uploaded (`dlcr push RUN REPO_ID --epoch last` uploads it instead).")
    if run_kept_best:
        return (f"the last epoch's ({epoch}{of}), not the run's best/ (`dlcr push RUN REPO_ID` without "
                "`--epoch last` uploads that).")
    return f"the last epoch's ({epoch}{of})" + (": the run kept no best/." if epoch else ".")
