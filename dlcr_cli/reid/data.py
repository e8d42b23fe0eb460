"""Re-id data as training and evaluation sets: integer labels and the protocol's settings.

`load_reid_data(source)` reads a dataset root (layout detected) or records (JSONL, `-`) and
returns `ReidData`, as the reference code's (CAL) dataset classes do:

- train: pids and clothing ids relabelled 0..N-1 in sorted order of the original ids, and
  `pid2clothes`, the (pids x clothing ids) table of the CAL loss.
- query / gallery: the original integer pids (string pids are numbered jointly over both
  sides, in sorted order); clothing ids numbered jointly over both sides, so one outfit has
  one number on either side, which is what the sc / cc modes compare.
- settings: the evaluation settings of the dataset's protocol (docs/method.md, "Evaluation: the
  protocols"; CAL test.py), each a mode and the query / gallery indices it evaluates:

  | protocol          | settings: mode                     | queries            | gallery        |
  |-------------------|------------------------------------|--------------------|----------------|
  | prcc              | sc: standard, cc: standard         | camera B / C (1/2) | test/A, all    |
  | ltcc, vcclothes   | standard, sc, cc: same-named mode  | all                | all            |
  | vcclothes_sc / _cc| sc / cc: standard                  | cameras 2&3 / 3&4  | the same cams  |
  | last, deepchange  | standard: standard                 | all                | all            |
  | ccvid             | standard, sc, cc: same-named mode  | all (tracklets)    | all            |
  | generic           | standard, and cc when clothes known| all                | all            |

  PRCC's camera split defines its clothes setting, so CAL evaluates both with the standard
  rule (test_prcc). VC-Clothes' camera subsets are CAL's `vcclothes_sc` / `vcclothes_cc`
  datasets (`variant="sc"` / `"cc"`; raw camera numbers), evaluated with the standard rule.
  LaST has no clothes labels in test: its query / gallery clothes are the pid, as in CAL.

The protocol comes from the records' `dataset` field (one known dataset) or `protocol=`;
records of no or several datasets get the generic one. Records of split `val` (PRCC rgb/val,
LaST and DeepChange val subsets) and without a split are left out. CCVID samples carry their
`tracklet`; `tracklet_groups` gives the frames to average per tracklet.

Malformed input: every dataset layout raises MalformedInput naming the file (the list file
and line for DeepChange and CCVID) rather than skipping it, and so does a train / query /
gallery record without a pid. A record without camid is its own camera (as LaST); one
without clothes is taken to wear one outfit per person (a warning says how many).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlcr_cli.console import log
from dlcr_cli.errors import InputMissing, MalformedInput, UsageError
from dlcr_cli.inputs import read_records
from dlcr_cli.records import Record, rel_path

MODES = ("standard", "sc", "cc")
SPLITS = ("train", "query", "gallery")
GENERIC = "generic"


@dataclass(frozen=True)
class Sample:
    """One image with integer labels (relabelled in train, original pids in query/gallery)."""

    path: str
    pid: int
    camid: int
    clothes: int
    tracklet: str | None = None
    """The video tracklet the frame belongs to (CCVID), else None."""
    rel: str | None = None
    """The image's path relative to its dataset root: where its generated variants live."""


@dataclass(frozen=True, eq=False)
class EvalSetting:
    """One evaluation setting: the matching rule (`mode`) over a subset of query and gallery."""

    name: str
    mode: str
    """standard | sc | cc (docs/method.md: which same-pid gallery entries are good and which junk)."""
    query: np.ndarray
    """Indices into ReidData.query (int64)."""
    gallery: np.ndarray
    """Indices into ReidData.gallery (int64)."""


@dataclass
class ReidData:
    name: str
    """The protocol: a dataset layout name, `vcclothes_sc` / `vcclothes_cc`, or `generic`."""
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    num_pids: int
    """Training identities (the identity classifier's classes)."""
    num_clothes: int
    """Training clothing ids (the clothes classifier's classes)."""
    pid2clothes: np.ndarray
    """num_pids x num_clothes bool: clothing id j is worn by training identity i."""
    settings: list[EvalSetting]
    records_by_path: dict[str, Record] = field(default_factory=dict, repr=False)
    """The record of every sample, by Sample.path."""

    @property
    def video(self) -> bool:
        """Query and gallery are tracklets (evaluated per tracklet)."""
        return any(s.tracklet is not None for s in self.query + self.gallery)

    @property
    def train_video(self) -> bool:
        """The training samples are frames of tracklets (the video model can train on clips)."""
        return any(s.tracklet is not None for s in self.train)

    def setting(self, name: str) -> EvalSetting:
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise UsageError(f"{self.name} has no setting {name!r}; it has {', '.join(s.name for s in self.settings)}")

    def require(self, *splits: str) -> None:
        """InputMissing when a split the caller needs (train / query / gallery) is empty."""
        for split in splits:
            if not getattr(self, split):
                raise InputMissing(f"{self.name}: no {split} images")

    def summary(self) -> str:
        settings = ", ".join(s.name for s in self.settings)
        return (f"{self.name}: train {len(self.train)} images, {self.num_pids} ids, {self.num_clothes} clothing ids; "
                f"query {len(self.query)}, gallery {len(self.gallery)}; settings {settings}")


