"""dlcr evaluate: feature files with hand-computed metrics, a checkpoint on synthetic data,
saved features, re-ranking, tracklets, pictures, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dlcr_cli.reid.data import EvalSetting, Sample
from dlcr_cli.reid.features import FeatureSet, load_features, pool_tracklets, save_features, settings_over_all
from dlcr_cli.reid.metrics import Labels, evaluate_reference


def unit(angles) -> np.ndarray:
    """2-d unit features at these angles (radians): a smaller angle to the query ranks first."""
    angles = np.asarray(angles, dtype=np.float64)
    return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)


# One query (pid 1, camera 0, clothes 0) and a gallery in distance order (see test_metrics):
#   g0 pid 2 other | g1 pid 1 cam 0 junk | g2 pid 1 cam 1 cl 0 | g3 pid 3 other | g4 pid 1 cam 2 cl 1 | g5 pid 4
ONE = {
    "query_feats": unit([0.0]), "gallery_feats": unit([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
    "query_pids": np.array([1]), "query_camids": np.array([0]), "query_clothes": np.array([0]),
    "gallery_pids": np.array([2, 1, 1, 3, 1, 4]), "gallery_camids": np.array([1, 0, 1, 1, 2, 0]),
    "gallery_clothes": np.array([5, 0, 0, 6, 1, 7]),
}
# standard: goods g2, g4 at ranks 2 and 4 once g1 (junk) is out; cc: g2 is junk too, g4 at 3;
# sc: g4 (other clothes) is junk, g2 at 2.
EXPECTED = {
    "standard": {"rank1": 0.0, "rank5": 1.0, "mAP": (1 / 2 + 2 / 4) / 2, "mINP": 2 / 4},
    "cc": {"rank1": 0.0, "rank5": 1.0, "mAP": 1 / 3, "mINP": 1 / 3},
    "sc": {"rank1": 0.0, "rank5": 1.0, "mAP": 1 / 2, "mINP": 1 / 2},
}


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_feature_file_gives_the_hand_computed_metrics(dlcr, tmp_path):
    run = dlcr("evaluate", "--features", npz(tmp_path / "f.npz", **ONE), "--json")
    assert run.code == 0, run.stderr
    got = json.loads(run.stdout)
    assert list(got) == ["standard", "sc", "cc"]
    for setting, want in EXPECTED.items():
        assert set(got[setting]) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "queries", "skipped"}
        assert {k: got[setting][k] for k in want} == pytest.approx(want)
        assert got[setting]["queries"] == 1 and got[setting]["skipped"] == 0
    assert "standard" in run.stderr and "50.0" in run.stderr  # the table, in percent


def test_one_setting_and_an_unknown_one(dlcr, tmp_path):
    path = npz(tmp_path / "f.npz", **ONE)
    run = dlcr("evaluate", "--features", path, "--setting", "cc", "--json")
    assert run.code == 0 and list(json.loads(run.stdout)) == ["cc"]
    run = dlcr("evaluate", "--features", path, "--setting", "cc,bogus")
    assert run.code == 2 and "no setting 'bogus'" in run.stderr and "standard, sc, cc" in run.stderr


def test_all_queries_skipped_is_counted_not_a_crash(dlcr, tmp_path):
    junk_only = {**ONE, "gallery_pids": np.array([1, 1, 2, 3, 4, 5]), "gallery_camids": np.zeros(6, int)}
    run = dlcr("evaluate", "--features", npz(tmp_path / "f.npz", **junk_only), "--json")
    assert run.code == 0, run.stderr
    for scores in json.loads(run.stdout).values():
        assert scores["queries"] == 0 and scores["skipped"] == 1 and scores["rank1"] == 0.0
    assert "no good match" in run.stderr


def test_rerank_equals_the_dense_reference(dlcr, tmp_path):
    from dlcr_cli.reid.rerank import rerank_reference

    rng = np.random.default_rng(0)
    pids_q, pids_g = rng.integers(0, 6, 12), rng.integers(0, 6, 40)
    arrays = {
        "query_feats": rng.standard_normal((12, 8)) + pids_q[:, None], "gallery_feats": rng.standard_normal((40, 8)) + pids_g[:, None],
        "query_pids": pids_q, "gallery_pids": pids_g, "query_camids": np.zeros(12, int), "gallery_camids": np.ones(40, int),
        "query_clothes": rng.integers(0, 3, 12), "gallery_clothes": rng.integers(0, 3, 40),
    }
    run = dlcr("evaluate", "--features", npz(tmp_path / "f.npz", **arrays), "--rerank", "--k1", "5", "--k2", "3",
               "--setting", "standard", "--json")
    assert run.code == 0, run.stderr
    q = arrays["query_feats"] / np.linalg.norm(arrays["query_feats"], axis=1, keepdims=True)
    g = arrays["gallery_feats"] / np.linalg.norm(arrays["gallery_feats"], axis=1, keepdims=True)
    euclid = lambda a, b: np.sqrt(np.maximum(2 - 2 * a @ b.T, 0))  # noqa: E731 - distances of unit vectors
    dist = rerank_reference(euclid(q, g), euclid(q, q), euclid(g, g), k1=5, k2=3, lambda_value=0.3)
    want = evaluate_reference(dist, Labels(pids_q, arrays["query_camids"], arrays["query_clothes"]),
                              Labels(pids_g, arrays["gallery_camids"], arrays["gallery_clothes"])).as_dict()
    assert json.loads(run.stdout)["standard"] == pytest.approx(want, abs=1e-9)
    assert "re-ranked (k1 5, k2 3, lambda 0.3)" in run.stderr


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("gallery_camids"), "no gallery_camids"),
    (lambda a: a.update(query_pids=np.array([1, 2])), "query_pids has 2 entries, query_feats 1 rows"),
    (lambda a: a.update(gallery_feats=np.zeros(6)), "gallery_feats must be an N x D array"),
    (lambda a: a.update(gallery_feats=np.zeros((6, 3))), "query features are 2-d, gallery features 3-d"),
    (lambda a: a.update(query_clothes=np.array([0.5])), "query_clothes must be a 1-d integer array"),
    (lambda a: a.update(query_feats=np.array([[np.nan, 1.0]])), "NaN or infinite"),
    (lambda a: a.update(setting_names=np.array(["x"]), setting_modes=np.array(["weird"])), "mode 'weird'"),
    (lambda a: a.update(setting_names=np.array(["x"]), setting_modes=np.array(["cc"]),
                        setting_0_query=np.array([0]), setting_0_gallery=np.array([9])), "outside 0..5"),
])
def test_malformed_feature_files_name_the_file_and_the_key(dlcr, tmp_path, change, message):
    arrays = dict(ONE)
    change(arrays)
    path = npz(tmp_path / "bad.npz", **arrays)
    run = dlcr("evaluate", "--features", path)
    assert run.code == 65, run.stderr
    assert str(path) in run.stderr and message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_unreadable_or_missing_feature_files(dlcr, tmp_path):
    run = dlcr("evaluate", "--features", tmp_path / "none.npz")
    assert run.code == 66 and "feature file not found" in run.stderr
    (tmp_path / "text.npz").write_text("not a zip")
    run = dlcr("evaluate", "--features", tmp_path / "text.npz")
    assert run.code == 65 and "not a readable .npz" in run.stderr
    pickled = {**ONE, "query_pids": np.array([{"pid": 1}], dtype=object)}
    run = dlcr("evaluate", "--features", npz(tmp_path / "pickle.npz", **pickled))
    assert run.code == 65 and "pickle.npz" in run.stderr  # never unpickled


def test_saved_settings_survive_a_round_trip(tmp_path):
    # PRCC-like: two settings over subsets of the queries, evaluated with the standard rule
    q, g = unit(np.linspace(0, 1, 4)), unit(np.linspace(0, 1, 5))
    labels = lambda n: Labels(np.arange(n) % 2, np.arange(n), np.zeros(n, int))  # noqa: E731
    settings = [EvalSetting("sc", "standard", np.array([0, 1]), np.arange(5)),
                EvalSetting("cc", "standard", np.array([2, 3]), np.arange(5))]
    saved = FeatureSet(q, g, labels(4), labels(5), settings, "prcc", [f"q{i}" for i in range(4)], None)
    loaded = load_features(save_features(saved, tmp_path / "out" / "prcc"))  # no .npz suffix appended
    assert (tmp_path / "out" / "prcc").is_file() and not list((tmp_path / "out").glob(".*tmp"))
    assert loaded.protocol == "prcc" and loaded.query_paths == saved.query_paths and loaded.gallery_paths is None
    assert [(s.name, s.mode, s.query.tolist(), s.gallery.tolist()) for s in loaded.settings] == \
        [(s.name, s.mode, s.query.tolist(), s.gallery.tolist()) for s in settings]
    assert np.array_equal(loaded.query, q) and np.array_equal(loaded.gallery_labels.camids, labels(5).camids)


def test_a_bare_feature_file_gets_every_mode_over_everything():
    settings = settings_over_all(3, 4)
    assert [s.name for s in settings] == ["standard", "sc", "cc"] and settings[2].gallery.tolist() == [0, 1, 2, 3]


def test_tracklets_average_their_frames_and_settings_follow():
    frames = [Sample(f"q{i}", pid, 0, 0, tracklet) for i, (pid, tracklet) in enumerate([(1, "a"), (1, "a"), (2, "b")])]
    gallery = [Sample(f"g{i}", pid, 1, 1, None) for i, pid in enumerate([1, 2])]
    feats = FeatureSet(unit([0.0, 1.0, 2.0]), unit([0.0, 1.0]), Labels([1, 1, 2], [0, 0, 0], [0, 0, 0]),
                       Labels([1, 2], [1, 1], [1, 1]), settings_over_all(3, 2, ["standard"]), "ccvid")
    pooled = pool_tracklets(feats, frames, gallery)
    assert pooled.query.shape == (2, 2) and pooled.query_paths == ["q0", "q2"]
    assert np.allclose(pooled.query[0], unit([0.5])[0], atol=1e-6)  # the normalised mean of 0 and 1 rad
    assert pooled.query_labels.pids.tolist() == [1, 2] and pooled.gallery.shape == (2, 2)
    assert pooled.settings[0].query.tolist() == [0, 1] and pooled.settings[0].gallery.tolist() == [0, 1]


# --- a model on the synthetic dataset -------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A builtin:small checkpoint at random init, trained for nothing, saying its image size."""
    from dlcr_cli.reid.model import build_model, save_checkpoint

    import torch

    torch.manual_seed(0)
    return save_checkpoint(build_model("builtin:small"), tmp_path_factory.mktemp("run"), {"image_size": [64, 32]})


