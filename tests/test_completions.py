"""completions/: generated from the app; this test fails when they are stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlcr_cli.commands.completion import completion_script

FILES = {"bash": "dlcr.bash", "zsh": "_dlcr", "fish": "dlcr.fish"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shell", sorted(FILES))
def test_completion_scripts_are_current(shell):
    stored = (ROOT / "completions" / FILES[shell]).read_text()
    assert stored == completion_script(shell), (
        f"completions/{FILES[shell]} is stale: run `dlcr completion {shell} > completions/{FILES[shell]}`"
    )


def test_zsh_script_starts_with_compdef():
    assert (ROOT / "completions" / "_dlcr").read_text().startswith("#compdef dlcr")


def test_completion_verb(dlcr):
    run = dlcr("completion", "fish")
    assert run.code == 0 and "complete" in run.stdout and "dlcr" in run.stdout


def test_completion_of_verbs_and_options(dlcr):
    env = {"_DLCR_COMPLETE": "complete_bash", "COMP_WORDS": "dlcr ma", "COMP_CWORD": "1"}
    assert dlcr(env=env).stdout.split() == ["mask"]
    env = {"_DLCR_COMPLETE": "complete_bash", "COMP_WORDS": "dlcr mask x --backend ", "COMP_CWORD": "4"}
    assert dlcr(env=env).stdout.split() == ["segformer", "parsing"]
