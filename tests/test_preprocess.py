"""pre_process_sysu.py and pre_process_regdb.py: the arrays against the folders and list files, and bad input
(exit code 2, one line on stderr, no traceback, no .npy left). The scripts run as the user runs them
(subprocesses) once per kind of outcome; the full list of damages runs in-process (a subprocess mostly
spends its time importing torch)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_manager import load_train_data, read_sysu_ids, sysu_image_list
from pre_process_regdb import preprocess_regdb
from pre_process_sysu import preprocess_sysu
from utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = ["--img_h", "32", "--img_w", "16"]


def start_script(name, *args):
    return subprocess.Popen([sys.executable, os.path.join(REPO, name), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_script(name, *args):
    proc = start_script(name, *args)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def pil_lanczos(paths, width, height):
    """Each file decoded and resized by PIL directly, the reference the arrays must equal."""
    return np.stack([np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.LANCZOS))
                     for path in paths])


def written_files(root):
    """The .npy files and temporary files in a dataset root."""
    return sorted(f for f in os.listdir(root) if f.endswith(".npy") or f.startswith(".tmp_"))


def copy_of(tree, tmp_path, name):
    root = str(tmp_path / name)
    shutil.copytree(tree, root)
    return root


def assert_failed_cleanly(returncode, stderr, fragment, root):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and fragment in stderr, stderr
    if os.path.isdir(root):
        assert written_files(root) == []


# ---------------------------------------------------------------------------------------------- SYSU

def test_sysu_arrays_match_the_folders(tiny_sysu, tmp_path):
    root = copy_of(tiny_sysu, tmp_path, "sysu")
    returncode, stdout, stderr = run_script("pre_process_sysu.py", "--data_path", root, *SIZE, "--workers", "2")
    assert returncode == 0, stderr
    assert sorted(written_files(root)) == sorted([f"train_{m}_resized_{n}.npy" for m in ("rgb", "ir")
                                                  for n in ("img", "label", "cam")] +
                                                 ["train_resized_ids.npy", "train_resized_sources.npy"])
    data = load_train_data(root, "sysu")
    ids = read_sysu_ids(root, "trainval")
    for modality, cams in (("rgb", (1, 2, 4, 5)), ("ir", (3, 6))):
        # the AGW order, written out: id, then camera, then sorted file name
        paths = [os.path.join(root, f"cam{cam}", f"{pid:04d}", name) for pid in ids for cam in cams
                 for name in sorted(os.listdir(os.path.join(root, f"cam{cam}", f"{pid:04d}")))]
        images = data[f"{modality}_img"]
        assert images.shape == (len(paths), 32, 16, 3) and images.dtype == np.uint8
        assert np.array_equal(images, pil_lanczos(paths, 16, 32))  # each row is its file, PIL Lanczos
        assert data[f"{modality}_label"].dtype == np.int64
        assert data[f"{modality}_label"].tolist() == [ids.index(int(p.split(os.sep)[-2])) for p in paths]
        assert data[f"{modality}_cam"].tolist() == [int(p.split(os.sep)[-3][3:]) for p in paths]
    assert np.load(os.path.join(root, "train_resized_ids.npy")).tolist() == ids  # the identity of each label
    # --sysu_ids train at training time: the train list only, relabelled in sorted id order, no second preprocessing
    train_ids = read_sysu_ids(root, "train")
    data = load_train_data(root, "sysu", sysu_ids="train")
    paths, pids, cams = sysu_image_list(root, train_ids, (3, 6))
    assert data["ir_label"].tolist() == np.searchsorted(train_ids, pids).tolist()
    assert np.array_equal(data["ir_img"], pil_lanczos(paths, 16, 32)) and data["ir_cam"].tolist() == cams.tolist()
    assert len(train_ids) < len(ids)


def damage(root, remove=(), write=None, truncate=None):
    """Break a dataset copy: remove files or folders, overwrite a file, or cut a file short (paths relative)."""
    for rel in remove:
        path = os.path.join(root, rel)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if write:
        with open(os.path.join(root, write[0]), "wb") as f:
            f.write(write[1])
    if truncate:
        with open(os.path.join(root, truncate[0]), "r+b") as f:
            f.truncate(truncate[1])


SYSU_DAMAGES = {  # name: (damage(...) arguments, what the error line must name)
    "no_root": (dict(remove=[""]), "not found"),
    "no_train_ids": (dict(remove=["exp/train_id.txt"]), "train_id.txt"),
    "no_val_ids": (dict(remove=["exp/val_id.txt"]), "val_id.txt"),
    "bad_train_ids": (dict(write=("exp/train_id.txt", b"1,2,x")), "malformed"),
    "empty_train_ids": (dict(write=("exp/train_id.txt", b"\n")), "malformed"),
    "no_cameras": (dict(remove=[f"cam{cam}" for cam in range(1, 7)]), "camera folders"),
    "id_without_infrared": (dict(remove=["cam3/0002", "cam6/0002"]), "0002 has no ir image"),
    # broken files among the infrared images, decoded after all visible ones
    "corrupt_image": (dict(write=("cam6/0001/0002.jpg", b"\xff\xd8 broken")), "cam6/0001/0002.jpg"),
    "truncated_image": (dict(truncate=("cam6/0001/0002.jpg", 300)), "cam6/0001/0002.jpg"),
}
REGDB_DAMAGES = {
    "no_root": (dict(remove=[""]), "not found"),
    "missing_list": (dict(remove=["idx/test_thermal_7.txt"]), "test_thermal_7.txt"),
    "malformed_list": (dict(write=("idx/train_visible_3.txt", b"Visible/1/v_01.bmp one\n")), "train_visible_3.txt line 1"),
    "missing_image": (dict(remove=["Thermal/3/t_06.bmp"]), "Thermal/3/t_06.bmp"),  # listed in every trial
}


@pytest.mark.parametrize("name", SYSU_DAMAGES)
def test_sysu_bad_input_names_the_problem_and_leaves_no_arrays(tiny_sysu, tmp_path, name):
    root = copy_of(tiny_sysu, tmp_path, "sysu")
    damage(root, **SYSU_DAMAGES[name][0])
    fragment = SYSU_DAMAGES[name][1]
    with pytest.raises(UserError, match=fragment) as err:
        preprocess_sysu(root, 32, 16, workers=2)
    assert "\n" not in str(err.value)
    if os.path.isdir(root):
        assert written_files(root) == []


def test_sysu_script_fails_in_one_line(tiny_sysu, tmp_path):
    # side by side: each run is mostly interpreter start-up
    runs = {}
    for name in ("no_val_ids", "corrupt_image"):
        root = copy_of(tiny_sysu, tmp_path, name)
        damage(root, **SYSU_DAMAGES[name][0])
        runs[name] = (root, SYSU_DAMAGES[name][1],
                      start_script("pre_process_sysu.py", "--data_path", root, *SIZE, "--workers", "2"))
    root = copy_of(tiny_sysu, tmp_path, "bad_size")
    runs["bad_size"] = (root, "--img_h", start_script("pre_process_sysu.py", "--data_path", root, "--img_h", "0"))
    for root, fragment, proc in runs.values():
        _, stderr = proc.communicate(timeout=300)
        assert_failed_cleanly(proc.returncode, stderr, fragment, root)


# ---------------------------------------------------------------------------------------------- RegDB

def read_list(root, name):
    with open(os.path.join(root, "idx", name)) as f:
        return [(rel, int(label)) for rel, label in (line.split() for line in f if line.strip())]


def test_regdb_arrays_match_the_lists_of_every_trial(tiny_regdb, tmp_path):
    root = copy_of(tiny_regdb, tmp_path, "regdb")
    returncode, _, stderr = run_script("pre_process_regdb.py", "--data_path", root, *SIZE, "--workers", "2")
    assert returncode == 0, stderr
    expected_files = [f"regdb_{m}_{kind}.npy" for m in ("visible", "thermal") for kind in ("img", "paths")]
    expected_files += [f"regdb_{split}_{m}_{t}_{kind}.npy" for split in ("train", "test") for m in ("visible", "thermal")
                       for t in range(1, 11) for kind in ("index", "label")]
    assert written_files(root) == sorted(expected_files + ["regdb_sources.npy"])
    for modal in ("visible", "thermal"):
        images = np.load(os.path.join(root, f"regdb_{modal}_img.npy"))
        rel_paths = np.load(os.path.join(root, f"regdb_{modal}_paths.npy")).tolist()
        listed = {rel for t in range(1, 11) for split in ("train", "test")
                  for rel, _ in read_list(root, f"{split}_{modal}_{t}.txt")}
        assert rel_paths == sorted(listed)  # each listed image decoded once
        assert images.shape == (len(rel_paths), 32, 16, 3) and images.dtype == np.uint8
        assert np.array_equal(images, pil_lanczos([os.path.join(root, p) for p in rel_paths], 16, 32))
        for split in ("train", "test"):
            for t in (1, 7):
                lines = read_list(root, f"{split}_{modal}_{t}.txt")
                index = np.load(os.path.join(root, f"regdb_{split}_{modal}_{t}_index.npy"))
                assert [rel_paths[i] for i in index] == [rel for rel, _ in lines]
                assert np.load(os.path.join(root, f"regdb_{split}_{modal}_{t}_label.npy")).tolist() == \
                    [label for _, label in lines]
    for trial in (1, 7):
        data = load_train_data(root, "regdb", trial)
        for modality, modal, cam in (("rgb", "visible", 1), ("ir", "thermal", 2)):
            lines = read_list(root, f"train_{modal}_{trial}.txt")
            raw = np.array([label for _, label in lines])
            assert data[f"{modality}_img"].shape == (len(lines), 32, 16, 3)
            assert np.array_equal(data[f"{modality}_img"], pil_lanczos([os.path.join(root, r) for r, _ in lines], 16, 32))
            assert data[f"{modality}_label"].tolist() == np.searchsorted(np.unique(raw), raw).tolist()  # 0..C-1
            assert data[f"{modality}_label"].dtype == data[f"{modality}_cam"].dtype == np.int64
            assert set(data[f"{modality}_cam"].tolist()) == {cam}
        assert data["rgb_label"].max() == data["ir_label"].max() == 3


@pytest.mark.parametrize("name", REGDB_DAMAGES)
def test_regdb_bad_input_names_the_problem_and_leaves_no_arrays(tiny_regdb, tmp_path, name):
    root = copy_of(tiny_regdb, tmp_path, "regdb")
    damage(root, **REGDB_DAMAGES[name][0])
    with pytest.raises(UserError, match=REGDB_DAMAGES[name][1]):
        preprocess_regdb(root, 32, 16, workers=2)
    if os.path.isdir(root):
        assert written_files(root) == []


def test_regdb_script_fails_in_one_line(tiny_regdb, tmp_path):
    root = copy_of(tiny_regdb, tmp_path, "regdb")
    damage(root, **REGDB_DAMAGES["missing_image"][0])
    returncode, _, stderr = run_script("pre_process_regdb.py", "--data_path", root, *SIZE, "--workers", "2")
    assert_failed_cleanly(returncode, stderr, REGDB_DAMAGES["missing_image"][1], root)


@pytest.mark.parametrize("dataset", ["sysu", "regdb"])
def test_arrays_of_a_failed_rerun_stay_as_they_were(dataset, tiny_sysu, tiny_regdb, tmp_path):
    """A run that fails after a good one leaves the good arrays untouched (no mix of old and new)."""
    preprocess = preprocess_sysu if dataset == "sysu" else preprocess_regdb
    root = copy_of(tiny_sysu if dataset == "sysu" else tiny_regdb, tmp_path, dataset)
    preprocess(root, 32, 16, workers=0)
    before = {name: np.load(os.path.join(root, name)) for name in written_files(root)}
    broken = "cam3/0001/0001.jpg" if dataset == "sysu" else "Thermal/3/t_06.bmp"
    damage(root, write=(broken, b"nope"))
    with pytest.raises(UserError, match=broken):
        preprocess(root, 40, 20, workers=0)
    assert written_files(root) == sorted(before)
    assert all(np.array_equal(np.load(os.path.join(root, name)), array) for name, array in before.items())


# ---------------------------------------------------------------------------------------------- stale arrays

def touch_later(path):
    """Move a file's modification time one minute on (an image edited after preprocessing)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 60 * 10 ** 9))


