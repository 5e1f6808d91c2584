"""--split_file: a run trained on a given labeled/unlabeled split, from a run's split.json or from the released
code's lists (idx/train_{visible,thermal}[_TRIAL]_{l,ul}.txt, written here as its split script writes them), and
the splits it refuses."""
import json
import os
import random

import pytest

from data_manager import load_train_data, read_split_file, read_sysu_ids
from train_helpers import FAST, outputs, results_of, run_train, with_flag
from utils import UserError


def write_released_sysu_lists(root, folder, seed=0, ratio=0.2):
    """The released split script's lists for a SYSU-layout root: per camera, per identity of exp/train_id.txt (in
    that file's order, the label is its position), random.sample of int(ratio * n) files labeled, the rest
    unlabeled, lines 'camC/PPPP/file label'. Returns {(modal, part): [relative paths]}."""
    rng = random.Random(seed)
    with open(os.path.join(root, "exp", "train_id.txt")) as f:
        train_ids = [int(token) for token in f.read().split(",") if token.strip()]
    lines = {(modal, part): [] for modal in ("visible", "thermal") for part in ("l", "ul")}
    for cam in range(1, 7):
        modal = "thermal" if cam in (3, 6) else "visible"
        for label, pid in enumerate(train_ids):
            folder_path = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            if not os.path.isdir(folder_path):
                continue
            files = sorted(os.listdir(folder_path))
            labeled = set(rng.sample(files, int(len(files) * ratio)))
            for name in files:
                lines[modal, "l" if name in labeled else "ul"].append((f"cam{cam}/{pid:04d}/{name}", label))
    os.makedirs(folder, exist_ok=True)
    for (modal, part), entries in lines.items():
        with open(os.path.join(folder, f"train_{modal}_{part}.txt"), "w") as f:
            f.writelines(f"{path} {label}\n" for path, label in entries)
    return {key: [path for path, _ in entries] for key, entries in lines.items()}


def row_paths(root, modality, sysu_ids):
    """The relative path of each row of the arrays, rebuilt from the folders (the preprocessing order)."""
    data = load_train_data(root, "sysu", sysu_ids=sysu_ids)
    ids = read_sysu_ids(root, "train" if sysu_ids == "train" else "trainval")
    cams = (3, 6) if modality == "ir" else (1, 2, 4, 5)
    paths = [f"cam{cam}/{pid:04d}/{name}" for pid in ids for cam in cams
             for name in sorted(os.listdir(os.path.join(root, f"cam{cam}", f"{pid:04d}")))]
    assert len(paths) == len(data[f"{modality}_label"])
    return data, paths


def test_the_released_lists_map_to_the_rows_of_their_images(tiny_sysu_preprocessed, tmp_path):
    lists = write_released_sysu_lists(tiny_sysu_preprocessed, str(tmp_path / "idx"), ratio=0.4)
    data = load_train_data(tiny_sysu_preprocessed, "sysu", sysu_ids="train")
    split, kind = read_split_file(str(tmp_path / "idx"), data, tiny_sysu_preprocessed, "sysu", sysu_ids="train")
    assert kind == "released lists"
    for modality, modal in (("rgb", "visible"), ("ir", "thermal")):
        _, paths = row_paths(tiny_sysu_preprocessed, modality, "train")
        for part, key in (("l", "labeled"), ("ul", "unlabeled")):
            assert sorted(paths[row] for row in split[f"{modality}_{key}"]) == sorted(lists[modal, part])
        assert len(split[f"{modality}_labeled"]) + len(split[f"{modality}_unlabeled"]) == len(paths)
    # the released split is of exp/train_id.txt's identities: against arrays of train + val it is refused
    trainval = load_train_data(tiny_sysu_preprocessed, "sysu")
    with pytest.raises(UserError, match="identities of the arrays have no .* image in it.*--sysu_ids train"):
        read_split_file(str(tmp_path / "idx"), trainval, tiny_sysu_preprocessed, "sysu")


def relabel_first_line(text):
    """The first line's image under the label of another identity."""
    lines = text.splitlines()
    path, label = lines[0].split()
    other = next(line.split()[1] for line in lines if line.split()[1] != label)
    return "\n".join([f"{path} {other}"] + lines[1:]) + "\n"


