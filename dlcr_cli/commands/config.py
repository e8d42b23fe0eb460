"""`dlcr config`: the resolved settings and where each value came from."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from dlcr_cli.commands.common import state


def config(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout: {key: {value, source}}.")] = False,
    path: Annotated[bool, typer.Option("--path", help="Print only the config file dlcr reads.")] = False,
) -> None:
    """Print the resolved settings, each with its source (default, file, env or option).

    The output is itself a valid config.toml: save it, edit it, pass it with --config.

    Precedence: option > environment (DLCR_SECTION__KEY, e.g. DLCR_MASK__BATCH_SIZE=4) >
    config file (--config, else $DLCR_CONFIG, else the user config dir) > defaults.

    Examples:

        dlcr config

        DLCR_MASK__DILATION=3 dlcr --device cpu config --json | jq .mask.dilation

        dlcr config > ~/.config/dlcr/config.toml
    """
    from dlcr_cli.settings import config_path

    app = state(ctx)
    if path:
        sys.stdout.write(f"{config_path(app.config)[0]}\n")
        return
    resolved = app.resolve()
    values = resolved.settings.model_dump(mode="json")
    if as_json:
        sys.stdout.write(json.dumps(_with_sources(values, resolved.sources), indent=2) + "\n")
    else:
        sys.stdout.write(_as_toml(values, resolved.sources))


def _with_sources(values: dict[str, Any], sources: dict[str, str], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        dotted = prefix + key
        if isinstance(value, dict) and dotted not in sources:
            out[key] = _with_sources(value, sources, dotted + ".")
        else:
            out[key] = {"value": value, "source": sources[dotted]}
    return out


def _as_toml(values: dict[str, Any], sources: dict[str, str]) -> str:
    """TOML with each value's source as a comment; unset (None) values are commented out."""
    top = [(k, v) for k, v in values.items() if not isinstance(v, dict) or k in sources]
    sections = [(k, v) for k, v in values.items() if isinstance(v, dict) and k not in sources]
    lines = [_toml_line(k, v, sources[k]) for k, v in top]
    for name, section in sections:
        lines.append(f"\n[{name}]")
        lines.extend(_toml_line(k, v, sources[f"{name}.{k}"]) for k, v in section.items())
    return "\n".join(lines) + "\n"


def _toml_line(key: str, value: Any, source: str) -> str:
    if value is None:
        return f"# {key} =  # unset, {source}"
    return f"{key} = {json.dumps(value, ensure_ascii=False)}  # {source}"
