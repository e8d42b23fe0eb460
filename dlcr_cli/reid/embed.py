"""The work of `dlcr embed`: a re-id model's test-time features of any records, image folder or
dataset, in chunks that a restarted run reuses, written as one `.npz` or `.safetensors` file.

Features are what `dlcr evaluate` computes (dlcr_cli.reid.features): an image's embedding plus
its mirror's, L2-normalised (a video model's frame: the frame as a one-frame clip, unmirrored,
as CAL's video test takes clips); batched on the device while threads read the next images.

The file holds

    feats        N x D float32, one row per input record, in input order
    paths        N strings: the records' images
    pids         N integers (-1: none), or N strings ("": none) when some pid is no integer
    camids       N integers (-1: none)
    clothes      N strings ("": none)
    splits       N strings ("": none)

each label array only when some record has that field; and, when the records hold query and
gallery splits (a dataset root, or records with split query/gallery), what `dlcr evaluate
--features` reads, exactly as `evaluate --save-features` writes it (features.feature_arrays):
query_/gallery_ feats, pids, camids, clothes (numbered as the protocol numbers them), paths,
the protocol and its settings; for video data one entry per tracklet, as evaluate computes
it. A `.safetensors` file holds the numeric arrays as tensors and the string arrays as JSON
in its metadata (`dlcr`: {name: list, or a string for protocol}), next to `format`.

Resume: the items are embedded in parts of `chunk` items, each written atomically to
FEATS.parts/ as it is done, beside `key.json`: the fingerprints of the model (the content of
its weights and model.json), of the settings that change features (image size, precision,
flip, clips, chunk size, protocol) and of the inputs (the ordered items and the content
digest of each image, cached by size and modification time in FEATS.parts/, so a resumed
run reads no image twice to check it). A restarted run reuses the parts when all three match;
when any differs it says which and starts over (the old parts are deleted). Speed settings
(batch size, workers) are in no fingerprint. The finished file is written atomically with
that key and a fingerprint of the records (`key`), and the parts folder removed; a rerun
whose key and records match keeps the file without embedding anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlcr_cli.console import log
from dlcr_cli.errors import MalformedInput, UsageError
from dlcr_cli.records import Record

FORMAT = "dlcr-embeddings"
VERSION = 1
CHUNK = 4096
"""Items per part (images, or tracklets of a video model)."""
SUFFIXES = (".npz", ".safetensors")
PARTS_SUFFIX = ".parts"
KEY_FILE = "key.json"
KEY_PARTS = ("model", "settings", "inputs")
CHANGED = {"model": "another model", "settings": "other settings", "inputs": "other inputs"}


@dataclass
class Segment:
    """Items embedded alike: image paths, or tracklets (lists of frame paths) of a video model."""

    name: str
    kind: str
    """images | tracklets"""
    items: list[Any]
    flip: bool = True


@dataclass
class Embedded:
    """What `embed` made: one row of `feats` per record, and the arrays of the file."""

    records: list[Record]
    feats: np.ndarray
    arrays: dict[str, np.ndarray]
    reused: int = 0
    """Parts taken from an earlier run."""


def output_format(path: Path) -> str:
    """npz or safetensors, by the file's suffix (anything else is a usage error)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"--out {path}: the file name must end in .npz or .safetensors")
    if Path(path).is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name ending in .npz or .safetensors")
    return suffix[1:]


def parts_folder(out: Path) -> Path:
    return Path(f"{out}{PARTS_SUFFIX}")