def test_checkpoint_on_a_dataset_saves_features_that_evaluate_the_same(dlcr, synth_data, small_run, tmp_path):
    run = dlcr("--device", "cpu", "evaluate", synth_data, "-c", small_run, "--json", "--batch-size", "7",
               "--save-features", tmp_path / "f.npz", "--plot", tmp_path / "plots")
    assert run.code == 0, run.stderr
    direct = json.loads(run.stdout)
    assert list(direct) == ["standard", "sc", "cc"]  # the LTCC layout's protocol
    queries = len(list((synth_data / "query").glob("*.png")))
    assert all(s["queries"] + s["skipped"] == queries for s in direct.values())
    assert "at 64x32" in run.stderr  # the checkpoint's image size
    again = dlcr("evaluate", "--features", tmp_path / "f.npz", "--json")
    assert again.code == 0 and json.loads(again.stdout) == direct
    saved = load_features(tmp_path / "f.npz")
    assert saved.protocol == "ltcc" and saved.query.shape[1] == 512
    assert np.allclose(np.linalg.norm(saved.query, axis=1), 1, atol=1e-5)
    for name in ("cmc.png", "retrieval-standard.png", "retrieval-sc.png", "retrieval-cc.png"):
        with Image.open(tmp_path / "plots" / name) as img:
            assert img.width > 200 and img.height > 100


