"""Data pipeline: preprocessing outputs, SYSU/RegDB protocols, the labeled split, batches and transforms."""
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_loader import (TrainBatches, augment_with_params, load_images, normalize_images, per_image_train_transform,
                         plan_identity_batches, read_image, train_augment)
from data_manager import (load_train_data, make_split, process_gallery_sysu, process_query_sysu, process_test_regdb,
                          read_sysu_ids)
from utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, name), *args], capture_output=True, text=True,
                          timeout=300)


def assert_one_error_line(proc, fragment):
    """One 'error:' line naming the problem, no traceback (progress bars may share stderr)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in proc.stderr, proc.stderr


def npy_files(root):
    return sorted(f for f in os.listdir(root) if f.endswith(".npy") or f.startswith(".tmp_"))


# ---------------------------------------------------------------------------------------------- SYSU

def test_preprocess_sysu_arrays_match_the_folders(tiny_sysu, tmp_path):
    root = str(tmp_path / "sysu")
    shutil.copytree(tiny_sysu, root)
    proc = run_script("pre_process_sysu.py", "--data_path", root, "--img_h", "32", "--img_w", "16", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    data = load_train_data(root, "sysu")
    ids = read_sysu_ids(root, "trainval")
    for modality, cams in (("rgb", (1, 2, 4, 5)), ("ir", (3, 6))):
        expected_paths = [os.path.join(root, f"cam{cam}", f"{pid:04d}", name)
                          for pid in ids for cam in cams
                          for name in sorted(os.listdir(os.path.join(root, f"cam{cam}", f"{pid:04d}")))]
        images = data[f"{modality}_img"]
        assert images.shape == (len(expected_paths), 32, 16, 3) and images.dtype == np.uint8
        assert data[f"{modality}_label"].tolist() == [ids.index(int(p.split(os.sep)[-2])) for p in expected_paths]
        assert data[f"{modality}_cam"].tolist() == [int(p.split(os.sep)[-3][3:]) for p in expected_paths]
        # the 5th image is exactly the 5th file, decoded and resized with Lanczos
        assert np.array_equal(images[4], read_image(expected_paths[4], 16, 32))
    # --sysu_ids train: only the train list, labels re-indexed over it
    proc = run_script("pre_process_sysu.py", "--data_path", root, "--img_h", "32", "--img_w", "16", "--sysu_ids", "train")
    assert proc.returncode == 0, proc.stderr
    assert load_train_data(root, "sysu")["rgb_label"].max() == len(read_sysu_ids(root, "train")) - 1


def test_query_and_gallery_follow_the_field_protocol(tiny_sysu):
    test_ids = read_sysu_ids(tiny_sysu, "test")
    paths, pids, cams = process_query_sysu(tiny_sysu, "all")
    assert set(cams.tolist()) == {3, 6} and sorted(set(pids.tolist())) == test_ids
    assert len(paths) == len(test_ids) * 2 * 3  # 2 infrared cameras x 3 images
    assert process_query_sysu(tiny_sysu, "indoor")[0] == paths

    def agw_gallery(mode, trial):  # the AGW baseline's loop, written out independently
        random.seed(trial)
        files = []
        for pid in sorted("%04d" % i for i in test_ids):
            for cam in (["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]):
                img_dir = os.path.join(tiny_sysu, cam, pid)
                if os.path.isdir(img_dir):
                    files.append(random.choice(sorted(img_dir + "/" + i for i in os.listdir(img_dir))))
        return files

    for mode, num_cams in (("all", 4), ("indoor", 2)):
        for trial in (0, 1, 7):
            g_paths, g_pids, g_cams = process_gallery_sysu(tiny_sysu, mode, trial)
            assert [os.path.normpath(p) for p in g_paths] == [os.path.normpath(p) for p in agw_gallery(mode, trial)]
            assert len(g_paths) == len(test_ids) * num_cams
            assert g_cams.tolist() == [int(p.split(os.sep)[-3][3:]) for p in g_paths]
        assert process_gallery_sysu(tiny_sysu, mode, 3)[0] == process_gallery_sysu(tiny_sysu, mode, 3)[0]
    draws = {tuple(process_gallery_sysu(tiny_sysu, "all", t)[0]) for t in range(10)}
    assert len(draws) > 1  # trials differ


def test_sysu_split_properties():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 24)
    cams = np.tile(np.repeat([1, 2, 4, 5], 6), 5)
    ir_labels, ir_cams = np.repeat(np.arange(5), 4), np.tile([3, 3, 6, 6], 5)  # 2 per folder: floor(0.4) = 0
    split = make_split(labels, cams, ir_labels, ir_cams, "sysu", 0.2, seed=3)
    for pid in range(5):
        for cam in (1, 2, 4, 5):
            in_folder = np.flatnonzero((labels == pid) & (cams == cam))
            assert len(np.intersect1d(split["rgb_labeled"], in_folder)) == 1  # floor(0.2 * 6)
        assert len(np.intersect1d(split["ir_labeled"], np.flatnonzero(ir_labels == pid))) == 1  # at least one
    for modality, n in (("rgb", len(labels)), ("ir", len(ir_labels))):
        labeled, unlabeled = split[f"{modality}_labeled"], split[f"{modality}_unlabeled"]
        assert not np.intersect1d(labeled, unlabeled).size and len(labeled) + len(unlabeled) == n
    again = make_split(labels, cams, ir_labels, ir_cams, "sysu", 0.2, seed=3)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = make_split(labels, cams, ir_labels, ir_cams, "sysu", 0.2, seed=4)
    assert not np.array_equal(split["rgb_labeled"], other["rgb_labeled"])
    full = make_split(labels, cams, ir_labels, ir_cams, "sysu", 1.0, seed=0)
    assert len(full["rgb_unlabeled"]) == 0 and len(full["rgb_labeled"]) == len(labels)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError):
            make_split(labels, cams, ir_labels, ir_cams, "sysu", bad, seed=0)
    del rng


def test_regdb_split_takes_the_first_images_in_list_order():
    labels = np.repeat(np.arange(3), 10)
    split = make_split(labels, np.ones(30), labels, np.full(30, 2), "regdb", 0.2, seed=0)
    assert split["rgb_labeled"].tolist() == [0, 1, 10, 11, 20, 21]  # 2 of 10, exactly the released split
    assert split["ir_labeled"].tolist() == [0, 1, 10, 11, 20, 21]
    assert make_split(labels, np.ones(30), labels, np.ones(30), "regdb", 0.01, 0)["rgb_labeled"].tolist() == [0, 10, 20]


# ---------------------------------------------------------------------------------------------- RegDB

def test_preprocess_regdb_and_trial_arrays(tiny_regdb, tmp_path):
    root = str(tmp_path / "regdb")
    shutil.copytree(tiny_regdb, root)
    proc = run_script("pre_process_regdb.py", "--data_path", root, "--img_h", "32", "--img_w", "16")
    assert proc.returncode == 0, proc.stderr
    for trial in (1, 2):
        data = load_train_data(root, "regdb", trial)
        with open(os.path.join(root, "idx", f"train_visible_{trial}.txt")) as f:
            lines = [line.split() for line in f if line.strip()]
        assert len(data["rgb_img"]) == len(lines) == 4 * 10
        assert np.array_equal(data["rgb_img"][13], read_image(os.path.join(root, lines[13][0]), 16, 32))
        raw = np.array([int(label) for _, label in lines])
        assert data["rgb_label"].tolist() == np.searchsorted(np.unique(raw), raw).tolist()
        assert data["ir_label"].max() == 3 and data["rgb_cam"][0] == 1 and data["ir_cam"][0] == 2
        paths, labels = process_test_regdb(root, trial, "thermal")
        assert len(paths) == 40 and all(os.path.isfile(p) for p in paths) and "Thermal" in paths[0]


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("damage, fragment", [
    ("no_root", "not found"),
    ("no_train_ids", "train_id.txt"),
    ("bad_train_ids", "malformed"),
    ("no_cameras", "camera folders"),
    ("corrupt_image", "0002.jpg"),
])
def test_preprocess_sysu_bad_input_one_line_and_no_arrays(tiny_sysu, tmp_path, damage, fragment):
    root = str(tmp_path / "sysu")
    shutil.copytree(tiny_sysu, root)
    if damage == "no_root":
        shutil.rmtree(root)
    elif damage == "no_train_ids":
        os.remove(os.path.join(root, "exp", "train_id.txt"))
    elif damage == "bad_train_ids":
        with open(os.path.join(root, "exp", "train_id.txt"), "w") as f:
            f.write("1,2,x")
    elif damage == "no_cameras":
        for cam in range(1, 7):
            shutil.rmtree(os.path.join(root, f"cam{cam}"))
    else:  # a corrupt file among the infrared images: decoded after all visible ones
        with open(os.path.join(root, "cam6", "0001", "0002.jpg"), "wb") as f:
            f.write(b"\xff\xd8 broken")
    proc = run_script("pre_process_sysu.py", "--data_path", root, "--img_h", "32", "--img_w", "16")
    assert proc.returncode == 2
    assert_one_error_line(proc, fragment)
    if os.path.isdir(root):
        assert npy_files(root) == []


def test_preprocess_regdb_bad_input(tiny_regdb, tmp_path):
    root = str(tmp_path / "regdb")
    shutil.copytree(tiny_regdb, root)
    os.remove(os.path.join(root, "idx", "test_thermal_7.txt"))
    proc = run_script("pre_process_regdb.py", "--data_path", root, "--img_h", "32", "--img_w", "16")
    assert proc.returncode == 2
    assert_one_error_line(proc, "test_thermal_7.txt")
    assert npy_files(root) == []


def test_missing_arrays_raise_user_error(tiny_sysu, tiny_regdb):
    with pytest.raises(UserError, match="pre_process_sysu.py"):
        load_train_data(tiny_sysu, "sysu")
    with pytest.raises(UserError, match="pre_process_regdb.py"):
        load_train_data(tiny_regdb, "regdb", 1)


# ---------------------------------------------------------------------------------------------- batches, transforms

def test_identity_batches_pair_the_same_identities_across_modalities():
    rgb_labels = np.repeat(np.arange(10), 5)
    ir_labels = np.repeat(np.arange(12), 3)  # ids 10, 11 are infrared-only: never drawn
    data = {"rgb_img": np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(3, 3),
            "ir_img": np.arange(36, dtype=np.uint8).reshape(36, 1, 1, 1).repeat(3, 3)}
    rgb_pool = (np.arange(50), rgb_labels)
    ir_pool = (np.arange(36), ir_labels)
    unlabeled = np.arange(100, 140) % 50
    batches = TrainBatches(data, rgb_pool, ir_pool, 4, 3, 6, seed=1, epoch=2, rgb_unlabeled=np.arange(50),
                           ir_unlabeled=np.arange(36), num_unlabeled=8)
    assert len(batches) == 6
    for b in range(6):
        batch = batches[b]
        assert batch["rgb"].shape == (12, 1, 1, 3) and batch["rgb"].dtype == torch.uint8
        assert torch.equal(batch["rgb_label"], batch["ir_label"])
        ids = batch["rgb_label"].view(4, 3)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0].tolist())) == 4 and ids.max() < 10
        # images and labels agree with the pools (image value = its index here)
        assert torch.equal(torch.from_numpy(rgb_labels)[batch["rgb"][:, 0, 0, 0].long()], batch["rgb_label"])
        assert torch.equal(torch.from_numpy(ir_labels)[batch["ir"][:, 0, 0, 0].long()], batch["ir_label"])
        assert len(set(batch["rgb_unl_idx"].tolist())) == 8 and "rgb_unl_label" not in batch
        assert torch.equal(batch["rgb_unl"][:, 0, 0, 0].long(), batch["rgb_unl_idx"])
    same = TrainBatches(data, rgb_pool, ir_pool, 4, 3, 6, seed=1, epoch=2, rgb_unlabeled=np.arange(50),
                        ir_unlabeled=np.arange(36), num_unlabeled=8)
    assert all(torch.equal(same[b]["rgb"], batches[b]["rgb"]) for b in range(6))
    assert not torch.equal(TrainBatches(data, rgb_pool, ir_pool, 4, 3, 6, 1, 3)[0]["rgb"], batches[0]["rgb"])
    del unlabeled


def test_identity_batches_need_enough_identities():
    with pytest.raises(UserError, match="identities"):
        plan_identity_batches(np.array([0, 1]), np.array([1, 2]), 2, 2, 1, np.random.default_rng(0))


def test_batched_augmentation_equals_the_per_image_pipeline():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 20, 10, 3), dtype=torch.uint8, generator=gen)
    offsets = torch.tensor([[0, 0], [20, 20], [3, 17], [10, 10], [20, 0], [5, 9]])
    flips = torch.tensor([False, True, True, False, True, False])
    batched = augment_with_params(images, 10, offsets, flips)
    for i in range(6):
        reference = per_image_train_transform(images[i].numpy(), 10, int(offsets[i, 0]), int(offsets[i, 1]),
                                              bool(flips[i]))
        assert torch.allclose(batched[i], reference, atol=1e-6)
    out = train_augment(images, 10, torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, 20, 10) and out.dtype == torch.float32
    # normalize_images is ToTensor + Normalize
    assert torch.allclose(normalize_images(images)[2], per_image_train_transform(images[2].numpy(), 0, 0, 0, False),
                          atol=1e-6)


def test_load_images_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match="broken.jpg"):
        load_images([str(bad)], 16, 32, workers=2)