@pytest.mark.parametrize("damage, fragment", [
    (lambda idx: open(idx / "train_visible_l.txt", "a").write("cam1/0001/0001.jpg 0 + 3\n"), "pseudo-labelled lines"),
    (lambda idx: open(idx / "train_thermal_ul.txt", "a").write("cam3/0099/0001.jpg 0\n"), "cam3/0099/0001.jpg is not"),
    (lambda idx: os.remove(idx / "train_thermal_l.txt"), "no train_thermal_l.txt"),
    (lambda idx: (idx / "train_visible_l.txt").write_text(
        (idx / "train_visible_l.txt").read_text() + (idx / "train_visible_ul.txt").read_text().splitlines()[0] + "\n"),
     "listed twice"),  # an image labeled and unlabeled: what training appends to the lists
    (lambda idx: (idx / "train_visible_ul.txt").write_text(relabel_first_line((idx / "train_visible_ul.txt").read_text())),
     "do not name the same identities"),
])
def test_damaged_released_lists_are_refused_in_one_line(tiny_sysu_preprocessed, tmp_path, damage, fragment):
    write_released_sysu_lists(tiny_sysu_preprocessed, str(tmp_path / "idx"), ratio=0.4)
    damage(tmp_path / "idx")
    data = load_train_data(tiny_sysu_preprocessed, "sysu", sysu_ids="train")
    with pytest.raises(UserError, match=fragment) as err:
        read_split_file(str(tmp_path / "idx"), data, tiny_sysu_preprocessed, "sysu", sysu_ids="train")
    assert "\n" not in str(err.value)


def test_regdb_lists_carry_the_trial(tiny_regdb_preprocessed, tmp_path):
    """RegDB's released lists are idx/train_{visible,thermal}_<trial>_{l,ul}.txt: the first 2 of each identity's 10
    images labeled, as the released split (and ours) take them."""
    idx = tmp_path / "idx"
    idx.mkdir()
    for modal in ("visible", "thermal"):
        with open(os.path.join(tiny_regdb_preprocessed, "idx", f"train_{modal}_3.txt")) as f:
            lines = [line for line in f if line.strip()]
        labeled = [line for i, line in enumerate(lines) if i % 10 < 2]
        (idx / f"train_{modal}_3_l.txt").write_text("".join(labeled))
        (idx / f"train_{modal}_3_ul.txt").write_text("".join(line for line in lines if line not in labeled))
    data = load_train_data(tiny_regdb_preprocessed, "regdb", 3)
    split, _ = read_split_file(str(idx), data, tiny_regdb_preprocessed, "regdb", trial=3)
    for modality in ("rgb", "ir"):  # the list order is the arrays' order: rows 0, 1, 10, 11, ...
        assert split[f"{modality}_labeled"].tolist() == [r for r in range(len(data[f"{modality}_label"])) if r % 10 < 2]


def test_a_run_trains_on_the_released_split_and_a_second_on_its_split_json(tiny_sysu_preprocessed, tmp_path):
    lists = write_released_sysu_lists(tiny_sysu_preprocessed, str(tmp_path / "idx"), ratio=0.4)
    common = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--sysu_ids", "train", "--epochs", "1",
              *with_flag(FAST, "--batch-size", "5"), "--no_pictures"]
    run_train([*common, "--split_file", str(tmp_path / "idx"), *outputs(tmp_path, "released")], cwd=tmp_path)
    released = results_of(tmp_path, "released")
    assert released["split"]["source"] == "released lists"
    assert released["split"]["rgb_labeled"] == len(lists["visible", "l"])
    split_json = tmp_path / "log" / "released" / "split.json"
    run_train([*common, "--split_file", str(split_json), *outputs(tmp_path, "again")], cwd=tmp_path)
    again = results_of(tmp_path, "again")
    assert again["split"]["source"] == "split.json" and again["split"]["sha1"] == released["split"]["sha1"]
    assert json.loads((tmp_path / "log" / "again" / "split.json").read_text()) == json.loads(split_json.read_text())
    # the drawn split differs: the digest tells splits apart
    run_train([*common, *outputs(tmp_path, "drawn")], cwd=tmp_path)
    assert results_of(tmp_path, "drawn")["split"]["sha1"] != released["split"]["sha1"]


def test_a_split_json_of_other_arrays_is_refused(tiny_sysu_preprocessed, tmp_path):
    data = load_train_data(tiny_sysu_preprocessed, "sysu")
    count = len(data["rgb_label"])
    bad = {"rgb_labeled": [0, count], "rgb_unlabeled": list(range(1, count)), "ir_labeled": [0], "ir_unlabeled": [1]}
    (tmp_path / "split.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=f"rgb rows outside 0..{count - 1}"):
        read_split_file(str(tmp_path / "split.json"), data, tiny_sysu_preprocessed, "sysu")
    (tmp_path / "split.json").write_text('{"rgb_labeled": [0]}')
    with pytest.raises(UserError, match="not a split.json of this repo"):
        read_split_file(str(tmp_path / "split.json"), data, tiny_sysu_preprocessed, "sysu")