# --- protocols --------------------------------------------------------------------------------

Protocol = Callable[[list[Sample], list[Sample], bool], list[EvalSetting]]


def _indices(samples: Sequence[Sample], keep: Callable[[Sample], bool] = lambda s: True) -> np.ndarray:
    return np.array([i for i, s in enumerate(samples) if keep(s)], dtype=np.int64)


def _over_all(query: list[Sample], gallery: list[Sample], *names: str) -> list[EvalSetting]:
    """Settings over every query and gallery image, each evaluated with its own-named mode."""
    return [EvalSetting(name, name, _indices(query), _indices(gallery)) for name in names]


def _prcc(query: list[Sample], gallery: list[Sample], has_clothes: bool) -> list[EvalSetting]:
    # Gallery is test/A (camid 0); B (1) wears A's outfit, C (2) another: CAL test_prcc.
    return [EvalSetting(name, "standard", _indices(query, lambda s, c=camid: s.camid == c), _indices(gallery))
            for name, camid in (("sc", 1), ("cc", 2))]


def _generic(query: list[Sample], gallery: list[Sample], has_clothes: bool) -> list[EvalSetting]:
    return _over_all(query, gallery, *(("standard", "cc") if has_clothes else ("standard",)))


PROTOCOLS: dict[str, Protocol] = {
    "prcc": _prcc,
    "ltcc": lambda q, g, _: _over_all(q, g, "standard", "sc", "cc"),
    "vcclothes": lambda q, g, _: _over_all(q, g, "standard", "sc", "cc"),
    "last": lambda q, g, _: _over_all(q, g, "standard"),
    "deepchange": lambda q, g, _: _over_all(q, g, "standard"),
    "ccvid": lambda q, g, _: _over_all(q, g, "standard", "sc", "cc"),
    GENERIC: _generic,
}
VARIANTS: dict[str, dict[str, frozenset[int]]] = {
    # CAL's vcclothes_sc / vcclothes_cc: test images of these cameras only (raw numbering).
    "vcclothes": {"sc": frozenset({2, 3}), "cc": frozenset({3, 4})},
}


# --- loading --------------------------------------------------------------------------------


def load_reid_data(source: str | Path, *, variant: str | None = None, protocol: str | None = None) -> ReidData:
    """ReidData of a dataset root, a records JSONL file or `-`.

    variant: a dataset's alternative protocol (VC-Clothes: "sc" = cameras 2&3, "cc" = 3&4).
    protocol: force the protocol (a PROTOCOLS key) instead of the records' `dataset` field.
    """
    records = list(read_records(str(source)))
    by_split = _by_split(records, str(source))
    name = _protocol_of(by_split, protocol)
    query, gallery = by_split["query"], by_split["gallery"]
    if variant is not None:
        query, gallery = _variant(name, variant, query, gallery)
    train, num_pids, num_clothes, pid2clothes = train_samples(by_split["train"])
    q, g, has_clothes = eval_samples(query, gallery, clothes_from_pid=name == "last")
    if variant is None:
        settings = PROTOCOLS[name](q, g, has_clothes)
    else:  # CAL evaluates its camera-subset datasets with the standard rule only
        settings, name = [EvalSetting(variant, "standard", _indices(q), _indices(g))], f"{name}_{variant}"
    kept = by_split["train"] + query + gallery
    return ReidData(name, train, q, g, num_pids, num_clothes, pid2clothes, settings,
                    {r.image: r for r in kept})


def _by_split(records: list[Record], source: str) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = {split: [] for split in SPLITS}
    left_out = 0
    for record in records:
        if record.split in groups:
            if record.pid is None:
                raise MalformedInput(f"{source}: {record.image}: no pid in a {record.split} record")
            groups[record.split].append(record)
        else:
            left_out += 1
    if not any(groups.values()):
        raise MalformedInput(f"{source}: no train, query or gallery records (field split); known dataset layouts: "
                             + _known_layouts())
    if left_out:
        log.info("%d records of split val or of no split left out", left_out)
    return groups


def _known_layouts() -> str:
    from dlcr_cli.reid.datasets import known_layouts_text

    return known_layouts_text()


