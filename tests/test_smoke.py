"""dlcr bench smoke: the whole run on a CPU (what a CPU can run runs, the CUDA-only checks say
why they were skipped), and the runner's verdicts, budget, selection and command handling."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dlcr_cli.bench import smoke

CUDA_ONLY = {"oom", "offload"}
SLOW_ON_CPU = {"compile"}


@pytest.fixture
def run_smoke(dlcr, monkeypatch):
    """`dlcr --device cpu bench smoke --quick ...` in-process, as if the machine had no GPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return lambda *args: dlcr("--device", "cpu", "bench", "smoke", "--quick", *args)


def _by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_the_whole_smoke_on_a_cpu(run_smoke, tmp_path):
    result = run_smoke("--json", "--out", tmp_path)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    checks = _by_name(report)
    assert list(checks) == list(smoke.CHECKS)  # every check reported, in order
    assert report["ok"] is True and report["failed"] == [] and set(report["skipped"]) == CUDA_ONLY | SLOW_ON_CPU
    for name in CUDA_ONLY:
        assert checks[name]["ok"] is None and checks[name]["skipped"].startswith("needs CUDA")
    assert "--only compile" in checks["compile"]["skipped"]
    for name, c in checks.items():
        assert set(c) >= {"name", "ok", "seconds", "skipped", "error"}
        if name not in CUDA_ONLY | SLOW_ON_CPU:
            assert c["ok"] is True and c["error"] is None and c["seconds"] > 0, c
    # what the checks measured, not only that they ran
    assert checks["env"]["torch"] and checks["env"]["gpu"] is None
    assert checks["inpaint"]["dtypes"] == {"unet": "float32", "vae": "float32", "text_encoder": "float32"}
    assert checks["inpaint"]["repeat_max_diff"] == 0 and checks["inpaint"]["split_max_diff"] <= 2
    assert {"id", "clothes", "cal"} <= set(checks["cal"]["losses"][0])
    assert checks["cal-video"]["dim"] == 256 and {"id", "clothes", "cal"} <= set(checks["cal-video"]["losses"][0])
    assert checks["features"]["fp32_vs_bf16_max_diff"] == 0  # no autocast without CUDA: the same arithmetic
    assert checks["metrics"]["max_same_distances_diff"] == 0
    assert checks["train"]["epoch"] == 2 and checks["resume"]["metrics_epochs"] == [1, 2, 3]
    assert checks["ddp"]["backends"] == ["gloo"] and checks["ddp"]["ddp_modules"] > 0
    assert checks["expand"]["generated"] == 2 * checks["expand"]["sources"] > 0
    assert checks["describe"]["described"] == checks["describe"]["records"] > 0
    assert set(checks["refine"]) >= {"standard", "cc"}
    assert checks["bench-evaluate"]["agree"] is True and checks["bench-evaluate"]["precision"]["float32"] == "ieee"
    assert checks["bench-inpaint"]["arch"] == "tiny" and checks["bench-train"]["arch"] == "small"
    # the work folder was kept, with each command's logs
    assert (tmp_path / "logs" / "train.err").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
    for name in checks:
        assert name in result.stderr  # the table
    ran = len(smoke.CHECKS) - len(CUDA_ONLY | SLOW_ON_CPU)
    assert f"{ran} of {ran} checks that ran are ok, 3 skipped" in result.stderr


def _patched(monkeypatch, name: str, fn) -> None:
    monkeypatch.setitem(smoke.CHECKS, name, replace(smoke.CHECKS[name], fn=fn))


def test_a_failed_check_exits_1_and_is_named(run_smoke, monkeypatch):
    _patched(monkeypatch, "env", lambda s: ({"measured": 7}, ["the GPU caught fire"]))
    result = run_smoke("--only", "env,cal", "--json")
    assert result.code == 1
    report = json.loads(result.stdout)
    checks = _by_name(report)
    assert report["ok"] is False and report["failed"] == ["env"]
    assert checks["env"]["ok"] is False and checks["env"]["error"] == "the GPU caught fire"
    assert checks["env"]["measured"] == 7  # what it measured is kept
    assert checks["cal"]["ok"] is True
    assert "bench smoke: 1 of 2 checks failed: env" in result.stderr.splitlines()[-1]


