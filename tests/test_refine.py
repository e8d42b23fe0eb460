"""dlcr refine: hand-made similarity cases with known refined scores, the chunked torch path
against the formula written out per query, and the command on the synthetic dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlcr_cli.reid.refine import refine_reference, refine_similarities

A, B, C = 0, 1, 2


def refine_one(s0, sk, pids, junk=None, top=5, variant_ok=None):
    s0 = torch.tensor([s0], dtype=torch.float64)
    sk = torch.tensor([sk], dtype=torch.float64)
    junk = torch.tensor([junk or [False] * s0.shape[1]])
    ok = torch.tensor([variant_ok if variant_ok is not None else [True] * sk.shape[1]])
    return refine_similarities(s0, sk, ok, junk, torch.tensor(pids), top)[0].tolist()


def test_a_variant_lifts_a_person_over_the_original_top_1_and_the_original_counts_twice():
    # T0 = [B 1.5, A 1.0], m0 = 1.5; the variant's T1 = [A 1.8, C 1.2], m1 = 1.8.
    # R(B) = 1.5 + 1.5^2 / 1.5 = 3.0; R(A) = 1.0 + 1.0^2 / 1.5 + 1.8^2 / 1.8 = 3.4667: A is the new top-1.
    # C is in T1 but not in the original top: it keeps its score.
    got = refine_one([1.0, 1.5, 0.5], [[1.8, 0.4, 1.2]], [A, B, C], top=2)
    assert got == pytest.approx([1.0 + 1 / 1.5 + 1.8, 3.0, 0.5])
    assert int(np.argmax(got)) == 0


def test_only_the_original_top_entries_move_other_images_of_the_same_person_stay():
    # top 1: T0 = [entry 0 (A, 1.2)]; entry 1 is A too but outside the top: it keeps 0.3.
    # The variant's T1 = [entry 1 (A, 1.6)]: d1[A] = 1.6, m1 = 1.6. R(A) = 1.2 + 1.2 + 1.6.
    got = refine_one([1.2, 0.3, 1.0], [[0.2, 1.6, 0.1]], [A, A, B], top=1)
    assert got == pytest.approx([1.2 + 1.44 / 1.2 + 1.6, 0.3, 1.0])


def test_junk_is_out_of_every_top_list():
    # entry 0 (A) is junk: T0 = [B 1.4, C 0.9]; it keeps its score (the metrics drop it anyway)
    got = refine_one([1.9, 1.4, 0.9], [[1.9, 0.5, 1.0]], [A, B, C], junk=[True, False, False], top=2)
    r_b = 1.4 + 1.4**2 / 1.4
    r_c = 0.9 + 0.9**2 / 1.4 + 1.0**2 / 1.0  # the variant's top without the junk: C 1.0, B 0.5
    assert got == pytest.approx([1.9, r_b + 0.5**2 / 1.0, r_c])


def test_a_query_without_variants_keeps_its_scores():
    s0 = [1.0, 1.5, 0.5]
    assert refine_one(s0, [[1.8, 0.4, 1.2]], [A, B, C], top=2, variant_ok=[False]) == pytest.approx(s0)


def test_a_missing_variant_counts_as_absent():
    with_two = refine_one([1.0, 1.5, 0.5], [[1.8, 0.4, 1.2], [0.0, 0.0, 0.0]], [A, B, C], top=2,
                          variant_ok=[True, False])
    with_one = refine_one([1.0, 1.5, 0.5], [[1.8, 0.4, 1.2]], [A, B, C], top=2)
    assert with_two == pytest.approx(with_one)


def test_fewer_gallery_entries_than_top():
    got = refine_one([1.0, 0.5], [[0.2, 1.0]], [A, B], top=5)
    assert got == pytest.approx([1.0 + 1.0 + 0.2**2 / 1.0, 0.5 + 0.25 + 1.0])


@pytest.mark.parametrize("seed", range(40))
def test_the_batched_path_equals_the_formula_per_query(seed):
    rng = np.random.default_rng(seed)
    c, g, k = rng.integers(1, 6), rng.integers(1, 40), rng.integers(1, 5)
    pids = rng.integers(0, rng.integers(1, 8), g)
    s0 = 1 + rng.uniform(-1, 1, (c, g))
    sk = 1 + rng.uniform(-1, 1, (c, k, g))
    junk = rng.random((c, g)) < 0.2
    top = int(rng.integers(1, 7))
    got = refine_similarities(torch.tensor(s0), torch.tensor(sk), torch.ones(c, k, dtype=torch.bool),
                              torch.tensor(junk), torch.tensor(pids), top).numpy()
    for i in range(c):
        want = refine_reference(s0[i], list(sk[i]), junk[i], pids, top)
        assert np.allclose(got[i], want, atol=1e-12), (i, top)


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    run = tmp_path_factory.mktemp("run") / "run"
    result = CliRunner().invoke(app, ["--device", "cpu", "train", str(synth_data), "--out", str(run), "--backbone",
                                      "builtin:small", "--image-size", "64x32", "--batch", "2x4", "--workers", "0",
                                      "--epochs", "2"])
    assert result.exit_code == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def query_variants(synth_prompted, tmp_path_factory):
    from typer.testing import CliRunner

    from dlcr_cli.cli import app

    out = tmp_path_factory.mktemp("qvar")
    result = CliRunner().invoke(app, ["inpaint", str(synth_prompted), "--splits", "query", "--backend", "recolor",
                                      "-k", "4", "--out", str(out / "images")])
    assert result.exit_code == 0, result.stderr
    (out / "qvar.jsonl").write_text(result.stdout)
    return out / "qvar.jsonl"


def test_refine_reports_before_and_after(dlcr, synth_data, trained, query_variants):
    run = dlcr("--device", "cpu", "refine", synth_data, "-c", trained, "--variants", query_variants, "--json")
    assert run.code == 0, run.stderr
    got = json.loads(run.stdout)
    assert set(got) == {"before", "after"} and list(got["after"]) == ["standard", "sc", "cc"]
    plain = dlcr("--device", "cpu", "evaluate", synth_data, "-c", trained, "--json")
    assert json.loads(plain.stdout) == got["before"]
    for name, scores in got["after"].items():
        assert scores["queries"] == got["before"][name]["queries"]
    assert "R1 before" in run.stderr and "4 variants per query" in run.stderr


def test_refine_with_variants_generated_in_process(dlcr, synth_data, trained, tmp_path):
    run = dlcr("--device", "cpu", "refine", synth_data, "-c", trained, "--generate", "--weight-free",
               "--parsing-dir", synth_data / "parsing", "--work", tmp_path / "work", "-k", "2", "--json")
    assert run.code == 0, run.stderr
    records = [json.loads(line) for line in (tmp_path / "work" / "query-variants.jsonl").read_text().splitlines()]
    queries = len(list((synth_data / "query").glob("*.png")))
    assert len(records) == 2 * queries and {r["split"] for r in records} == {"query"}
    assert "have 2 variants" in run.stderr


def test_queries_without_variants_are_counted(dlcr, synth_data, trained, query_variants, tmp_path):
    rows = query_variants.read_text().splitlines()
    some = tmp_path / "some.jsonl"
    some.write_text("\n".join(rows[:4]) + "\n")  # the 4 variants of one query
    run = dlcr("--device", "cpu", "refine", synth_data, "-c", trained, "--variants", some)
    assert run.code == 0, run.stderr
    assert "query images have no variants (a query without any keeps its original ranking)" in run.stderr


@pytest.mark.parametrize("args, code, message", [
    ((), 2, "--variants GEN, or makes them with --generate"),
    (("--variants", "x.jsonl", "--generate"), 2, "--variants GEN, or makes them with --generate"),
    (("--variants", "/no/such.jsonl"), 66, "generated data not found"),
])
def test_bad_refine_options(dlcr, synth_data, trained, args, code, message):
    run = dlcr("--device", "cpu", "refine", synth_data, "-c", trained, *args)
    assert run.code == code and message in run.stderr, run.stderr


def test_tracklet_variants_are_the_mean_of_their_frames_variants():
    from dlcr_cli.reid.data import Sample
    from dlcr_cli.reid.refine import pool_variant_tracklets

    frames = [Sample(f"q{i}", 1, 0, 0, t) for i, t in enumerate(["a", "a", "b"])]
    vf = np.zeros((3, 2, 2), np.float32)
    vf[0, 0], vf[1, 0], vf[2, 1] = (1, 0), (0, 1), (0, 3)
    ok = np.array([[True, False], [True, False], [False, True]])
    pooled, has = pool_variant_tracklets(vf, ok, frames)
    assert has.tolist() == [[True, False], [False, True]]
    assert np.allclose(pooled[0, 0], [2**-0.5, 2**-0.5]) and np.allclose(pooled[1, 1], [0, 1])


def test_refine_on_video_tracklets(dlcr, tmp_path):
    from PIL import Image

    from dlcr_cli.reid.model import build_model, save_checkpoint

    rng = np.random.default_rng(0)
    root = tmp_path / "CCVID"
    lists = {"train.txt": ["session1/001_01 001 u1", "session1/002_01 002 u1"],
             "query.txt": ["session1/010_03 010 u1", "session2/011_02 011 u1"],
             "gallery.txt": ["session1/010_07 010 u2", "session2/011_05 011 u2", "session2/012_05 012 u1"]}
    variants = []
    for name, lines in lists.items():
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(lines) + "\n")
        for line in lines:
            for frame in (1, 2):
                path = root / line.split()[0] / f"{frame:05d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)
                if name == "query.txt":
                    for k in range(2):
                        variant = tmp_path / "qvar" / f"{line.split()[0].replace('/', '_')}_{frame}_v{k}.png"
                        variant.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(variant)
                        variants.append({"image": str(variant), "source": str(path), "variant": k})
    (tmp_path / "qvar.jsonl").write_text("".join(json.dumps(v) + "\n" for v in variants))
    run_dir = save_checkpoint(build_model("builtin:small"), tmp_path / "run", {"image_size": [32, 16]})
    run = dlcr("--device", "cpu", "refine", root, "-c", run_dir, "--variants", tmp_path / "qvar.jsonl", "-k", "2",
               "--json")
    assert run.code == 0, run.stderr
    got = json.loads(run.stdout)
    assert list(got["after"]) == ["standard", "sc", "cc"]
    assert got["after"]["standard"]["queries"] + got["after"]["standard"]["skipped"] == 2  # two query tracklets
