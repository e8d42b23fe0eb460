"""Runs on the Hub: -c takes a hub id, loaded through huggingface_hub's real cache layout
(blobs, snapshots, refs) offline, --revision picks a snapshot; `dlcr push` builds the folder
and model card it uploads (the upload API captured), --dry-run writes them; and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = "owner/cal-synth"
MAIN, OTHER = "a" * 40, "b" * 40  # commit hashes


def cache_snapshot(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """huggingface_hub's cache layout for `folder`'s files at `commit`: content-addressed
    blobs, the snapshot's relative symlinks to them, and refs naming the commit."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for source in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / source.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """HF_HUB_CACHE in tmp. huggingface_hub reads the variable once, at import (already done
    in this process): its constant is set too; a fresh `dlcr` process reads the variable."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE  # conftest: set before huggingface_hub was imported
    return cache


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from dlcr_cli.synth import synthesize

    root = tmp_path_factory.mktemp("hub-data")
    synthesize(root, ids=6, cameras=2, per=2, height=64, width=32, seed=0)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Two builtin:small models at different random inits, as `dlcr push` uploads a model."""
    import torch

    from dlcr_cli.reid.model import build_model, save_checkpoint

    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folders.append(save_checkpoint(build_model("builtin:small"), tmp_path_factory.mktemp(f"model{seed}"),
                                       {"image_size": [64, 32], "epoch": 1}))
    return folders[0], folders[1]


def scores(dlcr, *args) -> dict:
    run = dlcr("--device", "cpu", "evaluate", *args, "--json", "--workers", "1")
    assert run.code == 0, run.stderr
    return json.loads(run.stdout)


def test_the_cache_layout_is_huggingface_hubs(hub_cache, models):
    from huggingface_hub import scan_cache_dir

    cache_snapshot(hub_cache, REPO, models[0], MAIN)
    cache_snapshot(hub_cache, REPO, models[1], OTHER, refs=("v2",))
    (repo,) = scan_cache_dir(hub_cache).repos
    assert repo.repo_id == REPO and repo.repo_type == "model"
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {MAIN: {"main"}, OTHER: {"v2"}}
    assert {f.file_name for r in repo.revisions for f in r.files} == {"model.safetensors", "model.json"}


def test_evaluate_loads_a_hub_id_from_the_cache_and_revision_picks_the_snapshot(dlcr, hub_cache, models, data):
    cache_snapshot(hub_cache, REPO, models[0], MAIN)
    cache_snapshot(hub_cache, REPO, models[1], OTHER, refs=("v2",))
    local = [scores(dlcr, data, "-c", folder) for folder in models]
    assert local[0] != local[1]  # two models that rank differently: the revision is seen
    run = dlcr("--device", "cpu", "evaluate", data, "-c", REPO, "--json", "--workers", "1")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == local[0]
    assert f"{REPO} (main)" in run.stderr and f"snapshots/{MAIN}" in run.stderr  # says what it loaded
    assert scores(dlcr, data, "-c", REPO, "--revision", "v2") == local[1]
    assert scores(dlcr, data, "-c", REPO, "--revision", MAIN) == local[0]  # a commit hash
    assert scores(dlcr, data, "-c", REPO, "--revision", OTHER) == local[1]


def test_embed_and_export_take_a_hub_id_and_its_revision(dlcr, hub_cache, models, data, tmp_path):
    """Both resolve -c / RUN through run_model, so a hub id at a revision is the local folder."""
    import numpy as np

    cache_snapshot(hub_cache, REPO, models[0], MAIN)
    cache_snapshot(hub_cache, REPO, models[1], OTHER, refs=("v2",))
    for name, ref, folder in (("main", None, models[0]), ("v2", "v2", models[1])):
        pinned = ["--revision", ref] if ref else []
        hub = dlcr("--device", "cpu", "embed", data, "-c", REPO, *pinned, "--out", tmp_path / f"hub-{name}.npz")
        local = dlcr("--device", "cpu", "embed", data, "-c", folder, "--out", tmp_path / f"local-{name}.npz")
        assert hub.code == 0 and local.code == 0, hub.stderr + local.stderr
        with np.load(tmp_path / f"hub-{name}.npz") as a, np.load(tmp_path / f"local-{name}.npz") as b:
            assert np.array_equal(a["feats"], b["feats"])
    exported = dlcr("export", REPO, "--revision", "v2", "--onnx", tmp_path / "v2.onnx", "--json")
    assert exported.code == 0, exported.stderr
    assert f"snapshots/{OTHER}" in exported.stderr


def test_a_fresh_process_honours_hf_home_and_hf_hub_offline(models, data, tmp_path):
    """The variables as a user sets them: HF_HOME (its hub/ is the cache), HF_HUB_OFFLINE=1."""
    cache_snapshot(tmp_path / "hf" / "hub", REPO, models[1], OTHER)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    got = subprocess.run([sys.executable, "-m", "dlcr_cli", "--device", "cpu", "evaluate", str(data), "-c", REPO,
                          "--json", "--workers", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    local = CliRunner().invoke(app, ["--device", "cpu", "evaluate", str(data), "-c", str(models[1]), "--json",
                                     "--workers", "1"])
    assert json.loads(got.stdout) == json.loads(local.stdout)


def one_line_error(run) -> str:
    """The error: one line, the last on stderr (after the log's info lines), no traceback."""
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("dlcr: error: ")]
    assert errors == lines[-1:] and "Traceback" not in run.stderr, run.stderr
    return errors[0]


