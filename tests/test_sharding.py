"""Scale-out under a launcher: the plan's chunks, their dealing, and 2 CPU processes through
`accelerate launch` giving the same files and records as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlcr_cli.distributed import Shard, dealt
from dlcr_cli.fingerprint import CACHE_NAME
from dlcr_cli.records import Record
from dlcr_cli.stages.inpaint import Job, chunk_plan


def plan(variants_per_source: list[int]) -> list[Job]:
    jobs = []
    for s, k in enumerate(variants_per_source):
        source = Record(image=f"/d/{s}.png")
        jobs += [Job(source, f"{s}.png", v, k, "t", "p", 0, f"{s}_v{v}.png", Path("/o"), 0) for v in range(k)]
    return jobs


@pytest.mark.parametrize("sizes, batch", [([4] * 6, 3), ([10] * 5, 8), ([3, 2, 3, 2, 3], 2), ([5] * 3, 1), ([7], 4)])
def test_chunks_are_whole_batches_and_whole_sources(sizes, batch):
    jobs = plan(sizes)
    chunks = chunk_plan(jobs, batch)
    assert [j for chunk in chunks for j in chunk] == jobs
    start = 0
    for chunk in chunks:
        assert start % batch == 0, "a chunk starts at a batch boundary of the whole plan"
        assert chunk[0].variant == 0, "a chunk starts at a source's first variant"
        start += len(chunk)


def test_chunks_are_as_small_as_the_alignment_allows():
    # K = 4, batch 3: batch and source boundaries meet every 12 jobs.
    assert [len(c) for c in chunk_plan(plan([4] * 6), 3)] == [12, 12]
    assert [len(c) for c in chunk_plan(plan([2] * 6), 2)] == [2] * 6


def test_chunks_are_dealt_round_robin_and_each_once():
    chunks = list("abcdefg")
    shares = [dealt(chunks, Shard(rank, 3)) for rank in range(3)]
    assert shares[0] == [(0, "a"), (3, "d"), (6, "g")]
    assert sorted(n for share in shares for n, _ in share) == list(range(7))
    assert dealt(chunks, Shard()) == list(enumerate(chunks))


LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dlcr_cli"]


def dlcr_run(args: list[str], launch: bool) -> subprocess.CompletedProcess:
    command = (LAUNCH if launch else [sys.executable, "-m", "dlcr_cli"]) + args
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def same_outputs(one: Path, two: Path, one_out: str, two_out: str) -> None:
    # the digest cache is no output: each process caches the sources it painted from
    outputs = lambda root: sorted(p.relative_to(root) for p in root.rglob("*")  # noqa: E731
                                  if p.is_file() and p.name != CACHE_NAME)
    files = outputs(one)
    assert files == outputs(two)
    for rel in files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    assert one_out.replace(str(one), "OUT") == two_out.replace(str(two), "OUT")


@pytest.fixture
def six_sources(synth_prompted, tmp_path) -> Path:
    records = [json.loads(line) for line in synth_prompted.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"][:6]
    path = tmp_path / "six.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "prompts.json").write_text(json.dumps({r["clothes"]: r["prompt"] for r in records if r["prompt"]}))
    return path


def test_two_processes_paint_what_one_does(six_sources, tiny_inpaint, tmp_path):
    args = ["--device", "cpu", "inpaint", str(six_sources), "--model", str(tiny_inpaint), "--size", "64x32", "--steps",
            "4", "-k", "4", "--batch-size", "3", "--workers", "1", "--prompts", str(tmp_path / "prompts.json")]
    one = dlcr_run(args + ["--out", str(tmp_path / "one")], launch=False)
    assert one.returncode == 0, one.stderr
    two = dlcr_run(args + ["--out", str(tmp_path / "two")], launch=True)
    assert two.returncode == 0, two.stderr
    assert "process 1 of 2 paints 12 of 24 images" in two.stderr
    assert len(one.stdout.splitlines()) == 24
    same_outputs(tmp_path / "one", tmp_path / "two", one.stdout, two.stdout)


def test_two_processes_strips_failures_and_resume(six_sources, tmp_path):
    records = [json.loads(line) for line in six_sources.read_text().splitlines()]
    records[4]["mask"] = str(tmp_path / "missing.png")  # fails in process 1's chunk under K=3, batch 2
    six_sources.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["inpaint", str(six_sources), "--backend", "recolor", "--format", "strip", "-k", "3", "--batch-size", "2",
            "--prompts", str(six_sources.parent / "prompts.json")]
    one = dlcr_run(args + ["--out", str(tmp_path / "one")], launch=False)
    two = dlcr_run(args + ["--out", str(tmp_path / "two")], launch=True)
    assert one.returncode == two.returncode == 1
    ours = [line for line in two.stderr.splitlines() if line.startswith("dlcr:")]
    assert sum("missing.png" in line for line in ours) == 1, ours  # logged once, by the main process
    assert len(two.stdout.splitlines()) == 15
    same_outputs(tmp_path / "one", tmp_path / "two", one.stdout, two.stdout)
    again = dlcr_run(args + ["--out", str(tmp_path / "two")], launch=True)
    assert "0 done, 15 skipped" in again.stderr
    assert [p.name for p in (tmp_path / "two").glob(".dlcr*")] == [CACHE_NAME]  # no shard files left
