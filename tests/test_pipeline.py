"""Real bash pipelines in a subprocess: records flow between processes through pipes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -o pipefail; {script}"], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={"PATH": _path(), "HF_HUB_OFFLINE": "1", "HOME": str(cwd)})


def _path() -> str:
    import os

    return os.environ["PATH"]


def test_synth_then_mask_into_head(tmp_path):
    run = bash("dlcr synth data --ids 4 --cameras 2 --per 1 && "
               "dlcr mask data --backend parsing --parsing-dir data/parsing --out work | head -n 3", tmp_path)
    assert run.returncode == 141 or run.returncode == 0, run.stderr  # mask sees the closed pipe
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["dataset"] == "ltcc" and r["parsing_labels"] == "lip"
        mask = np.asarray(Image.open(r["mask"]))
        labels = np.asarray(Image.open(r["parsing"]))
        assert mask.shape == labels.shape == Image.open(r["image"]).size[::-1]
        # the synthetic people wear clothes: some pixels are repainted, face and background kept
        assert 0 < (mask == 255).mean() < 0.6
        assert (mask[labels == 13] == 0).all() and (mask[labels == 5] == 255).all()
    assert "Traceback" not in run.stderr


def test_records_flow_through_a_pipe_and_jq_style_edits_survive(tmp_path):
    run = bash(
        "dlcr synth data --ids 2 --cameras 2 --per 1 --outfits 2 && "
        "dlcr mask data --backend parsing --parsing-dir data/parsing --out w1 "
        "| python3 -c 'import sys, json\n"
        "for l in sys.stdin: r = json.loads(l); r[\"tag\"] = r[\"rel\"]; print(json.dumps(r))' "
        "| dlcr mask - --backend parsing --parsing-dir data/parsing --out w2 --dilation 1 > out.jsonl",
        tmp_path)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["tag"] == r["rel"] for r in records)
    assert all("/w2/masks/" in r["mask"] for r in records)


def test_exit_code_of_a_failed_item_reaches_the_shell(tmp_path):
    run = bash("dlcr synth data --ids 2 --cameras 2 --per 1 --outfits 2 && rm data/parsing/train/001_1_c1_000.png && "
               "dlcr -q mask data --backend parsing --parsing-dir data/parsing --out w | wc -l", tmp_path)
    assert run.returncode == 1
    assert run.stdout.strip() == "7"
    assert "001_1_c1_000.png" in run.stderr


def _wait_until_idle(pid: int, quiet: float = 0.5, limit: float = 60) -> None:
    """Until the process's CPU time has not moved for `quiet` seconds (Linux /proc)."""
    import time

    def cpu() -> int:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    start = last_change = time.monotonic()
    seen = cpu()
    while time.monotonic() - start < limit:
        time.sleep(0.05)
        now = cpu()
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= quiet and time.monotonic() - start >= 1.0:
            return


def test_interrupt_exits_130_with_one_line(tmp_path):
    """Ctrl-C while dlcr waits for records on stdin: exit 130, no traceback."""
    import signal

    # A test runner started in the background of a script inherits SIGINT ignored, and so
    # would dlcr (Python then installs no KeyboardInterrupt handler): give it a terminal's.
    proc = subprocess.Popen(["dlcr", "mask", "-", "--backend", "parsing", "--parsing-dir", str(tmp_path),
                             "--out", str(tmp_path / "o")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_until_idle(proc.pid)  # started and blocked on stdin, however loaded the machine is
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == "dlcr: error: interrupted"


def test_stage_one_language_half_in_bash(tmp_path):
    """synth | mask | describe | summarize with the weight-free backends, one process each."""
    run = bash(
        "dlcr synth data --ids 4 --cameras 2 --per 2 > /dev/null && "
        "dlcr mask data --backend parsing --parsing-dir data/parsing --out work "
        "| dlcr describe - --backend colors "
        "| dlcr summarize - --backend vote --prompts-out prompts.json > prompted.jsonl", tmp_path)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in (tmp_path / "prompted.jsonl").read_text().splitlines()]
    prompts = json.loads((tmp_path / "prompts.json").read_text())
    assert len(records) == len(list((tmp_path / "data").glob("*/*.png")))
    assert {r["clothes"] for r in records} == set(prompts)
    outfits = json.loads((tmp_path / "data" / "outfits.json").read_text())
    for r in records:
        assert r["prompt"] == prompts[r["clothes"]]
        pid, outfit = r["clothes"].split("_")
        shoes = outfits[pid][outfit]["shoes"][1]
        assert f"{shoes} shoes" in r["prompt"] and f"{shoes} shoes" in r["description"]
    assert "Traceback" not in run.stderr