def test_a_crash_in_a_check_is_its_result_without_a_traceback(run_smoke, monkeypatch):
    def crash(s):
        raise RuntimeError("kernel image not found")

    _patched(monkeypatch, "features", crash)
    result = run_smoke("--only", "features,rerank", "--json")
    assert result.code == 1
    checks = _by_name(json.loads(result.stdout))
    assert checks["features"]["error"].startswith("RuntimeError: kernel image not found")
    assert "test_smoke.py" in checks["features"]["error"]  # where it happened
    assert checks["rerank"]["ok"] is True  # the others still ran
    assert "Traceback" not in result.stderr and "kernel image not found" in result.stderr


def test_a_spent_budget_skips_the_remaining_checks(run_smoke, monkeypatch):
    _patched(monkeypatch, "env", lambda s: (time.sleep(1.2), ({}, []))[1])
    result = run_smoke("--only", "env,features,metrics", "--budget", "1", "--json")
    assert result.code == 0, result.stderr  # skipped is not failed
    report = json.loads(result.stdout)
    assert report["skipped"] == ["features", "metrics"]
    for name in ("features", "metrics"):
        assert "budget (1 s) was spent" in _by_name(report)[name]["skipped"]


def test_only_runs_the_named_checks_and_a_cpu_skips_the_cuda_ones(run_smoke):
    result = run_smoke("--only", "oom,offload,features", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == ["oom", "offload", "features"]  # in the smoke's order
    assert report["skipped"] == ["oom", "offload"]


def test_naming_a_check_that_is_slow_on_a_cpu_runs_it_there():
    compile_, oom = smoke.CHECKS["compile"], smoke.CHECKS["oom"]
    assert "--only compile" in smoke.skip_reason(compile_, cuda=False, named=False)
    assert smoke.skip_reason(compile_, cuda=False, named=True) is None
    assert smoke.skip_reason(compile_, cuda=True, named=False) is None
    assert smoke.skip_reason(oom, cuda=False, named=True).startswith("needs CUDA")  # cannot, named or not


def test_an_unknown_check_is_a_usage_error(run_smoke):
    result = run_smoke("--only", "env,warp-drive")
    assert result.code == 2 and "warp-drive" in result.stderr and "bench-inpaint" in result.stderr


def test_a_failing_command_gives_its_exit_code_and_stderr_tail(tmp_path):
    code = "import sys; sys.stderr.write('x' * 5000 + ' the real error'); sys.exit(3)"
    with pytest.raises(smoke.Failed) as failed:
        smoke.run_command("boom", [sys.executable, "-c", code], tmp_path, dict(os.environ), timeout=60)
    message = str(failed.value)
    assert message.startswith("exit 3:") and message.endswith("the real error") and len(message) < 900
    assert (tmp_path / "boom.err").read_text().endswith("the real error")  # the whole log is kept


def _running(pid: int) -> bool:
    """The process exists and is no zombie (a killed child nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_command_past_the_budget_is_stopped_with_its_children(tmp_path):
    pids = tmp_path / "pids"
    code = ("import os, subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(600)']); open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}'); "
            "time.sleep(600)")
    with pytest.raises(smoke.Failed, match="timed out"):
        smoke.run_command("slow", [sys.executable, "-c", code, str(pids)], tmp_path, dict(os.environ), timeout=5)
    assert pids.is_file(), "the command had started"
    for pid in map(int, pids.read_text().split()):
        for _ in range(100):  # a killed process lingers until the kernel has torn it down
            if not _running(pid):
                break
            time.sleep(0.1)
        assert not _running(pid), f"process {pid} outlived the command's stop"


def test_a_traceback_on_stderr_fails_a_command_that_exits_0(tmp_path):
    code = "import sys; sys.stderr.write('Traceback (most recent call last):\\n  oops\\n')"
    with pytest.raises(smoke.Failed, match="traceback"):
        smoke.run_command("quiet", [sys.executable, "-c", code], tmp_path, dict(os.environ), timeout=60)


def test_the_tail_leaves_out_torch_distributed_info_lines():
    text = ("dlcr: epoch 1/2\n[I1202 02:11:19.214 logger.cpp:223] [Rank 0]: DDP Initialized with: \nworld_size: 1\n"
            "backend_name: gloo\n[rank0]:[I1202 02:11:19.2 reducer.cpp:132] Reducer initialized\n"
            "dlcr: error: something real")
    assert smoke._meaningful(text) == "dlcr: epoch 1/2\ndlcr: error: something real"


def test_help_lists_examples_and_imports_nothing_heavy():
    import subprocess
    from pathlib import Path

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dlcr_cli.cli import app\n"
        "result = CliRunner().invoke(app, ['bench', 'smoke', '--help'])\n"
        "assert result.exit_code == 0 and '--budget' in result.stdout and 'Examples' in result.stdout, result.output\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