def embed(source: str, checkpoint: str, s: Any, device: Any, *, out: Path | None = None, chunk: int = CHUNK,
          variant: str | None = None, protocol: str | None = None, revision: str | None = None) -> Embedded:
    """The features of every record of `source` (read_records: a dataset root, a folder of
    images, JSONL, `-`) under `checkpoint` (its best/ or last epoch, `s.epoch`), and, when the
    records hold query and gallery, the dataset's evaluation arrays; written to `out` (.npz or
    .safetensors by suffix) when given, resumable through `out`.parts/ (the module doc)."""
    from dlcr_cli.inputs import read_records
    from dlcr_cli.reid.evaluate import load_run_model

    if chunk < 1:
        raise UsageError(f"--chunk-size must be positive; got {chunk}")
    kind = output_format(out) if out is not None else None
    records = list(read_records(source))
    data = _eval_data(source, records, variant, protocol)
    m = load_run_model(Path(checkpoint), s, device, "embed", revision=revision)
    model = m.model
    video_model = bool(getattr(model, "video", False))
    segments, rows, eval_from = _plan(records, data, video_model, s.flip)
    chunks = [(i, start, min(start + chunk, len(seg.items))) for i, seg in enumerate(segments)
              for start in range(0, len(seg.items), chunk)]
    folder = parts_folder(out) if out is not None else None
    done: set[int] = set()
    finished_key = None
    if folder is not None:
        _check_folder(folder)
        key = _key(m, s, segments, records, chunk, variant, protocol, folder)
        finished_key = _file_key(key, records)
        kept = _finished(out, finished_key)
        if kept is not None:
            _remove_parts(folder)
            log.info("embed: %s is finished for this model, these settings and inputs: kept", out)
            return Embedded(records, kept["feats"], kept, len(chunks))
        done = _open_parts(folder, key)
    images = sum(len(seg.items) for seg in segments if seg.kind == "images")
    tracklets = sum(len(seg.items) for seg in segments if seg.kind == "tracklets")
    if data is not None:
        log.info("embed: %s", data.summary())
    log.info("embed: %d records: %d images%s in %d part%s of up to %d at %dx%d on %s (%s)", len(records), images,
             f" and {tracklets} tracklets" if tracklets else "", len(chunks), "" if len(chunks) == 1 else "s", chunk,
             *m.size, device, m.precision)
    dim = int(getattr(model, "dim", 0))
    feats, reused = _run(chunks, segments, done, folder, m, s, dim)
    per_segment = []
    for seg in range(len(segments)):
        mine = [feats[k] for k, (i, _, _) in enumerate(chunks) if i == seg]
        per_segment.append(np.concatenate(mine) if mine else np.zeros((0, dim), np.float32))
    rows_feats = np.stack([per_segment[seg][row] for seg, row in rows])
    arrays = record_arrays(records, rows_feats.astype(np.float32, copy=False))
    if data is not None:
        arrays.update(_eval_arrays(data, per_segment, eval_from))
    if out is not None:
        write({**arrays, KEY_ARRAY: np.array(finished_key)}, out, kind)
        log.info("embed: %d features of %d dimensions written to %s%s", len(records), rows_feats.shape[1], out,
                 " (with the query and gallery arrays of dlcr evaluate --features)" if data is not None else "")
        if folder is not None:
            _remove_parts(folder)
    return Embedded(records, rows_feats, arrays, reused)


# --- what is embedded -------------------------------------------------------------------------


