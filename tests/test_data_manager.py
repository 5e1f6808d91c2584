"""data_manager: SYSU/RegDB protocols (query/gallery against the field's own loop), the labeled split and
training-array loading errors."""
import os
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from data_manager import (load_regdb_split, load_train_data, make_split, process_gallery_sysu, process_query_sysu,
                          read_sysu_ids, sysu_image_list)
from demo_data import make_demo_dataset
from utils import UserError, save_arrays_together


def camera_of(path):
    return int(path.split(os.sep)[-3][3:])


def identity_of(path):
    return int(path.split(os.sep)[-2])


# ---------------------------------------------------------------------------------------------- SYSU protocols

def test_id_lists(tiny_sysu):
    train, val, test = (read_sysu_ids(tiny_sysu, which) for which in ("train", "val", "test"))
    assert read_sysu_ids(tiny_sysu, "trainval") == sorted(train + val) == [1, 2, 3, 4, 5, 6]
    assert not set(train) & set(val) and not set(train + val) & set(test) and test == [7, 8, 9, 10]
    with pytest.raises(UserError, match="unknown"):
        read_sysu_ids(tiny_sysu, "all")


def test_query_is_every_infrared_test_image_in_agw_order(tiny_sysu):
    test_ids = read_sysu_ids(tiny_sysu, "test")
    expected = [os.path.join(tiny_sysu, f"cam{cam}", f"{pid:04d}", name)
                for pid in test_ids for cam in (3, 6)
                for name in sorted(os.listdir(os.path.join(tiny_sysu, f"cam{cam}", f"{pid:04d}")))]
    for mode in ("all", "indoor"):
        paths, pids, cams = process_query_sysu(tiny_sysu, mode)
        assert paths == expected and len(paths) == len(test_ids) * 2 * 3
        assert pids.dtype == np.int64 and pids.tolist() == [identity_of(p) for p in paths]
        assert cams.tolist() == [camera_of(p) for p in paths]
    with pytest.raises(UserError, match="mode"):
        process_query_sysu(tiny_sysu, "outdoor")


def agw_gallery(data_path, mode, trial):
    """The AGW baseline's process_gallery_sysu loop, written out independently (global random, string ids)."""
    random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(data_path, "exp/test_id.txt")) as file:
        ids = ["%04d" % int(y) for y in file.read().splitlines()[0].split(",")]
    files_rgb = []
    for pid in sorted(ids):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                files_rgb.append(random.choice(new_files))
    return files_rgb


def test_gallery_is_the_field_draw(tiny_sysu, tmp_path):
    # a copy with uneven folders (sizes 1..5) and one missing camera folder, so draws differ per folder
    root = str(tmp_path / "sysu")
    shutil.copytree(tiny_sysu, root)
    for k, pid in enumerate(read_sysu_ids(root, "test")):
        for extra in range(k + 1):
            Image.new("RGB", (8, 16)).save(os.path.join(root, "cam1", f"{pid:04d}", f"x{extra}.jpg"))
    shutil.rmtree(os.path.join(root, "cam4", "0008"))
    test_ids = read_sysu_ids(root, "test")
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        draws = set()
        for trial in range(10):
            paths, pids, camids = process_gallery_sysu(root, mode, trial)
            assert [os.path.normpath(p) for p in paths] == [os.path.normpath(p) for p in agw_gallery(root, mode, trial)]
            # one image per existing (id, visible camera) folder, ids sorted, cameras in order
            folders = [(pid, cam) for pid in test_ids for cam in cams if not (pid == 8 and cam == 4)]
            assert list(zip(pids.tolist(), camids.tolist())) == folders
            assert [(identity_of(p), camera_of(p)) for p in paths] == folders
            assert paths == process_gallery_sysu(root, mode, trial)[0]  # a trial is reproducible
            draws.add(tuple(paths))
        assert len(draws) > 5  # trials differ


def test_gallery_leaves_the_global_random_state_alone(tiny_sysu):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    process_gallery_sysu(tiny_sysu, "all", 4)
    assert random.random() == expected