@pytest.mark.parametrize("dataset, change", [
    ("sysu", ("edit", "cam1/0002/0001.jpg")), ("sysu", ("add", "cam4/0003/0099.jpg")),
    ("sysu", ("remove", "cam6/0001/0002.jpg")), ("sysu", ("edit", "exp/val_id.txt")),
    ("regdb", ("edit", "Thermal/3/t_06.bmp")), ("regdb", ("edit", "idx/train_visible_4.txt")),
])
def test_arrays_whose_folder_changed_since_preprocessing_are_refused(dataset, change, tiny_sysu, tiny_regdb,
                                                                     tmp_path):
    preprocess = preprocess_sysu if dataset == "sysu" else preprocess_regdb
    root = copy_of(tiny_sysu if dataset == "sysu" else tiny_regdb, tmp_path, dataset)
    preprocess(root, 32, 16, workers=0)
    load_train_data(root, dataset, 1)  # fresh arrays load
    kind, rel = change
    path = os.path.join(root, rel)
    if kind == "edit":
        touch_later(path)
    elif kind == "add":
        Image.new("RGB", (8, 16)).save(path)
    else:
        os.remove(path)
    with pytest.raises(UserError, match=f"changed since its arrays were written.*pre_process_{dataset}.py") as err:
        load_train_data(root, dataset, 1)
    assert "\n" not in str(err.value)
    preprocess(root, 32, 16, workers=0)  # preprocessing again makes them current
    load_train_data(root, dataset, 1)


def test_arrays_without_a_recorded_signature_are_refused(tiny_sysu_preprocessed, tmp_path):
    root = copy_of(tiny_sysu_preprocessed, tmp_path, "old")
    os.remove(os.path.join(root, "train_resized_sources.npy"))  # arrays written by an older version
    with pytest.raises(UserError, match="do not record which files.*pre_process_sysu.py"):
        load_train_data(root, "sysu")