def test_batch_size_and_threads_change_no_feature(dlcr, synth_data, small_run, tmp_path):
    for batch, workers in ((3, 1), (64, 4)):
        run = dlcr("--device", "cpu", "evaluate", synth_data, "-c", small_run, "--batch-size", batch, "--workers",
                   workers, "--save-features", tmp_path / f"{batch}.npz")
        assert run.code == 0, run.stderr
    a, b = load_features(tmp_path / "3.npz"), load_features(tmp_path / "64.npz")
    assert np.allclose(a.query, b.query, atol=1e-5) and np.allclose(a.gallery, b.gallery, atol=1e-5)


def test_flip_adds_the_mirror_images_embedding(synth_data, small_run):
    import torch

    from dlcr_cli.reid.data import load_reid_data
    from dlcr_cli.reid.features import extract_features
    from dlcr_cli.reid.model import load_checkpoint
    from dlcr_cli.reid.transforms import load_image, test_transform

    data = load_reid_data(synth_data)
    model = load_checkpoint(small_run)
    feats = extract_features(model, data, size=(64, 32), batch_size=16, workers=2)
    image = test_transform((64, 32))(load_image(data.query[0].path))[None]
    with torch.no_grad():
        want = torch.nn.functional.normalize(model(image) + model(image.flip(-1)), dim=1)[0].numpy()
    assert np.allclose(feats.query[0], want, atol=1e-5)
    plain = extract_features(model, data, size=(64, 32), flip=False)
    assert not np.allclose(plain.query[0], want, atol=1e-3)


def test_a_missing_or_corrupt_image_is_one_line_naming_it(dlcr, synth_data, small_run, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    victim = sorted((data / "test").glob("*.png"))[3]
    victim.write_bytes(b"not a png")
    run = dlcr("--device", "cpu", "evaluate", data, "-c", small_run)
    assert run.code == 65 and str(victim) in run.stderr and "unreadable image" in run.stderr


def test_bad_combinations_and_missing_runs(dlcr, synth_data, small_run, tmp_path):
    path = npz(tmp_path / "f.npz", **ONE)
    run = dlcr("evaluate", synth_data, "--features", path)
    assert run.code == 2 and "--features evaluates a feature file alone" in run.stderr
    run = dlcr("evaluate", synth_data)
    assert run.code == 2 and "--checkpoint" in run.stderr
    run = dlcr("evaluate", synth_data, "-c", tmp_path / "no-run")
    assert run.code == 66 and "no re-id model" in run.stderr
    run = dlcr("evaluate", tmp_path / "nowhere", "-c", small_run)
    assert run.code == 66
    run = dlcr("evaluate", synth_data, "-c", small_run, "--image-size", "64")
    assert run.code == 2 and "HEIGHTxWIDTH" in run.stderr


def test_a_dataset_without_queries_is_refused(dlcr, tmp_path, small_run):
    records = tmp_path / "train.jsonl"
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 64)).save(image)
    records.write_text(json.dumps({"image": str(image), "pid": 1, "camid": 0, "split": "train"}) + "\n")
    run = dlcr("evaluate", records, "-c", small_run)
    assert run.code == 66 and "no query images" in run.stderr