def test_sysu_image_list_order(tiny_sysu):
    paths, pids, cams = sysu_image_list(tiny_sysu, [3, 1], (5, 2))
    assert [(identity_of(p), camera_of(p)) for p in paths] == [(1, 5)] * 3 + [(1, 2)] * 3 + [(3, 5)] * 3 + [(3, 2)] * 3
    assert paths[:3] == sorted(paths[:3]) and pids.tolist() == [1] * 6 + [3] * 6 and cams.tolist()[:4] == [5, 5, 5, 2]


# ---------------------------------------------------------------------------------------------- RegDB protocols

def test_regdb_test_split_comes_from_the_arrays_in_list_order(tiny_regdb_preprocessed):
    root = tiny_regdb_preprocessed
    for trial in (1, 10):
        arrays = load_regdb_split(root, "test", trial)
        for modality, modal in (("rgb", "visible"), ("ir", "thermal")):
            with open(os.path.join(root, "idx", f"test_{modal}_{trial}.txt")) as f:
                lines = [line.split() for line in f if line.strip()]
            assert arrays[f"{modality}_label"].dtype == np.int64
            assert arrays[f"{modality}_label"].tolist() == [int(label) for _, label in lines]
            # each row is its listed file, decoded by PIL at the arrays' size
            expected = np.stack([np.asarray(Image.open(os.path.join(root, rel)).convert("RGB").resize((16, 32),
                                                                                                      Image.LANCZOS))
                                 for rel, _ in lines])
            assert np.array_equal(arrays[f"{modality}_img"], expected)
    with pytest.raises(UserError, match="pre_process_regdb.py"):
        load_regdb_split(root, "test", 11)


# ---------------------------------------------------------------------------------------------- split

def uneven_sysu_labels(seed):
    """Labels and cameras of 6 identities with random folder sizes (0..9 images per camera), shuffled order."""
    rng = np.random.default_rng(seed)
    modalities = {}
    for modality, cams in (("rgb", (1, 2, 4, 5)), ("ir", (3, 6))):
        sizes = rng.integers(0, 10, (6, len(cams)))
        sizes[:, 0] = np.maximum(sizes[:, 0], 1)  # every identity has images in both modalities
        labels = np.repeat(np.repeat(np.arange(6), len(cams)), sizes.ravel())
        cams_of = np.repeat(np.tile(cams, 6), sizes.ravel())
        order = rng.permutation(len(labels))
        modalities[modality] = (labels[order], cams_of[order])
    return modalities


@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0])
def test_sysu_split_counts_per_folder_and_one_per_identity(ratio):
    data = uneven_sysu_labels(0)
    split = make_split(*data["rgb"], *data["ir"], "sysu", ratio, seed=3)
    for modality, (labels, cams) in data.items():
        labeled, unlabeled = split[f"{modality}_labeled"], split[f"{modality}_unlabeled"]
        assert labeled.dtype == unlabeled.dtype == np.int64
        assert np.array_equal(labeled, np.sort(labeled)) and np.array_equal(unlabeled, np.sort(unlabeled))
        assert not np.intersect1d(labeled, unlabeled).size
        assert np.array_equal(np.union1d(labeled, unlabeled), np.arange(len(labels)))
        is_labeled = np.isin(np.arange(len(labels)), labeled)
        for pid in range(6):
            for cam in np.unique(cams):
                folder = (labels == pid) & (cams == cam)
                floor = int(np.floor(ratio * folder.sum() + 1e-9))
                # floor(ratio * n) per folder; one extra only where the identity would have none
                assert floor <= is_labeled[folder].sum() <= max(floor, 1)
            assert is_labeled[labels == pid].sum() == max(1, sum(
                int(np.floor(ratio * ((labels == pid) & (cams == cam)).sum() + 1e-9)) for cam in np.unique(cams)))
    if ratio == 1.0:
        assert len(split["rgb_unlabeled"]) == len(split["ir_unlabeled"]) == 0


def test_sysu_split_is_a_pure_function_of_its_seed():
    data = uneven_sysu_labels(1)
    first = make_split(*data["rgb"], *data["ir"], "sysu", 0.2, seed=3)
    again = make_split(*data["rgb"], *data["ir"], "sysu", 0.2, seed=3)
    other = make_split(*data["rgb"], *data["ir"], "sysu", 0.2, seed=4)
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert not np.array_equal(first["rgb_labeled"], other["rgb_labeled"])
    # a folder of 5 at ratio 0.2 labels one image, chosen by the seed: over seeds, every image gets its turn
    labels, cams = np.zeros(5, dtype=np.int64), np.ones(5, dtype=np.int64)
    chosen = {int(make_split(labels, cams, labels, cams + 2, "sysu", 0.2, seed)["rgb_labeled"][0]) for seed in range(40)}
    assert chosen == {0, 1, 2, 3, 4}


