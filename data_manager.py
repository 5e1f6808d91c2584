"""Dataset protocols: SYSU-MM01 and RegDB id lists and query/gallery sets (field-exact), loading of the
preprocessed training arrays, and the labeled/unlabeled split. The synthetic demo datasets are in demo_data.py."""
import hashlib
import json
import os
import random

import numpy as np

from utils import UserError, first_line

SYSU_RGB_CAMS = (1, 2, 4, 5)
SYSU_IR_CAMS = (3, 6)
SYSU_INDOOR_RGB_CAMS = (1, 2)
SYSU_ID_FILES = {"train": ("train_id.txt",), "val": ("val_id.txt",), "test": ("test_id.txt",),
                 "trainval": ("train_id.txt", "val_id.txt")}
REGDB_MODALS = ("visible", "thermal")
REGDB_TRIALS = range(1, 11)
ARRAY_NAMES = ("img", "label", "cam")


def protocol_of(dataset):
    """The data layout and evaluation protocol of a dataset name: the demo is SYSU-MM01-shaped."""
    return "regdb" if dataset == "regdb" else "sysu"


# ---------------------------------------------------------------------------------------------- SYSU-MM01

def read_sysu_ids(data_path, which):
    """Sorted identity numbers of exp/<which>_id.txt (one line of comma-separated ids); trainval = train + val."""
    if which not in SYSU_ID_FILES:
        raise UserError(f"unknown SYSU id list {which!r}: use one of {', '.join(SYSU_ID_FILES)}")
    if not os.path.isdir(data_path):
        raise UserError(f"dataset folder not found: {data_path}")
    ids = set()
    for name in SYSU_ID_FILES[which]:
        path = os.path.join(data_path, "exp", name)
        if not os.path.isfile(path):
            raise UserError(f"missing {path} (is {data_path} a SYSU-MM01 root?)")
        with open(path) as f:
            text = f.read().strip()
        try:
            new_ids = [int(token) for token in text.split(",") if token.strip()]
        except ValueError:
            raise UserError(f"malformed {path}: expected one line of comma-separated ids") from None
        if not new_ids:
            raise UserError(f"malformed {path}: no ids")
        ids.update(new_ids)
    return sorted(ids)


def sysu_folder_files(data_path, pid, cam):
    """Sorted paths of the images of identity pid in camera cam, or None if that folder does not exist."""
    folder = os.path.join(data_path, f"cam{cam}", f"{pid:04d}")
    if not os.path.isdir(folder):
        return None
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


def sysu_image_list(data_path, ids, cams):
    """All images of the given ids and cameras: id (sorted) outer, then camera in the given order, then sorted
    file name (the AGW baseline's order). Returns (img_paths list[str], pids (N,) int64, camids (N,) int64)."""
    paths, pids, camids = [], [], []
    for pid in sorted(ids):
        for cam in cams:
            files = sysu_folder_files(data_path, pid, cam) or []
            paths += files
            pids += [pid] * len(files)
            camids += [cam] * len(files)
    return paths, np.array(pids, dtype=np.int64), np.array(camids, dtype=np.int64)


def sysu_gallery_cams(mode):
    """Visible cameras of the gallery: all-search 1,2,4,5; indoor-search 1,2."""
    if mode not in ("all", "indoor"):
        raise UserError(f"unknown SYSU mode {mode!r}: use all or indoor")
    return SYSU_RGB_CAMS if mode == "all" else SYSU_INDOOR_RGB_CAMS


def process_query_sysu(data_path, mode="all"):
    """Query set, the same in both modes: every infrared image (cams 3, 6) of the test ids.
    Returns (img_paths, pids int64, camids int64)."""
    sysu_gallery_cams(mode)  # validates mode
    return sysu_image_list(data_path, read_sysu_ids(data_path, "test"), SYSU_IR_CAMS)


SYSU_MULTI_SHOT = 10  # gallery images per identity per visible camera in the multi-shot setting
GALLERY_MODES = ("single", "multi")


