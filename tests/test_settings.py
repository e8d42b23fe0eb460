"""Settings: precedence option > env > file > default, the source of each value, bad config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from dlcr_cli.errors import ConfigError, UsageError
from dlcr_cli.settings import resolve


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_each_layer_overrides_the_one_below(tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.toml", "device = 'cpu'\n[mask]\nbatch_size = 2\ndilation = 1\nworkers = 3\n")
    monkeypatch.setenv("DLCR_MASK__DILATION", "4")
    monkeypatch.setenv("DLCR_MASK__WORKERS", "5")
    r = resolve({"mask": {"workers": 6}}, config)
    s = r.settings
    assert (s.device, s.mask.batch_size, s.mask.dilation, s.mask.workers, s.mask.model) == (
        "cpu", 2, 4, 6, "mattmdjaga/segformer_b2_clothes")
    assert r.sources["mask.model"] == "default"
    assert r.sources["mask.batch_size"] == f"file {config}"
    assert r.sources["mask.dilation"] == "env DLCR_MASK__DILATION"
    assert r.sources["mask.workers"] == "option"


def test_default_config_file_is_read_from_the_user_config_dir(tmp_path, monkeypatch):
    from dlcr_cli.settings import default_config_file

    path = default_config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(path, "[mask]\ndilation = 7\n")
    assert resolve().settings.mask.dilation == 7
    monkeypatch.setenv("DLCR_CONFIG", str(write_config(tmp_path / "o.toml", "[mask]\ndilation = 8\n")))
    assert resolve().settings.mask.dilation == 8


def test_list_settings_from_env_are_json(monkeypatch):
    monkeypatch.setenv("DLCR_MASK__KEEP", '["background", "face"]')
    assert resolve().settings.mask.keep == ["background", "face"]


@pytest.mark.parametrize("text, words", [
    ("[mask\n", ["not valid TOML", "line 1"]),
    ("[mask]\nbatch_sise = 2\n", ["mask.batch_sise", "no such setting"]),
    ("[mask]\nbackend = 'magic'\n", ["mask.backend", "segformer"]),
    ("[mask]\nkeep = ['elbow']\n", ["unknown label 'elbow'"]),
])
def test_bad_config_file_is_exit_78(tmp_path, text, words):
    config = write_config(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as err:
        resolve(None, config)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert err.value.exit_code == 78


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(None, tmp_path / "none.toml")


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("DLCR_MASK__DILATION", "-1")
    with pytest.raises(ConfigError, match="DLCR_MASK__DILATION"):
        resolve()
    monkeypatch.setenv("DLCR_MASK__DILATION", "1")
    monkeypatch.setenv("DLCR_MASK__KEEP", "hat")  # not JSON
    with pytest.raises(ConfigError, match="JSON"):
        resolve()


def test_bad_option_value_is_a_usage_error():
    with pytest.raises(UsageError, match="mask.batch_size"):
        resolve({"mask": {"batch_size": 0}})


def test_config_verb_prints_valid_toml_with_sources(dlcr, tmp_path):
    config = write_config(tmp_path / "c.toml", "[mask]\nbatch_size = 2\n")
    run = dlcr("--config", config, "--device", "cpu", "config", env={"DLCR_MASK__DILATION": "3"})
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert 'device = "cpu"  # option' in lines
    assert f"batch_size = 2  # file {config}" in lines
    assert "dilation = 3  # env DLCR_MASK__DILATION" in lines
    assert "# parsing_dir =  # unset, default" in lines
    parsed = tomllib.loads(run.stdout)
    assert parsed["mask"]["batch_size"] == 2 and parsed["models"]["trust_remote_code"] is False
    # what `dlcr config` prints is a config file that gives the same settings back
    again = dlcr("--config", write_config(tmp_path / "round.toml", run.stdout), "config", "--json")
    values = json.loads(again.stdout)
    assert values["mask"]["dilation"] == {"value": 3, "source": f"file {tmp_path / 'round.toml'}"}
    assert values["device"]["value"] == "cpu"


def test_config_verb_reports_bad_config_with_exit_78(dlcr, tmp_path):
    run = dlcr("--config", write_config(tmp_path / "c.toml", "[mask]\nnope = 1\n"), "config")
    assert run.code == 78 and "mask.nope" in run.stderr
    run = dlcr("--config", tmp_path / "missing.toml", "config")
    assert run.code == 78


def test_config_path(dlcr, tmp_path):
    assert dlcr("--config", tmp_path / "x.toml", "config", "--path").stdout.strip() == str(tmp_path / "x.toml")


@pytest.mark.parametrize("section, key", [("train", "image_size"), ("mask", "input_size"), ("evaluate", "image_size"),
                                          ("inpaint", "size")])
def test_every_size_setting_must_be_positive(section, key):
    with pytest.raises(UsageError, match=f"{section}.{key}.*positive"):
        resolve({section: {key: (0, 32)}})
    assert getattr(getattr(resolve({section: {key: (64, 32)}}).settings, section), key) == (64, 32)
