"""The process group under a launcher: its backend follows --device (not the host), its
barrier really waits, a single launched process takes the multi-process path, and DDP trains
backbones with parameters the forward never uses (DINOv2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dlcr_cli.distributed import Shard, backend_for, current_shard

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
SMALL = ("--backbone", "builtin:small", "--image-size", "64x32", "--batch", "2x4", "--workers", "0")


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


def test_the_backend_follows_the_device_not_the_host(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, a CPU run
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for("cpu") == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl" and backend_for("cuda:0") == "nccl"


def test_a_launched_process_is_on_the_multi_process_path(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert not current_shard().active
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert current_shard() == Shard(0, 1, 0, launched=True) and current_shard().active
    assert Shard(1, 2).active and not Shard(1, 2).is_main


def test_the_barrier_waits_for_every_process(tmp_path):
    """Process 2 writes its file late; process 1 must find it after the barrier (a barrier that
    does nothing, as accelerate's was on CPU hosts, lets it look too early)."""
    script = tmp_path / "barrier.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from dlcr_cli.distributed import barrier, join_processes, leave_processes
        rank = int(os.environ["RANK"])
        backend = join_processes("cpu")
        flag = Path({str(tmp_path)!r}) / "late"
        if rank == 1:
            time.sleep(2)
            flag.write_text("here")
        barrier()
        if rank == 0:
            print(backend, flag.exists(), flush=True)
        leave_processes()
    """))
    run = subprocess.run([*TORCHRUN, "--nproc_per_node", "2", str(script)], capture_output=True, text=True,
                         env=env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["gloo", "True"]


@pytest.mark.parametrize("processes", [1, 2])
def test_ddp_trains_a_backbone_with_unused_parameters(tmp_path, processes):
    """DINOv2 under DDP (gloo, CPU): its mask_token is frozen instead of stopping the first step;
    one launched process runs the same path (how a single GPU checks the multi-GPU code)."""
    from tiny_models import build_tiny_dinov2

    data = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "dlcr_cli", "synth", str(data), "--ids", "4", "--cameras", "2",
                           "--per", "2", "--size", "64x32"], capture_output=True, text=True, env=env())
    assert made.returncode == 0, made.stderr
    backbone = build_tiny_dinov2(tmp_path / "dinov2")
    args = ["-v", "--device", "cpu", "train", str(data), *SMALL, "--backbone", str(backbone), "--epochs", "2",
            "--out", str(tmp_path / "run")]
    run = subprocess.run([*TORCHRUN, "--nproc_per_node", str(processes), "-m", "dlcr_cli", *args],
                         capture_output=True, text=True, env={**env(), "DLCR_TRAIN__CLOTHES_START": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"process group: gloo, process 1 of {processes}" in run.stderr
    assert "mask_token" in run.stderr and run.stderr.count("epoch 2/2:") == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