def _protocol_of(by_split: dict[str, list[Record]], forced: str | None) -> str:
    if forced is not None:
        if forced not in PROTOCOLS:
            raise UsageError(f"unknown protocol {forced!r}; known: {', '.join(PROTOCOLS)}")
        return forced
    names = {r.dataset for records in by_split.values() for r in records}
    if len(names) == 1 and (found := names.pop()) in PROTOCOLS:
        return found
    if len(names) > 1:
        log.warning("records of several datasets (%s): generic protocol", ", ".join(sorted(map(str, names))))
    return GENERIC


def _variant(name: str, variant: str, query: list[Record], gallery: list[Record]
             ) -> tuple[list[Record], list[Record]]:
    """Query and gallery of the variant's cameras: numbering then runs over these only, as in CAL."""
    known = VARIANTS.get(name, {})
    if variant not in known:
        offered = f"variants {', '.join(known)}" if known else "no variants"
        raise UsageError(f"{name} has {offered}, not {variant!r}")
    cams = known[variant]
    return [r for r in query if r.camid in cams], [r for r in gallery if r.camid in cams]


# --- labels ---------------------------------------------------------------------------------


def _order(value: int | str) -> tuple:
    """Sort key: integers numerically, before strings (ids may be either in records)."""
    return (1, 0, value) if isinstance(value, str) else (0, value, "")


def numbering(values: Iterable) -> dict:
    """value -> 0..N-1 in sorted order of the distinct values."""
    return {value: i for i, value in enumerate(sorted(set(values), key=_order))}


def _clothes(records: list[Record], from_pid: bool = False) -> tuple[list[str], bool]:
    """Each record's clothing id, the pid's where unknown; and whether all were known."""
    missing = sum(r.clothes is None for r in records)
    if missing and not from_pid:
        log.warning("%d of %d records have no clothing id: one outfit per person assumed", missing, len(records))
    return [f"pid:{r.pid}" if from_pid or r.clothes is None else r.clothes for r in records], not missing


def _camids(records: list[Record]) -> list[int]:
    """Each record's camid; one without is its own camera, numbered after all known ones."""
    known = [r.camid for r in records if r.camid is not None]
    fresh = iter(range(max(known, default=-1) + 1, 1 << 62))
    return [r.camid if r.camid is not None else next(fresh) for r in records]


def train_samples(records: list[Record]) -> tuple[list[Sample], int, int, np.ndarray]:
    """(samples, num_pids, num_clothes, pid2clothes), labels relabelled 0..N-1 in sorted order."""
    clothes, _ = _clothes(records)
    pid_of, clothes_of = numbering(r.pid for r in records), numbering(clothes)
    pid2clothes = np.zeros((len(pid_of), len(clothes_of)), dtype=bool)
    samples = []
    for record, outfit, camid in zip(records, clothes, _camids(records)):
        pid, cid = pid_of[record.pid], clothes_of[outfit]
        pid2clothes[pid, cid] = True
        samples.append(_sample(record, pid, camid, cid))
    return samples, len(pid_of), len(clothes_of), pid2clothes


def eval_samples(query: list[Record], gallery: list[Record], clothes_from_pid: bool = False
                 ) -> tuple[list[Sample], list[Sample], bool]:
    """Query and gallery samples with pids, camids and clothing ids numbered jointly over both
    sides; and whether every clothing id was known."""
    both = query + gallery
    pids = [r.pid for r in both]
    if not all(isinstance(p, int) for p in pids):
        pid_of = numbering(str(p) for p in pids)
        pids = [pid_of[str(p)] for p in pids]
    clothes, known = _clothes(both, from_pid=clothes_from_pid)
    clothes_of = numbering(clothes)
    samples = [_sample(r, pid, camid, clothes_of[c]) for r, pid, camid, c in zip(both, pids, _camids(both), clothes)]
    return samples[:len(query)], samples[len(query):], known and not clothes_from_pid



def _sample(record: Record, pid: int, camid: int, clothes: int) -> Sample:
    tracklet = getattr(record, "tracklet", None)
    return Sample(record.image, pid, camid, clothes, None if tracklet is None else str(tracklet), rel_path(record))


def tracklet_groups(samples: Sequence[Sample], indices: Iterable[int] | None = None) -> list[np.ndarray]:
    """Indices of `samples` (or of those in `indices`) grouped by tracklet, in order of first
    appearance; a sample without a tracklet is a group of its own."""
    groups: dict[object, list[int]] = {}
    for i in range(len(samples)) if indices is None else indices:
        tracklet = samples[i].tracklet
        groups.setdefault(("t", tracklet) if tracklet is not None else ("i", int(i)), []).append(int(i))
    return [np.array(group, dtype=np.int64) for group in groups.values()]


def tracklet_frames(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Each tracklet's samples (in `tracklet_groups` order), its frames in name order as CAL
    globs and sorts them, whatever the order of the records: what a video clip is cut from."""
    return [sorted((samples[i] for i in group), key=lambda x: x.path) for group in tracklet_groups(samples)]