def test_regdb_split_takes_the_first_images_in_list_order():
    labels = np.array([5, 9, 5, 9, 5, 9, 5, 9, 5, 9, 2, 2, 2, 2, 2])  # interleaved list, not sorted by label
    cams = np.ones(15, dtype=np.int64)
    split = make_split(labels, cams, labels, cams + 1, "regdb", 0.4, seed=0)
    assert split["rgb_labeled"].tolist() == [0, 1, 2, 3, 10, 11]  # floor(0.4 * 5) = 2 each, in list order
    assert split["ir_labeled"].tolist() == split["rgb_labeled"].tolist()
    ten = np.repeat(np.arange(3), 10)
    assert make_split(ten, ten, ten, ten, "regdb", 0.2, 7)["rgb_labeled"].tolist() == [0, 1, 10, 11, 20, 21]
    assert make_split(ten, ten, ten, ten, "regdb", 0.01, 7)["ir_labeled"].tolist() == [0, 10, 20]  # at least one


@pytest.mark.parametrize("ratio", [0.0, -0.2, 1.01, 2])
def test_split_rejects_a_ratio_outside_zero_one(ratio):
    labels = np.arange(4)
    with pytest.raises(UserError, match="label_ratio"):
        make_split(labels, labels, labels, labels, "sysu", ratio, seed=0)


# ---------------------------------------------------------------------------------------------- arrays

def test_missing_or_inconsistent_arrays_name_the_preprocessing_script(tiny_sysu, tiny_regdb, tmp_path):
    with pytest.raises(UserError, match="pre_process_sysu.py"):
        load_train_data(tiny_sysu, "sysu")
    with pytest.raises(UserError, match="pre_process_regdb.py"):
        load_train_data(tiny_regdb, "regdb", 1)
    with pytest.raises(UserError, match="not found"):
        load_train_data(str(tmp_path / "nowhere"), "sysu")
    with pytest.raises(UserError, match="unknown dataset"):
        load_train_data(tiny_sysu, "market")
    root = tmp_path / "short_cams"
    root.mkdir()
    arrays = {"img": np.zeros((4, 8, 4, 3), np.uint8), "label": np.zeros(4, np.int64), "cam": np.ones(3, np.int64)}
    save_arrays_together({str(root / f"train_{modality}_resized_{name}.npy"): array
                          for modality in ("rgb", "ir") for name, array in arrays.items()})
    np.save(root / "train_resized_ids.npy", np.array([1]))
    with pytest.raises(UserError, match="re-run python pre_process_sysu.py"):
        load_train_data(str(root), "sysu")
    arrays.update(label=np.array([0, -1, 0, 0]), cam=np.ones(4, np.int64))
    save_arrays_together({str(root / f"train_{modality}_resized_{name}.npy"): array
                          for modality in ("rgb", "ir") for name, array in arrays.items()})
    with pytest.raises(UserError, match="negative labels"):
        load_train_data(str(root), "sysu")


def test_save_arrays_together_writes_all_or_nothing(tmp_path):
    (tmp_path / "a_file").write_text("")
    good, bad = str(tmp_path / "a.npy"), str(tmp_path / "a_file" / "b.npy")  # b's folder cannot be made
    with pytest.raises(UserError, match="cannot write .*b.npy"):
        save_arrays_together({good: np.arange(3), bad: np.arange(2)})
    assert os.listdir(tmp_path) == ["a_file"]  # neither a.npy nor a temporary file
    save_arrays_together({good: np.arange(3)})
    assert np.load(good).tolist() == [0, 1, 2] and sorted(os.listdir(tmp_path)) == ["a.npy", "a_file"]
    # the mode a plain open() gives (umask applied), not the temporary file's private 0600
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(good).st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------- SYSU multi-shot

