"""`dlcr completion SHELL`: the shell completion script (also kept in completions/)."""

from __future__ import annotations

import os
import subprocess
import sys
from enum import Enum
from typing import Annotated

import typer


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion_script(shell: str) -> str:
    """The script click generates for `dlcr`, from a fresh process (as a TAB press runs it)."""
    env = {**os.environ, "_DLCR_COMPLETE": f"source_{shell}"}
    result = subprocess.run([sys.executable, "-m", "dlcr_cli"], env=env, capture_output=True, text=True, check=True)
    return result.stdout.lstrip("\n")  # zsh's starts with a blank line; #compdef must be first


def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the TAB-completion script for a shell.

    Examples:

        dlcr completion bash > ~/.local/share/bash-completion/completions/dlcr

        dlcr completion zsh > "${fpath[1]}/_dlcr"

        dlcr completion fish > ~/.config/fish/completions/dlcr.fish
    """
    sys.stdout.write(completion_script(shell.value))
