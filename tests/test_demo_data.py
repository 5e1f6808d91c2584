"""demo_data: the synthetic datasets in the SYSU-MM01 and RegDB layouts, their renderers, and how the demo builds
them (keyed by renderer and seed, atomically, never over somebody's data)."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_manager import process_gallery_sysu, process_query_sysu, read_sysu_ids
from demo_data import DEMO_SIZES, RENDERERS, make_demo_dataset, make_demo_regdb, prepare_demo_dataset


def read_tree(root):
    """{relative path: file bytes} of a folder."""
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


def test_demo_sysu_layout_and_determinism(tmp_path):
    kwargs = dict(num_train_ids=5, num_test_ids=3, imgs_per_cam=2, num_val_ids=2, raw_h=32, raw_w=16)
    root = make_demo_dataset(str(tmp_path / "a"), seed=4, **kwargs)
    assert read_sysu_ids(root, "train") == [1, 2, 3] and read_sysu_ids(root, "val") == [4, 5]
    assert read_sysu_ids(root, "test") == [6, 7, 8]
    for cam in range(1, 7):
        assert sorted(os.listdir(os.path.join(root, f"cam{cam}"))) == [f"{pid:04d}" for pid in range(1, 9)]
        assert sorted(os.listdir(os.path.join(root, f"cam{cam}", "0003"))) == ["0001.jpg", "0002.jpg"]
    visible = np.asarray(Image.open(os.path.join(root, "cam2", "0007", "0001.jpg")), dtype=np.int64)
    infrared = np.asarray(Image.open(os.path.join(root, "cam6", "0007", "0002.jpg")), dtype=np.int64)
    assert visible.shape == infrared.shape == (32, 16, 3)
    assert np.abs(infrared - infrared.mean(axis=2, keepdims=True)).max() <= 3  # grey (up to JPEG rounding)
    assert np.abs(visible - visible.mean(axis=2, keepdims=True)).max() > 20  # coloured
    tree = read_tree(root)
    assert read_tree(make_demo_dataset(str(tmp_path / "b"), seed=4, **kwargs)) == tree
    assert read_tree(make_demo_dataset(str(tmp_path / "c"), seed=5, **kwargs)) != tree


def test_demo_identities_match_across_modalities_on_raw_pixels(tmp_path):
    """The identity cues survive the infrared rendering: even nearest-neighbour on normalised grey pixels
    matches infrared queries to their visible gallery image well above chance."""
    root = make_demo_dataset(str(tmp_path / "d"), num_train_ids=1, num_test_ids=20, imgs_per_cam=3, raw_h=64,
                             raw_w=32, seed=3)

    def grey_vectors(paths):
        x = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float64).ravel() for p in paths])
        return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)

    q_paths, q_pids, _ = process_query_sysu(root)
    hits = []
    for trial in range(3):
        g_paths, g_pids, _ = process_gallery_sysu(root, "all", trial)
        q, g = grey_vectors(q_paths), grey_vectors(g_paths)
        distance = (q ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None] - 2 * q @ g.T
        hits.append(g_pids[distance.argmin(1)] == q_pids)
    assert np.mean(hits) > 3 * (1 / 20)  # chance is 1/20


def test_demo_regdb_layout_trials_and_labels(tmp_path):
    root = make_demo_regdb(str(tmp_path / "r"), num_ids=6, imgs_per_id=4, raw_h=32, raw_w=16, seed=1, trials=3)
    assert sorted(os.listdir(os.path.join(root, "idx"))) == sorted(
        f"{split}_{modal}_{t}.txt" for split in ("train", "test") for modal in ("visible", "thermal") for t in (1, 2, 3))
    splits = []
    for trial in (1, 2, 3):
        ids = {}
        for split in ("train", "test"):
            for modal, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                with open(os.path.join(root, "idx", f"{split}_{modal}_{trial}.txt")) as f:
                    lines = [line.split() for line in f if line.strip()]
                assert all(rel.startswith(f"{folder}/") and os.path.isfile(os.path.join(root, rel)) for rel, _ in lines)
                # the label is the identity number - 1, as the folder names it
                assert all(int(label) == int(rel.split("/")[1]) - 1 for rel, label in lines)
                labels = [int(label) for _, label in lines]
                assert labels == sorted(labels) and all(labels.count(x) == 4 for x in set(labels))
                ids.setdefault(split, set(labels))
                assert ids[split] == set(labels)  # the same ids in both modalities
        assert len(ids["train"]) == len(ids["test"]) == 3 and not ids["train"] & ids["test"]
        splits.append(frozenset(ids["train"]))
    assert len(set(splits)) > 1  # trials split the ids differently
    assert read_tree(make_demo_regdb(str(tmp_path / "s"), num_ids=6, imgs_per_id=4, raw_h=32, raw_w=16, seed=1,
                                     trials=3)) == read_tree(root)



def test_demo_data_is_keyed_by_seed_built_atomically_and_other_roots_are_left_alone(tiny_sysu, tmp_path):
    sizes = dict(num_train_ids=3, num_test_ids=2, imgs_per_cam=1, raw_h=16, raw_w=8)
    root = str(tmp_path / "demo")
    stale = tmp_path / "demo.tmp-999999999"  # a killed build's leftovers (no such process)
    stale.mkdir()
    assert prepare_demo_dataset(root, seed=1, **sizes)
    assert not stale.exists() and not any(name.startswith("demo.") for name in os.listdir(tmp_path))
    seed_1 = read_tree(root)
    assert json.loads(seed_1["demo.json"]) == {"generator": "demo_data", "renderer": "stripes", "seed": 1, **sizes}
    assert not prepare_demo_dataset(root, seed=1, **sizes)  # already there: kept as it is
    assert prepare_demo_dataset(root, seed=2, **sizes)  # another seed: rebuilt in place
    seed_2 = read_tree(root)
    assert set(seed_2) == set(seed_1) and seed_2["cam1/0001/0001.jpg"] != seed_1["cam1/0001/0001.jpg"]
    assert prepare_demo_dataset(root, seed=2, renderer="luminance", **sizes)  # another renderer: rebuilt too
    assert read_tree(root)["cam1/0001/0001.jpg"] != seed_2["cam1/0001/0001.jpg"]
    assert json.loads(read_tree(root)["demo.json"])["renderer"] == "luminance"
    # a SYSU-layout root the demo did not build is somebody's data: used as it is, never rebuilt
    theirs = str(tmp_path / "theirs")
    shutil.copytree(tiny_sysu, theirs)
    before = read_tree(theirs)
    assert not prepare_demo_dataset(theirs, seed=3, **sizes)
    assert read_tree(theirs) == before


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_every_renderer_draws_the_layout_deterministically_with_grey_infrared(renderer, tmp_path):
    kwargs = dict(num_train_ids=3, num_test_ids=2, imgs_per_cam=2, raw_h=64, raw_w=32, seed=1, renderer=renderer)
    root = make_demo_dataset(str(tmp_path / "a"), **kwargs)
    assert read_sysu_ids(root, "test") == [4, 5]
    for cam in range(1, 7):
        assert sorted(os.listdir(os.path.join(root, f"cam{cam}", "0002"))) == ["0001.jpg", "0002.jpg"]
    infrared = np.asarray(Image.open(os.path.join(root, "cam3", "0002", "0001.jpg")), dtype=np.float64)
    visible = np.asarray(Image.open(os.path.join(root, "cam1", "0002", "0001.jpg")), dtype=np.float64)
    # grey: the channels agree on average (the rounded renderers add pixel noise per channel), the visible do not
    assert np.ptp(infrared.mean((0, 1))) <= 2 < np.abs(visible - visible.mean(2, keepdims=True)).mean()
    assert read_tree(make_demo_dataset(str(tmp_path / "b"), **kwargs)) == read_tree(root)
    assert set(DEMO_SIZES[renderer]) == {"num_train_ids", "num_test_ids", "imgs_per_cam"}


def test_the_temperature_renderer_breaks_the_grey_level_relation_the_luminance_one_keeps(tmp_path):
    """The same people (same seed): in luminance, the torso's infrared level follows the grey level of its visible
    colours across identities; in temperature it does not, which is what makes that renderer the harder check."""
    def visible_infrared_correlation(renderer):
        root = make_demo_dataset(str(tmp_path / renderer), num_train_ids=30, num_test_ids=0, imgs_per_cam=3,
                                 num_val_ids=0, raw_h=64, raw_w=32, seed=2, renderer=renderer)
        torso = (slice(24, 40), slice(12, 20))  # inside the torso whatever the view's shift and scale

        def level(cam, pid, grey):
            views = [np.asarray(Image.open(os.path.join(root, f"cam{cam}", f"{pid:04d}", f"{n:04d}.jpg")),
                                dtype=np.float64)[torso] for n in (1, 2, 3)]
            return np.mean([view @ grey for view in views])
        grey = np.array([0.299, 0.587, 0.114])
        visible = [level(1, pid, grey) for pid in range(1, 31)]
        infrared = [level(3, pid, np.full(3, 1 / 3)) for pid in range(1, 31)]
        return np.corrcoef(visible, infrared)[0, 1]
    assert visible_infrared_correlation("luminance") > 0.6  # measured 0.77
    assert abs(visible_infrared_correlation("temperature")) < 0.3  # measured 0.02