@pytest.fixture(scope="module")
def multi_shot_sysu(tmp_path_factory):
    """A SYSU-layout root whose visible folders hold 12, 11 or 10 images, one holds 7 (fewer than the 10
    drawn) and one is missing."""
    root = make_demo_dataset(str(tmp_path_factory.mktemp("multi") / "SYSU-MM01"), num_train_ids=1, num_test_ids=3,
                             imgs_per_cam=12, raw_h=16, raw_w=8, seed=5)
    for k, pid in enumerate(read_sysu_ids(root, "test")):  # cam1: 12, 11, 10 images
        for name in [f"{n:04d}.jpg" for n in range(1, 13)][:k]:
            os.remove(os.path.join(root, "cam1", f"{pid:04d}", name))
    for name in os.listdir(os.path.join(root, "cam2", "0003"))[:5]:
        os.remove(os.path.join(root, "cam2", "0003", name))
    shutil.rmtree(os.path.join(root, "cam5", "0004"))
    return root


@pytest.fixture
def global_numpy_state_restored():
    state = np.random.get_state()
    yield
    np.random.set_state(state)


def field_multi_shot_gallery(data_path, mode, trial):
    """The field's process_gallery_sysu with gall_mode='multi', written out independently (global random state,
    string ids), run right after np.random.seed(trial). Where the field's np.random.choice would raise (a folder
    of fewer than 10 images), the folder's files are taken in order, drawing nothing: our documented choice."""
    random.seed(trial)
    np.random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(data_path, "exp/test_id.txt")) as file:
        ids = ["%04d" % int(y) for y in file.read().splitlines()[0].split(",")]
    files_rgb = []
    for pid in sorted(ids):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                if len(new_files) < 10:
                    files_rgb.extend(new_files)
                else:
                    files_rgb.extend(np.random.choice(new_files, 10, replace=False))
    return [os.path.normpath(str(path)) for path in files_rgb]


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_multi_shot_gallery_is_the_field_draw_after_seeding_numpy_with_the_trial(multi_shot_sysu, mode,
                                                                                 global_numpy_state_restored):
    cams = (1, 2, 4, 5) if mode == "all" else (1, 2)
    draws = set()
    for trial in (0, 1, 7):
        paths, pids, camids = process_gallery_sysu(multi_shot_sysu, mode, trial, gallery_mode="multi")
        assert [os.path.normpath(p) for p in paths] == field_multi_shot_gallery(multi_shot_sysu, mode, trial)
        assert pids.tolist() == [identity_of(p) for p in paths] and camids.tolist() == [camera_of(p) for p in paths]
        counts = {}
        for folder in zip(pids.tolist(), camids.tolist()):
            counts[folder] = counts.get(folder, 0) + 1
        expected = {(pid, cam): 7 if (pid, cam) == (3, 2) else 10 for pid in (2, 3, 4) for cam in cams
                    if (pid, cam) != (4, 5)}
        assert counts == expected and len(set(paths)) == len(paths)  # no image twice
        assert paths == process_gallery_sysu(multi_shot_sysu, mode, trial, "multi")[0]  # reproducible
        draws.add(tuple(paths))
    assert len(draws) == 3


def test_multi_shot_covers_the_cases_the_field_cannot_run(multi_shot_sysu):
    small = sorted(os.listdir(os.path.join(multi_shot_sysu, "cam2", "0003")))
    with pytest.raises(ValueError):  # the field's draw on a folder of 7
        np.random.RandomState(0).choice(small, 10, replace=False)
    paths = process_gallery_sysu(multi_shot_sysu, "indoor", 0, "multi")[0]
    assert sorted(os.path.basename(p) for p in paths if camera_of(p) == 2 and identity_of(p) == 3) == small


def test_multi_shot_leaves_the_global_random_states_alone(multi_shot_sysu, global_numpy_state_restored):
    random.seed(5)
    np.random.seed(5)
    expected = random.random(), np.random.random()
    random.seed(5)
    np.random.seed(5)
    process_gallery_sysu(multi_shot_sysu, "all", 3, "multi")
    assert (random.random(), np.random.random()) == expected


def test_gallery_mode_default_and_errors(multi_shot_sysu):
    assert process_gallery_sysu(multi_shot_sysu, "all", 2)[0] == process_gallery_sysu(multi_shot_sysu, "all", 2,
                                                                                       "single")[0]
    with pytest.raises(UserError, match="gallery mode"):
        process_gallery_sysu(multi_shot_sysu, "all", 0, "all")