def process_gallery_sysu(data_path, mode="all", trial=0, gallery_mode="single"):
    """Gallery of one trial: per test id (sorted) and visible camera (in order) with a folder, images drawn
    from its sorted files. Returns (img_paths, pids int64, camids int64).

    single (the paper's protocol): one image per folder, bit-compatible with the field's draw,
    random.seed(trial) then random.choice; random.Random(trial) gives that sequence without global state.

    multi: 10 images per folder, in draw order. The field's code (forks of the AGW baseline with
    gall_mode='multi'; the AGW repository itself has no multi-shot option) draws them with
    np.random.choice(files, 10, replace=False) on NumPy's *global* RNG, which its random.seed(trial) does
    not seed: its multi-shot galleries depend on whatever NumPy drew earlier in the process (or on OS entropy
    when nothing seeded it), so they cannot be reproduced from the trial number. We draw with
    np.random.RandomState(trial), the generator np.random.seed(trial) installs, so trial t is bit-identical to
    the field's code run right after np.random.seed(t), and reproducible. A folder with fewer than 10 images,
    where the field's call raises ValueError, contributes all its images in file order and draws nothing.
    """
    cams = sysu_gallery_cams(mode)
    if gallery_mode not in GALLERY_MODES:
        raise UserError(f"unknown gallery mode {gallery_mode!r}: use single or multi")
    single_rng = random.Random(trial)
    multi_rng = np.random.RandomState(trial)
    paths, pids, camids = [], [], []
    for pid in read_sysu_ids(data_path, "test"):
        for cam in cams:
            files = sysu_folder_files(data_path, pid, cam)
            if files is None:
                continue
            if gallery_mode == "single":
                drawn = [single_rng.choice(files)]
            elif len(files) < SYSU_MULTI_SHOT:
                drawn = files
            else:
                # choice(files, 10, replace=False) indexes files with permutation(len(files))[:10]: same draw
                drawn = [files[i] for i in multi_rng.choice(len(files), SYSU_MULTI_SHOT, replace=False)]
            paths += drawn
            pids += [pid] * len(drawn)
            camids += [cam] * len(drawn)
    return paths, np.array(pids, dtype=np.int64), np.array(camids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- RegDB

def read_regdb_list(data_path, split, modal, trial):
    """(relative paths list[str], labels (N,) int64) of idx/<split>_<modal>_<trial>.txt, whose lines are
    'relative/path.bmp label'."""
    path = os.path.join(data_path, "idx", f"{split}_{modal}_{trial}.txt")
    if not os.path.isfile(path):
        raise UserError(f"missing {path} (is {data_path} a RegDB root?)")
    rel_paths, labels = [], []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise UserError(f"malformed {path} line {line_no}: expected 'path label'")
            rel_paths.append(parts[0])
            labels.append(int(parts[1]))
    if not rel_paths:
        raise UserError(f"malformed {path}: empty")
    return rel_paths, np.array(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- arrays

def sysu_array_path(data_path, modality, name):
    """train_{rgb,ir}_resized_{img,label,cam}.npy in the dataset root (the AGW names)."""
    return os.path.join(data_path, f"train_{modality}_resized_{name}.npy")


def sysu_ids_path(data_path):
    """train_resized_ids.npy: the identity number of each training label (the sorted train+val ids)."""
    return os.path.join(data_path, "train_resized_ids.npy")


def regdb_array_path(data_path, name):
    """regdb_<name>.npy in the dataset root (names listed in pre_process_regdb.py)."""
    return os.path.join(data_path, f"regdb_{name}.npy")


def sources_path(data_path, dataset):
    """The file holding the signature of the files the arrays were made from (see sources_signature)."""
    name = "train_resized_sources.npy" if dataset == "sysu" else "regdb_sources.npy"
    return os.path.join(data_path, name)


def sysu_sources(data_path):
    """The files SYSU-MM01's training arrays are made from, relative to the root: the id lists, then every image of
    the train+val identities in the six cameras (the order preprocessing reads them)."""
    ids = read_sysu_ids(data_path, "trainval")
    images = sysu_image_list(data_path, ids, SYSU_RGB_CAMS + SYSU_IR_CAMS)[0]
    return [os.path.join("exp", name) for name in SYSU_ID_FILES["trainval"]] + \
        [os.path.relpath(path, data_path) for path in images]


def regdb_sources(data_path, trials=REGDB_TRIALS):
    """The files RegDB's arrays are made from, relative to the root: the list files, then every listed image."""
    lists, images = [], set()
    for split in ("train", "test"):
        for modal in REGDB_MODALS:
            for trial in trials:
                lists.append(os.path.join("idx", f"{split}_{modal}_{trial}.txt"))
                images.update(read_regdb_list(data_path, split, modal, trial)[0])
    return lists + sorted(images)


def sources_signature(data_path, rel_paths):
    """A cheap signature of a dataset's files: the SHA-1 of each file's path, size and modification time, so that an
    image added, removed, replaced or edited after preprocessing changes it (a stat per file, no decoding)."""
    digest = hashlib.sha1()
    for rel_path in rel_paths:
        try:
            stat = os.stat(os.path.join(data_path, rel_path))
        except OSError:
            stat = None
        digest.update(f"{rel_path}\0{stat and stat.st_size}\0{stat and stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def current_signature(data_path, dataset):
    return sources_signature(data_path, sysu_sources(data_path) if dataset == "sysu" else regdb_sources(data_path))


def check_sources(data_path, dataset):
    """The arrays must have been made from the dataset folder as it is now: refuse, in one line naming the script,
    stale arrays (or arrays without a recorded signature)."""
    script = f"python pre_process_{dataset}.py --data_path {data_path}"
    try:
        recorded = str(np.load(sources_path(data_path, dataset)))
    except (OSError, ValueError):
        raise UserError(f"the arrays in {data_path} do not record which files they were made from: re-run "
                        f"{script}") from None
    if recorded != current_signature(data_path, dataset):
        raise UserError(f"the images or lists in {data_path} changed since its arrays were written (files, sizes or "
                        f"modification times differ): re-run {script}")


def arrays_error(data_path, dataset, err):
    """The one-line error for preprocessed arrays that are missing or unreadable, naming the script to run."""
    missing = getattr(err, "filename", None) or first_line(err)
    return UserError(f"arrays missing or unreadable in {data_path} ({missing}): run python pre_process_{dataset}.py "
                     f"--data_path {data_path}")


def load_regdb_split(data_path, split, trial):
    """One trial's 'train' or 'test' split of RegDB from the preprocessed arrays, in list order:
    {'rgb_img': (N, H, W, 3) uint8 in memory, 'rgb_label': (N,) int64 labels as the list writes them, 'ir_img',
    'ir_label'} (visible = rgb, thermal = ir)."""
    data = {}
    try:
        for modality, modal in (("rgb", "visible"), ("ir", "thermal")):
            images = np.load(regdb_array_path(data_path, f"{modal}_img"), mmap_mode="r")
            index = np.load(regdb_array_path(data_path, f"{split}_{modal}_{trial}_index"))
            data[f"{modality}_img"] = images[index]  # one split of one trial (~2,060 images per modality)
            data[f"{modality}_label"] = np.load(regdb_array_path(data_path, f"{split}_{modal}_{trial}_label"))
    except (OSError, ValueError, IndexError) as err:
        raise arrays_error(data_path, "regdb", err) from None
    return data


def load_train_data(data_path, dataset, trial=1, sysu_ids="trainval"):
    """The preprocessed training arrays of both modalities. dataset: 'sysu' (also the demo) or 'regdb'.
    sysu_ids: 'trainval' (every preprocessed identity, the field's 395) or 'train' (those of exp/train_id.txt,
    the 296 the released code trains; their images are then copied into memory, as the field's code loads all).
    Returns dict: rgb_img (N,H,W,3) uint8 (SYSU trainval: memory-mapped), rgb_label (N,) int64 in 0..C-1,
    rgb_cam (N,) int64, and ir_img, ir_label, ir_cam. RegDB's cameras are 1 (visible) and 2 (thermal)."""
    if dataset not in ("sysu", "regdb"):
        raise UserError(f"unknown dataset {dataset!r}: use sysu or regdb")
    if sysu_ids not in ("trainval", "train"):
        raise UserError(f"unknown SYSU identity set {sysu_ids!r}: use trainval or train")
    if not os.path.isdir(data_path):
        raise UserError(f"dataset folder not found: {data_path}")
    if dataset == "regdb":
        data = load_regdb_split(data_path, "train", trial)
        # relabel to 0..C-1 by sorted original label, one map for both modalities
        classes = np.unique(np.concatenate([data["rgb_label"], data["ir_label"]]))
        for modality, cam in (("rgb", 1), ("ir", 2)):
            data[f"{modality}_label"] = np.searchsorted(classes, data[f"{modality}_label"])
            data[f"{modality}_cam"] = np.full(len(data[f"{modality}_img"]), cam, dtype=np.int64)
    else:
        try:
            data = {f"{modality}_{name}": np.load(sysu_array_path(data_path, modality, name),
                                                  mmap_mode="r" if name == "img" else None)
                    for modality in ("rgb", "ir") for name in ARRAY_NAMES}
            label_ids = np.load(sysu_ids_path(data_path))
        except (OSError, ValueError) as err:
            raise arrays_error(data_path, "sysu", err) from None
        if sysu_ids == "train":
            data = select_identities(data, label_ids, read_sysu_ids(data_path, "train"))
    script = f"python pre_process_{dataset}.py --data_path {data_path}"
    for modality in ("rgb", "ir"):
        images = data[f"{modality}_img"]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0 or \
                not len(data[f"{modality}_label"]) == len(data[f"{modality}_cam"]) == len(images):
            raise UserError(f"training arrays in {data_path} are inconsistent ({modality}): re-run {script}")
        data[f"{modality}_label"] = np.asarray(data[f"{modality}_label"], dtype=np.int64)
        data[f"{modality}_cam"] = np.asarray(data[f"{modality}_cam"], dtype=np.int64)
        if data[f"{modality}_label"].min() < 0:
            raise UserError(f"training arrays in {data_path} hold negative labels ({modality}): re-run {script}")
    if data["rgb_img"].shape[1:] != data["ir_img"].shape[1:]:
        raise UserError(f"visible and infrared arrays in {data_path} differ in image size: re-run {script}")
    check_sources(data_path, dataset)
    return data


def select_identities(data, label_ids, keep_ids):
    """The rows of SYSU training arrays whose identity is in keep_ids, relabelled 0..len(keep_ids)-1 in sorted
    identity order. label_ids: the identity number of each label of `data`."""
    keep_labels = np.flatnonzero(np.isin(label_ids, keep_ids))  # old labels of the kept identities, sorted
    selected = {}
    for modality in ("rgb", "ir"):
        rows = np.flatnonzero(np.isin(data[f"{modality}_label"], keep_labels))
        selected[f"{modality}_img"] = data[f"{modality}_img"][rows]
        selected[f"{modality}_label"] = np.searchsorted(keep_labels, data[f"{modality}_label"][rows])
        selected[f"{modality}_cam"] = data[f"{modality}_cam"][rows]
    return selected


# ---------------------------------------------------------------------------------------------- split

def rank_within_groups(groups, keys):
    """Position of each sample inside its group when the group is ordered by keys (0 = first): (N,) int64."""
    order = np.lexsort((keys, groups))
    sorted_groups = groups[order]
    group_start = np.searchsorted(sorted_groups, sorted_groups, side="left")
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = np.arange(len(groups)) - group_start
    return ranks


def group_sizes(groups):
    """Size of each sample's group: (N,) int64."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


def split_one_modality(labels, cams, ratio, keys, per_camera):
    """Labeled and unlabeled indices (sorted int64) of one modality.

    Groups are (identity, camera) folders (per_camera, SYSU) or identities (RegDB); a group labels the
    floor(ratio * size) samples with the smallest keys (random keys: a random draw; list positions: the first
    ones). An identity left with none labels its smallest-key image, so every identity keeps one label.
    """
    groups = labels * (cams.max() + 1) + cams if per_camera else labels
    # the epsilon keeps floor(0.29 * 100) at 29 despite binary rounding (0.29 * 100 = 28.999...)
    num_labeled = np.floor(ratio * group_sizes(groups) + 1e-9)
    labeled = rank_within_groups(groups, keys) < num_labeled
    _, identity = np.unique(labels, return_inverse=True)
    identity = identity.reshape(-1)
    has_label = np.bincount(identity, weights=labeled)[identity] > 0
    labeled |= ~has_label & (rank_within_groups(labels, keys) == 0)
    return np.flatnonzero(labeled).astype(np.int64), np.flatnonzero(~labeled).astype(np.int64)


def make_split(labels_rgb, cams_rgb, labels_ir, cams_ir, dataset, ratio, seed):
    """The labeled/unlabeled split of both modalities (design section 3), a pure function of its arguments.
    RegDB: per identity the first floor(ratio * n) images in list order; otherwise (SYSU, demo): per
    (identity, camera) floor(ratio * n) drawn with np.random.default_rng([seed, modality]); at least one
    labeled image per identity and modality. Returns {'rgb_labeled', 'rgb_unlabeled', 'ir_labeled',
    'ir_unlabeled'}: sorted int64 index arrays into the modality's arrays."""
    if not 0 < ratio <= 1:
        raise UserError(f"--label_ratio must be in (0, 1], got {ratio}")
    split = {}
    for modal, (modality, labels, cams) in enumerate((("rgb", labels_rgb, cams_rgb), ("ir", labels_ir, cams_ir))):
        labels, cams = np.asarray(labels, dtype=np.int64), np.asarray(cams, dtype=np.int64)
        if dataset == "regdb":
            keys = np.arange(len(labels))
        else:
            keys = np.random.default_rng([seed, modal]).random(len(labels))
        split[f"{modality}_labeled"], split[f"{modality}_unlabeled"] = split_one_modality(
            labels, cams, ratio, keys, per_camera=dataset != "regdb")
    return split


# ---------------------------------------------------------------------------------------------- a given split

SPLIT_KEYS = ("rgb_labeled", "rgb_unlabeled", "ir_labeled", "ir_unlabeled")
LIST_MODALS = {"rgb": "visible", "ir": "thermal"}  # the released lists' names of the modalities


def train_image_paths(data_path, dataset, trial=1, sysu_ids="trainval"):
    """{modality: the path (relative to the root) of each row of load_train_data's arrays}, for mapping lists of
    image paths to rows. SYSU: the preprocessing order (sysu_image_list), restricted to exp/train_id.txt with
    --sysu_ids train as load_train_data restricts the rows; RegDB: the trial's training list order."""
    if dataset == "regdb":
        try:
            return {modality: np.load(regdb_array_path(data_path, f"{modal}_paths"))[
                np.load(regdb_array_path(data_path, f"train_{modal}_{trial}_index"))].tolist()
                for modality, modal in LIST_MODALS.items()}
        except (OSError, ValueError, IndexError) as err:
            raise arrays_error(data_path, "regdb", err) from None
    keep = read_sysu_ids(data_path, "train" if sysu_ids == "train" else "trainval")
    paths = {}
    for modality, cams in (("rgb", SYSU_RGB_CAMS), ("ir", SYSU_IR_CAMS)):
        files, pids, _ = sysu_image_list(data_path, read_sysu_ids(data_path, "trainval"), cams)
        paths[modality] = [os.path.relpath(path, data_path).replace(os.sep, "/")
                           for path, pid in zip(files, pids) if pid in keep]
    return paths


def released_list_path(folder, modal, part, trial):
    """idx/train_<modal>[_<trial>]_<part>.txt of the released code (SYSU without the trial, RegDB with it)."""
    for name in (f"train_{modal}_{trial}_{part}.txt", f"train_{modal}_{part}.txt"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise UserError(f"--split_file {folder}: no train_{modal}_{part}.txt (nor train_{modal}_{trial}_{part}.txt) in it")


def read_released_lists(folder, data, data_path, dataset, trial=1, sysu_ids="trainval"):
    """The split written by the released code's list files (lines 'relative/path label', read as they are written),
    mapped to rows of the arrays. A list holding pseudo labels ('path label + label', or an image in both the
    labeled and the unlabeled list: what training appends) is not a split and is refused, as is an image the arrays
    do not hold or labels that do not name the same identities as the arrays'."""
    row_paths = train_image_paths(data_path, dataset, trial, sysu_ids)
    split = {}
    for modality, modal in LIST_MODALS.items():
        row_of = {path: row for row, path in enumerate(row_paths[modality])}
        pairs = set()
        for part, key in (("l", f"{modality}_labeled"), ("ul", f"{modality}_unlabeled")):
            path = released_list_path(folder, modal, part, trial)
            rows = []
            with open(path) as f:
                for line_no, line in enumerate(f, 1):
                    fields = line.split()
                    if not fields:
                        continue
                    if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                        raise UserError(f"{path} line {line_no}: expected 'path label' as the released code writes "
                                        f"its split (pseudo-labelled lines 'path label + label' are not a split)")
                    rel_path = fields[0].replace("\\", "/")
                    if rel_path not in row_of:
                        raise UserError(f"{path} line {line_no}: {rel_path} is not among the training images of the "
                                        f"arrays in {data_path}")
                    rows.append(row_of[rel_path])
                    pairs.add((int(fields[1]), int(data[f"{modality}_label"][row_of[rel_path]])))
            split[key] = np.array(rows, dtype=np.int64)
        list_labels, array_labels = zip(*pairs) if pairs else ((), ())
        if len(set(list_labels)) != len(pairs) or len(set(array_labels)) != len(pairs):
            raise UserError(f"--split_file {folder}: the lists' labels do not name the same identities as the arrays' "
                            f"({modal})")
    return split


def read_split_json(path):
    """A run's split.json: {rgb_labeled, rgb_unlabeled, ir_labeled, ir_unlabeled: [row, ...]}."""
    try:
        with open(path) as f:
            loaded = json.load(f)
        return {key: np.array(loaded[key], dtype=np.int64).reshape(-1) for key in SPLIT_KEYS}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--split_file {path}: not a split.json of this repo ({first_line(err)})") from None


def read_split_file(path, data, data_path, dataset, trial=1, sysu_ids="trainval"):
    """The labeled/unlabeled split of --split_file: a run's split.json, or a folder with the released code's lists
    (read_released_lists), checked against the arrays (check_split). Returns (split with sorted index arrays,
    'split.json' or 'released lists')."""
    if os.path.isdir(path):
        split, kind = read_released_lists(path, data, data_path, dataset, trial, sysu_ids), "released lists"
    else:
        split, kind = read_split_json(path), "split.json"
    check_split(split, data, path)
    return {key: np.sort(value) for key, value in split.items()}, kind


def check_split(split, data, source):
    """A split must name rows the arrays hold, each at most once, none both labeled and unlabeled, and every
    identity of the arrays in each modality (a split of another identity set, e.g. the released code's 296 SYSU
    identities against arrays of 395, is refused with that hint)."""
    for modality in ("rgb", "ir"):
        labeled, unlabeled = split[f"{modality}_labeled"], split[f"{modality}_unlabeled"]
        rows = np.concatenate([labeled, unlabeled])
        count = len(data[f"{modality}_label"])
        if len(rows) and (rows.min() < 0 or rows.max() >= count):
            raise UserError(f"split {source}: {modality} rows outside 0..{count - 1}: the arrays hold {count} images")
        if len(np.unique(rows)) != len(rows):
            raise UserError(f"split {source}: a {modality} image is listed twice (or both labeled and unlabeled)")
        if len(labeled) == 0:
            raise UserError(f"split {source}: no labeled {modality} image")
        missing = np.setdiff1d(data[f"{modality}_label"], data[f"{modality}_label"][rows])
        if len(missing):
            raise UserError(f"split {source}: {len(missing)} identities of the arrays have no {modality} image in it "
                            f"(the split is of other identities; SYSU-MM01: --sysu_ids train for the released code's)")