def test_a_hub_id_not_in_the_cache_offline_is_one_line_unavailable(dlcr, hub_cache, models, data):
    run = dlcr("--device", "cpu", "evaluate", data, "-c", "owner/absent")
    assert run.code == 69
    line = one_line_error(run)
    assert "'owner/absent'" in line and "HF_HUB_OFFLINE" in line and str(hub_cache) in line
    cache_snapshot(hub_cache, REPO, models[0], MAIN)
    run = dlcr("--device", "cpu", "refine", data, "-c", REPO, "--revision", "nope", "--variants", data)
    assert run.code == 69 and "revision nope" in one_line_error(run)


def test_a_cached_repository_without_a_model_is_66(dlcr, hub_cache, data, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("# not a dlcr model\n")
    cache_snapshot(hub_cache, "owner/other", tmp_path / "other", MAIN)
    run = dlcr("evaluate", data, "-c", "owner/other")
    assert run.code == 66 and "holds no dlcr re-id model" in one_line_error(run)


def test_local_paths_that_hold_no_model_are_66(dlcr, hub_cache, models, data, tmp_path):
    run = dlcr("evaluate", data, "-c", tmp_path / "no" / "such" / "run")
    assert run.code == 66 and "no such folder" in one_line_error(run)
    (tmp_path / "empty").mkdir()
    for verb in ("evaluate", "refine"):
        run = dlcr(verb, data, "-c", tmp_path / "empty", *(["--variants", data] if verb == "refine" else []))
        assert run.code == 66 and f"no re-id model in {tmp_path / 'empty'}" in one_line_error(run)
    run = dlcr("evaluate", data, "-c", models[0], "--revision", "v2")
    assert run.code == 2 and "is a local folder" in one_line_error(run)
    run = dlcr("push", tmp_path / "empty", REPO, "--dry-run", tmp_path / "up")
    assert run.code == 66 and "no re-id model" in one_line_error(run)
    run = dlcr("push", tmp_path / "nowhere", REPO, "--dry-run", tmp_path / "up")
    assert run.code == 66 and "no such run folder" in one_line_error(run)
    run = dlcr("push", models[0], "not/a/repo", "--dry-run", tmp_path / "up")
    assert run.code == 2 and "owner/name" in one_line_error(run)


# --- push -----------------------------------------------------------------------------------

# Two settings without a `dlcr train` option, so the card's command needs DLCR_TRAIN__* for them.
TRAIN_ENV = {"DLCR_TRAIN__CLOTHES_START": "1", "DLCR_TRAIN__MILESTONES": "[1]"}
SMALL = ("--backbone", "builtin:small", "--image-size", "64x32", "--batch", "2x4", "--workers", "0")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    """A real 3-epoch run evaluated every epoch, keeping best/."""
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    out = tmp_path_factory.mktemp("hub-run") / "run"
    env = {**TRAIN_ENV, "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("xdg"))}  # before conftest's isolation
    got = CliRunner().invoke(app, ["--device", "cpu", "train", str(data), "--out", str(out), *SMALL, "--epochs", "3",
                                   "--eval-every", "1", "--lr", "3e-3"], env=env)
    assert got.exit_code == 0, got.stderr
    assert (out / "best" / "model.json").is_file()
    return out


@pytest.fixture
def hub_api(monkeypatch):
    """Online with a token, and HfApi's create_repo / create_branch / upload_folder captured
    (the folder copied as it is when the upload reads it)."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        calls["upload_folder"] = kwargs
        calls["files"] = {p.name: p.read_bytes() for p in folder.iterdir()}
        calls["token"] = self.token

        class Info:
            commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/{'c' * 40}"

        return Info()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def card_parts(card: str) -> tuple[dict, str]:
    yaml = pytest.importorskip("yaml")
    assert card.startswith("---\n")
    front, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def table_rows(body: str, first: str) -> dict[str, list[str]]:
    """The markdown table whose header starts with `first`: {first cell: other cells}."""
    rows, inside = {}, False
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == first:
            inside = True
        elif inside and cells and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
        elif inside and not cells:
            break
    return rows


def test_push_uploads_the_best_model_the_records_and_a_card(dlcr, run, hub_api, tmp_path, monkeypatch, data):
    got = dlcr("push", run, REPO, "--private", "--revision", "v1")
    assert got.code == 0, got.stderr
    assert got.stdout.strip() == f"https://huggingface.co/{REPO}/commit/{'c' * 40}"
    assert hub_api["create_repo"] == {"repo_id": REPO, "private": True, "exist_ok": True}
    assert hub_api["create_branch"] == {"repo_id": REPO, "branch": "v1", "exist_ok": True}
    assert hub_api["upload_folder"]["repo_id"] == REPO and hub_api["upload_folder"]["revision"] == "v1"
    assert hub_api["token"] == "hf_test_token"
    files = hub_api["files"]
    assert set(files) == {"model.safetensors", "model.json", "settings.json", "metrics.jsonl", "README.md"}
    for name in ("model.safetensors", "model.json"):  # the best epoch's model, as evaluate -c RUN loads
        assert files[name] == (run / "best" / name).read_bytes()
    for name in ("settings.json", "metrics.jsonl"):
        assert files[name] == (run / name).read_bytes()

    front, body = card_parts(files["README.md"].decode())
    assert front["library_name"] == "dlcr" and set(front["tags"]) >= {"person-reid", "clothes-changing", "dlcr"}
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert f"epoch {best['epoch']} of 3, the run's best/" in body and "selected on the test set" in body
    assert "ltcc" in body  # the dataset (the synthetic data is in LTCC's layout)
    table = table_rows(body, "setting")
    assert list(table) == list(best["evaluation"]) == ["standard", "sc", "cc"]
    for setting, row in table.items():
        want = best["evaluation"][setting]
        assert row[:6] == [f"{100 * want[k]:.1f}" for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")]
        assert row[6:] == [str(want["queries"]), str(want["skipped"])]
    history = table_rows(body, "epoch")
    assert list(history) == ["1", "2", "3"]
    assert f"dlcr evaluate DATASET -c {REPO} --revision v1" in body
    assert "dlcr embed" in body and "dlcr export" in body

    # the training command retrains the same run: every setting as recorded
    (command,) = re.findall(r"```bash\n(.*dlcr train .*)\n```", body)
    words = shlex.split(command)
    env = dict(w.split("=", 1) for w in words[: words.index("dlcr")])
    assert env == TRAIN_ENV
    args = words[words.index("dlcr") + 1:]
    assert args[:2] == ["train", str(data)] and "--out" in args
    monkeypatch.chdir(tmp_path)
    again = dlcr("--device", "cpu", *args, env=env)
    assert again.code == 0, again.stderr
    out = tmp_path / args[args.index("--out") + 1]
    assert json.loads((out / "settings.json").read_text()) == json.loads((run / "settings.json").read_text())
    assert (out / "best" / "metrics.json").read_text() == (run / "best" / "metrics.json").read_text()


def test_dry_run_writes_the_folder_offline_and_evaluate_loads_it_by_hub_id(dlcr, run, hub_cache, data, tmp_path,
                                                                           monkeypatch):
    from huggingface_hub import HfApi

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run uploads nothing")

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, refuse)
    got = dlcr("push", run, REPO, "--dry-run", tmp_path / "up")  # HF_HUB_OFFLINE=1: no network needed
    assert got.code == 0, got.stderr
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == [
        "README.md", "metrics.jsonl", "model.json", "model.safetensors", "settings.json"]
    assert "nothing was sent" in got.stderr
    cache_snapshot(hub_cache, REPO, tmp_path / "up", MAIN)
    by_id = dlcr("--device", "cpu", "evaluate", data, "-c", REPO, "--json", "--workers", "1")
    assert by_id.code == 0, by_id.stderr
    assert json.loads(by_id.stdout) == scores(dlcr, data, "-c", run)  # the run's best/, as pushed
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert f"the model of epoch {best['epoch']}, the best cc rank-1" in by_id.stderr


def test_push_epoch_last_sends_the_last_model(dlcr, run, tmp_path):
    got = dlcr("push", run, REPO, "--epoch", "last", "--dry-run", tmp_path / "up")
    assert got.code == 0, got.stderr
    assert (tmp_path / "up" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    card = (tmp_path / "up" / "README.md").read_text()
    assert "the last epoch's (3 of 3), not the run's best/" in card
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]["evaluation"]
    assert table_rows(card_parts(card)[1], "setting")["cc"][0] == f"{100 * last['cc']['rank1']:.1f}"


def test_push_offline_or_without_a_token_is_one_line_unavailable(dlcr, run, hub_api, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    got = dlcr("push", run, REPO)
    assert got.code == 69 and "HF_HUB_OFFLINE" in one_line_error(got) and "upload_folder" not in hub_api
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    got = dlcr("push", run, REPO)
    assert got.code == 69 and "upload_folder" not in hub_api
    line = one_line_error(got)
    assert "huggingface-cli login" in line and "HF_TOKEN" in line

    from huggingface_hub import HfApi

    def unreachable(self, **kwargs):
        raise ConnectionError("could not connect to huggingface.co")

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(HfApi, "upload_folder", unreachable)
    got = dlcr("push", run, REPO)
    assert got.code == 69 and "could not connect" in one_line_error(got)


def test_importing_the_cli_imports_no_huggingface_hub():
    code = "import sys, dlcr_cli.cli; print('huggingface_hub' in sys.modules)"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == "False", got.stderr