def _eval_data(source: str, records: list[Record], variant: str | None, protocol: str | None) -> Any:
    """The ReidData of records that hold both query and gallery splits (their protocol and
    settings), else None."""
    from dlcr_cli.reid.data import load_reid_data

    splits = {r.split for r in records}
    if not {"query", "gallery"} <= splits:
        if variant or protocol:
            raise UsageError("--variant and --protocol apply to records with query and gallery splits; "
                             f"{source} has none")
        return None
    if source != "-":
        data = load_reid_data(source, variant=variant, protocol=protocol)
    else:  # stdin is read once: the records (paths already absolute) go through a file to load_reid_data
        from dlcr_cli.records import record_json

        fd, name = tempfile.mkstemp(prefix="dlcr-embed-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(record_json(r) + "\n" for r in records)
            data = load_reid_data(name, variant=variant, protocol=protocol)
        finally:
            Path(name).unlink(missing_ok=True)
    data.require("query", "gallery")
    return data


def _plan(records: list[Record], data: Any, video_model: bool, flip: bool
          ) -> tuple[list[Segment], list[tuple[int, int]], str | None]:
    """The segments to embed, each record's (segment, row), and where the evaluation arrays
    come from: None (no query and gallery), "images" (segment 0: the query then gallery
    images, as evaluate embeds them) or "tracklets" (the last segment: a video model's)."""
    from dlcr_cli.reid.data import tracklet_frames

    own = Segment("images", "images", [], flip and not video_model)
    segments: list[Segment] = []
    eval_from = None
    shared: dict[str, int] = {}
    if data is not None and data.video and video_model:
        frames = [[x.path for x in t] for side in (data.query, data.gallery) for t in tracklet_frames(side)]
        eval_from = "tracklets"
        tracklets = Segment("tracklets", "tracklets", frames, False)
    elif data is not None:
        eval_images = Segment("eval", "images", [x.path for x in data.query + data.gallery], flip)
        segments.append(eval_images)
        eval_from = "images"
        if eval_images.flip == own.flip:
            for j, path in enumerate(eval_images.items):
                shared.setdefault(path, j)
    segments.append(own)
    rows: list[tuple[int, int]] = []
    for record in records:
        if record.image in shared:
            rows.append((0, shared[record.image]))
        else:
            rows.append((len(segments) - 1, len(own.items)))
            own.items.append(record.image)
    if eval_from == "tracklets":
        segments.append(tracklets)
    return segments, rows, eval_from


def record_arrays(records: Sequence[Record], feats: np.ndarray) -> dict[str, np.ndarray]:
    """feats, paths, and the label arrays of the records that have them (the module doc)."""
    arrays: dict[str, np.ndarray] = {"feats": feats, "paths": np.array([r.image for r in records], dtype=str)}
    pids = [r.pid for r in records]
    if any(p is not None for p in pids):
        if all(p is None or isinstance(p, int) for p in pids):
            arrays["pids"] = np.array([-1 if p is None else p for p in pids], dtype=np.int64)
        else:
            arrays["pids"] = np.array(["" if p is None else str(p) for p in pids], dtype=str)
    if any(r.camid is not None for r in records):
        arrays["camids"] = np.array([-1 if r.camid is None else r.camid for r in records], dtype=np.int64)
    for name, field in (("clothes", "clothes"), ("splits", "split")):
        values = [getattr(r, field) for r in records]
        if any(v is not None for v in values):
            arrays[name] = np.array(["" if v is None else str(v) for v in values], dtype=str)
    return arrays


def _eval_arrays(data: Any, per_segment: list[np.ndarray], eval_from: str | None) -> dict[str, np.ndarray]:
    from dlcr_cli.reid.data import tracklet_groups
    from dlcr_cli.reid.features import feature_arrays, image_feature_set, tracklet_set

    if eval_from == "tracklets":
        feats = per_segment[-1]
        n = len(tracklet_groups(data.query))
        features = tracklet_set(data.query, data.gallery, feats[:n], feats[n:], list(data.settings), data.name)
    else:
        features = image_feature_set(data, per_segment[0])
    return feature_arrays(features)


# --- parts ------------------------------------------------------------------------------------


def _key(m: Any, s: Any, segments: Sequence[Segment], records: Sequence[Record], chunk: int, variant: str | None,
         protocol: str | None, folder: Path) -> dict[str, Any]:
    """The fingerprints a part is reused under (the module doc); the images' digests are
    cached in `folder` (by size and modification time), so a resumed run reads none again."""
    from dlcr_cli.fingerprint import CACHE_NAME, Digests, file_digest, fingerprint
    from dlcr_cli.reid.model import CONFIG_FILE, WEIGHTS_FILE

    model = fingerprint(file_digest(m.folder / WEIGHTS_FILE), file_digest(m.folder / CONFIG_FILE))
    settings = fingerprint(list(m.size), m.precision, list(m.clip), chunk, variant, protocol,
                           [(seg.name, seg.kind, seg.flip) for seg in segments])
    digests = Digests(folder / CACHE_NAME, workers=max(1, s.workers))
    inputs = fingerprint([seg.items for seg in segments], digests.many([r.image for r in records]))
    digests.save()
    return {"format": FORMAT, "version": VERSION, "model": model, "settings": settings, "inputs": inputs}


KEY_ARRAY = "key"
"""In a finished file: what made it (the parts' key and the records), so a rerun keeps it."""


def _file_key(key: dict[str, Any], records: Sequence[Record]) -> str:
    """The parts' key and the records themselves: their labels are in the file, not in any part."""
    from dlcr_cli.fingerprint import fingerprint
    from dlcr_cli.records import record_json

    return json.dumps({**key, "records": fingerprint([record_json(r) for r in records])}, sort_keys=True)


def _finished(out: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of `out` when an earlier run of this key wrote it, else None."""
    if not out.is_file():
        return None
    import zipfile

    try:
        arrays = load(out)
    except (MalformedInput, OSError, ValueError, EOFError, zipfile.BadZipFile):  # not ours, or broken: made again
        return None
    stored = arrays.get(KEY_ARRAY)
    return arrays if stored is not None and str(stored) == key else None


def _part(folder: Path, k: int) -> Path:
    return folder / f"part-{k:06d}.npy"


def _check_folder(folder: Path) -> None:
    """A usage error when `folder` is something else than an embed work folder (never emptied)."""
    from dlcr_cli.fingerprint import CACHE_NAME

    if folder.exists() and (not folder.is_dir() or (
            not (folder / KEY_FILE).is_file() and any(p.name != CACHE_NAME for p in folder.iterdir()))):
        raise UsageError(f"{folder} exists and is no dlcr embed work folder (no {KEY_FILE}); move it away")


def _open_parts(folder: Path, key: dict[str, Any]) -> set[int]:
    """The parts an earlier run finished under the same key; other parts are deleted (and
    the reason said). The folder holds `key` afterwards."""
    from dlcr_cli.io import write_text_atomic

    done: set[int] = set()
    key_file = folder / KEY_FILE
    if key_file.exists():
        try:
            old = json.loads(key_file.read_text(encoding="utf-8")) if key_file.is_file() else None
        except (OSError, ValueError):
            old = {}
        parts = sorted(folder.glob("part-*.npy"))
        if old == key:
            done = {int(p.stem.split("-")[1]) for p in parts if p.stem.split("-")[1].isdigit()}
        elif old is not None:
            changed = [name for name in KEY_PARTS if not isinstance(old, dict) or old.get(name) != key[name]]
            log.warning("embed: %s holds %d parts made from %s: starting over", folder, len(parts),
                        " and ".join(CHANGED[name] for name in changed) or "another format")
            _remove_parts(folder, keep_folder=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(key, indent=1) + "\n", folder / KEY_FILE)
    return done


def _remove_parts(folder: Path, keep_folder: bool = False) -> None:
    """The parts and the key (and, with the folder, the digest cache)."""
    from dlcr_cli.fingerprint import CACHE_NAME

    extra = [] if keep_folder else [folder / CACHE_NAME]
    for path in [*folder.glob("part-*.npy"), *folder.glob(".part-*.tmp"), folder / KEY_FILE, *extra]:
        path.unlink(missing_ok=True)
    if not keep_folder:
        try:
            folder.rmdir()
        except OSError:  # something else in it: not ours to delete
            pass


def _load_part(folder: Path, k: int, rows: int, dim: int) -> np.ndarray | None:
    try:
        part = np.load(_part(folder, k), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if part.dtype != np.float32 or part.shape != (rows, dim):
        return None
    return part


def _save_part(folder: Path, k: int, feats: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".part-{k:06d}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, feats.astype(np.float32, copy=False))
        os.replace(tmp, _part(folder, k))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(chunks: list[tuple[int, int, int]], segments: list[Segment], done: set[int], folder: Path | None, m: Any,
         s: Any, dim: int) -> tuple[list[np.ndarray], int]:
    """Each chunk's features: an earlier run's part, or embedded now (images under one
    progress bar, then tracklets) and saved as a part."""
    from dlcr_cli.console import progress

    feats: list[np.ndarray | None] = [None] * len(chunks)
    reused = 0
    for k in sorted(done):
        if k < len(chunks) and folder is not None:
            i, start, end = chunks[k]
            feats[k] = _load_part(folder, k, end - start, dim)
            reused += feats[k] is not None
    if reused:
        log.info("embed: resuming: %d of %d parts done in an earlier run, reused (%s)", reused, len(chunks), folder)
    todo = [k for k in range(len(chunks)) if feats[k] is None]
    images = [k for k in todo if segments[chunks[k][0]].kind == "images"]
    total = sum(chunks[k][2] - chunks[k][1] for k in images)
    with progress("embed", total, enabled=bool(images)) as bar:
        for k in images:
            feats[k] = _embed_chunk(chunks[k], segments, m, s, bar)
            _finish(k, feats[k], chunks, folder)
    for k in todo:
        if feats[k] is None:
            feats[k] = _embed_chunk(chunks[k], segments, m, s, None)
            _finish(k, feats[k], chunks, folder)
    return [f if f is not None else np.zeros((0, dim), np.float32) for f in feats], reused


def _embed_chunk(chunk: tuple[int, int, int], segments: list[Segment], m: Any, s: Any, bar: Any) -> np.ndarray:
    from dlcr_cli.reid import features

    i, start, end = chunk
    seg = segments[i]
    items = seg.items[start:end]
    if seg.kind == "tracklets":
        return features.embed_tracklets(m.model, items, size=m.size, batch_size=s.batch_size, workers=s.workers,
                                        precision=m.precision, clip=m.clip)
    return features.embed_images(m.model, items, size=m.size, batch_size=s.batch_size, workers=s.workers,
                                 flip=seg.flip, precision=m.precision, bar=bar)


def _finish(k: int, feats: np.ndarray, chunks: list[tuple[int, int, int]], folder: Path | None) -> None:
    if folder is not None:
        _save_part(folder, k, feats)
    log.debug("embed: part %d of %d done (%d items)", k + 1, len(chunks), len(feats))


# --- files ------------------------------------------------------------------------------------


def write(arrays: dict[str, np.ndarray], path: Path, kind: str | None = None) -> Path:
    """`arrays` as an .npz (features.save_npz) or a .safetensors file, written atomically."""
    from dlcr_cli.reid.features import save_npz

    kind = kind or output_format(path)
    arrays = {"format": np.array(FORMAT), **arrays}
    if kind == "npz":
        return save_npz(arrays, path)
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items() if v.dtype.kind in "fiub"}
    strings = {k: v.tolist() for k, v in arrays.items() if k not in tensors}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "dlcr": json.dumps(strings, ensure_ascii=False)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a file `embed` wrote (.npz or .safetensors), strings as str arrays."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            arrays = {key: f.get_tensor(key) for key in f.keys()}
            meta = f.metadata() or {}
        strings = json.loads(meta.get("dlcr", "{}"))
    except (OSError, ValueError, SafetensorError) as err:
        raise MalformedInput(f"{path}: not a readable .safetensors file ({err})") from None
    for key, value in strings.items():
        arrays[key] = np.array(value, dtype=str)
    return arrays
