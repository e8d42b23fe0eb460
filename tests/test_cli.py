"""The CLI root: a start that imports no heavy module, global options, exit codes, tracebacks
on demand. Start-up time itself is measured by `dlcr bench startup`, never asserted here (the
test machines are shared and busy)."""

from __future__ import annotations

import os
import subprocess
import sys

HEAVY = ("torch", "transformers", "diffusers", "accelerate")

PROBE = """
import os, sys
sys.argv = {argv!r}
from dlcr_cli.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nHEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules) + "\\n")
"""


def probe(argv: list[str], env: dict | None = None) -> tuple[str, str]:
    """Run dlcr in a fresh interpreter; return stdout and the heavy modules it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
                            capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)
    tail = dict(line.split("=", 1) for line in result.stderr.splitlines() if line.startswith("HEAVY="))
    return result.stdout, tail["HEAVY"]


def test_help_imports_nothing_heavy():
    commands = ("mask", "describe", "summarize", "inpaint", "expand", "evaluate", "config", "bench")
    for argv in (["dlcr", "--help"], *(["dlcr", command, "--help"] for command in commands)):
        out, heavy = probe(argv)
        assert "Usage" in out
        assert heavy == "", f"{argv} imported {heavy}"


def test_weight_free_backends_import_no_model_library(tmp_path):
    """describe --backend colors and summarize --backend vote run where torch is slow or absent."""
    import json

    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((40, 20, 3), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 20), 5, np.uint8)).save(tmp_path / "a_parsing.png")
    record = {"image": str(tmp_path / "a.png"), "parsing": str(tmp_path / "a_parsing.png"),
              "parsing_labels": "lip", "clothes": "1_1"}
    (tmp_path / "in.jsonl").write_text(json.dumps(record) + "\n")
    out, heavy = probe(["dlcr", "describe", str(tmp_path / "in.jsonl"), "--backend", "colors"])
    assert json.loads(out)["description"] == "white shirt" and heavy == ""
    (tmp_path / "described.jsonl").write_text(out)
    out, heavy = probe(["dlcr", "summarize", str(tmp_path / "described.jsonl"), "--backend", "vote"])
    assert json.loads(out)["prompt"] == "white shirt" and heavy == ""


def test_tab_completion_imports_nothing_heavy():
    env = {"_DLCR_COMPLETE": "complete_bash", "COMP_WORDS": "dlcr mask --back", "COMP_CWORD": "2"}
    out, heavy = probe(["dlcr"], env)
    assert out.split() == ["--backend"]
    assert heavy == ""


def test_console_script_and_module_entry_points():
    for cmd in (["dlcr", "--version"], [sys.executable, "-m", "dlcr_cli", "--version"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("dlcr ")


def test_whole_help_command_in_a_real_process():
    result = subprocess.run(["dlcr", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Usage" in result.stdout


def test_usage_errors_exit_2(dlcr):
    assert dlcr("no-such-verb").code == 2
    assert dlcr("mask").code == 2  # no arguments: help, as a usage error
    run = dlcr("mask", "x", "--out", "o", "--batch-size", "0")
    assert run.code == 2 and "mask.batch_size" in run.stderr


def test_missing_input_exit_66_one_line(dlcr, tmp_path):
    run = dlcr("mask", tmp_path / "nothing", "--out", tmp_path / "o")
    assert run.code == 66
    assert run.stderr.strip() == f"dlcr: error: input not found: {tmp_path / 'nothing'}"


def test_debug_shows_the_traceback(dlcr, tmp_path):
    run = dlcr("mask", tmp_path / "nothing", "--out", tmp_path / "o", env={"DLCR_DEBUG": "1"})
    assert run.code == 66 and "Traceback" in run.stderr


def test_unavailable_device_exit_69(dlcr, tmp_path):
    from conftest import save_rgb

    save_rgb(tmp_path / "imgs" / "a.png")
    run = dlcr("--device", "cuda:3", "mask", tmp_path / "imgs", "--out", tmp_path / "o")
    assert run.code == 69 and "cuda:3" in run.stderr


def test_quiet_silences_info(dlcr, tmp_path):
    import numpy as np
    from conftest import save_labels, save_rgb

    save_rgb(tmp_path / "imgs" / "a.png")
    save_labels(tmp_path / "maps" / "a.png", np.full((40, 20), 18, np.uint8))
    args = ["mask", tmp_path / "imgs", "--backend", "parsing", "--parsing-dir", tmp_path / "maps", "--out", tmp_path / "o"]
    assert "done" in dlcr(*args).stderr
    quiet = dlcr("-q", *args, "--overwrite")
    assert quiet.code == 0 and quiet.stderr == "" and len(quiet.records) == 1


def test_synth_verb(dlcr, tmp_path):
    import json

    run = dlcr("synth", tmp_path / "d", "--ids", "4", "--cameras", "2", "--per", "1", "--outfits", "2", "--json")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["ids"] == 4 and summary["images"] == 16 and summary["counts"]["train"] == 8
    assert "16 images" in run.stderr
    for bad in (["--size", "12"], ["--outfits", "a-b"], ["--ids", "1"]):
        run = dlcr("synth", tmp_path / "e", *bad)
        assert run.code == 2 and run.stderr.startswith("dlcr: error:")
    assert not (tmp_path / "e").exists()


def test_help_and_completion_load_no_settings_model():
    """`dlcr --help` and a TAB press draw no option defaults, so they import neither
    pydantic-settings nor the settings model (what kept them above 0.2x `import torch`)."""
    light = ("pydantic_settings", "dlcr_cli.settings", "dlcr_cli.records")
    probe_light = PROBE.replace("{heavy!r}", repr(light))
    completion = {"_DLCR_COMPLETE": "complete_bash", "COMP_WORDS": "dlcr tr", "COMP_CWORD": "1"}
    for argv, env in ((["dlcr", "--help"], {}), (["dlcr"], completion)):
        result = subprocess.run([sys.executable, "-c", probe_light.format(argv=argv)], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=60)
        loaded = [line for line in result.stderr.splitlines() if line.startswith("HEAVY=")]
        assert result.stdout and loaded == ["HEAVY="], (argv, loaded)


def test_option_help_shows_the_settings_defaults(monkeypatch):
    """Drawn from the settings model when help is drawn: a renamed option (refine -k), one that
    only shares a setting's name (refine --variants, a file), sizes, lists and flags."""
    from typer.testing import CliRunner

    from dlcr_cli.cli import app
    from dlcr_cli.settings import DEFAULTS

    def help_of(*argv):
        result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        return {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│ ") and "--" in line}

    inpaint = help_of("inpaint")
    assert "[default: 768x256]" in inpaint["--size"] and "[default: 10]" in inpaint["--variants"]
    assert "[default: train]" in inpaint["--splits"] and "[default: no-compile]" in inpaint["--compile"]
    assert "[default: background,hat,hair,face,arms,legs]" in help_of("mask")["--keep"]
    assert "[default: flip]" in help_of("evaluate")["--flip"]
    refine = help_of("refine")
    assert "[default: 4]" in refine["--k"] and "[default:" not in refine["--variants"]
    monkeypatch.setattr(DEFAULTS.mask, "batch_size", 5)
    assert "[default: 5]" in help_of("mask")["--batch-size"]
