"""Dataset protocols: SYSU-MM01 and RegDB id lists and query/gallery sets (field-exact), loading of the
preprocessed training arrays, the labeled/unlabeled split, and the synthetic demo datasets."""
import glob
import json
import os
import random
import shutil

import numpy as np
from PIL import Image

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


# ---------------------------------------------------------------------------------------------- demo data

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601: the grey level of a colour, what infrared keeps
PLAIN, HORIZONTAL, VERTICAL = 0, 1, 2  # stripe patterns
HEAD, TORSO, LEGS, BAG = 0, 1, 2, 3  # body parts


def colour_with_luminance(lum, raw_colour):
    """Colours (..., 3) in [0, 1] with luminance lum (...) and the hue of raw_colour (..., 3), as saturated
    as fits in [0, 1]: the visible rendering adds colour without moving the grey level infrared sees."""
    chroma = raw_colour - (raw_colour @ LUMA)[..., None]  # zero luminance, since LUMA sums to 1
    lum = lum[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(chroma > 0, (1 - lum) / chroma, np.where(chroma < 0, -lum / chroma, np.inf))
    return lum + np.minimum(1.0, room.min(axis=-1, keepdims=True)) * chroma


def make_identity(rng):
    """Appearance of one synthetic identity (lengths in units of the body height).

    Cues both modalities share: body proportions, a bag or none, and per part two grey levels in a stripe
    pattern (plain, horizontal or vertical; its period). Visible only: the hue of each level.
    """
    lum_a = rng.uniform(0.05, 0.95, 4)
    lum_b = (lum_a + rng.uniform(0.3, 0.7, 4)) % 1.0  # >= 0.3 apart, so stripes stay visible in grey
    stripes = rng.integers(PLAIN, VERTICAL + 1, 4)
    stripes[BAG] = PLAIN
    lum = np.stack([lum_a, np.where(stripes == PLAIN, lum_a, lum_b)], axis=1)  # (part, level)
    return {"half_width": np.array([rng.uniform(0.035, 0.065), rng.uniform(0.08, 0.17), rng.uniform(0.06, 0.13)]),
            "head_end": rng.uniform(0.11, 0.17), "waist": rng.uniform(0.42, 0.6), "leg_gap": rng.uniform(0.0, 0.03),
            "has_bag": rng.random() < 0.5, "bag_side": rng.choice([-1.0, 1.0]), "bag_width": rng.uniform(0.05, 0.08), "bag_top": rng.uniform(0.22, 0.35),
            "bag_height": rng.uniform(0.12, 0.22), "stripes": stripes, "period": rng.uniform(0.06, 0.16, 4),
            "lum": lum, "colour": colour_with_luminance(lum, rng.uniform(0, 1, (4, 2, 3)))}


def body_part_map(identity, v, u, bag_side):
    """Body part of each pixel, -1 for background: (n, H, W) int64 from body coordinates v (n, H, 1)
    (down from the top of the head) and u (n, 1, W) (right of the centre line); bag_side (n, 1, 1) is +-1."""
    part = np.full(np.broadcast_shapes(v.shape, u.shape), -1, dtype=np.int64)
    bounds = ((0.0, identity["head_end"]), (identity["head_end"], identity["waist"]), (identity["waist"], 1.0))
    for index, ((start, end), half_width) in enumerate(zip(bounds, identity["half_width"])):
        inside = (v >= start) & (v < end) & (np.abs(u) < half_width)
        if index == LEGS:
            inside &= np.abs(u) >= identity["leg_gap"]
        part[inside] = index
    if identity["has_bag"]:
        beside = bag_side * u - identity["half_width"][TORSO]  # distance out from the torso's edge
        top = identity["bag_top"]
        part[(v >= top) & (v < top + identity["bag_height"]) & (beside >= 0) & (beside < identity["bag_width"])] = BAG
    return part


def render_people(rng, identity, num_images, raw_h, raw_w, infrared):
    """num_images views of one identity -> (num_images, raw_h, raw_w, 3) uint8.

    Per view: scale, shift, the side the bag hangs on, illumination gain, background (level, gradient, one
    clutter bar) and pixel noise. Infrared: the person's grey level is 0.25 + 0.7 x its visible luminance (a
    warm body looks bright) on a darker background; no colour.
    """
    n = num_images
    height = 0.9 * raw_h * rng.uniform(0.85, 1.05, (n, 1, 1))
    top = raw_h * rng.uniform(0.02, 0.08, (n, 1, 1))
    centre = raw_w * (0.5 + rng.uniform(-0.08, 0.08, (n, 1, 1)))
    v = (np.arange(raw_h)[None, :, None] - top) / height  # (n, H, 1)
    u = (np.arange(raw_w)[None, None, :] - centre) / height  # (n, 1, W)
    part = body_part_map(identity, v, u, identity["bag_side"])
    safe_part = np.maximum(part, 0)
    pattern = identity["stripes"][safe_part]
    across = np.where(pattern == VERTICAL, u, v)  # the coordinate the stripes alternate along
    level = (np.floor(across / identity["period"][safe_part]) % 2).astype(np.int64) * (pattern != PLAIN)
    channels = 1 if infrared else 3
    if infrared:
        person = (0.25 + 0.7 * identity["lum"][safe_part, level])[..., None]  # (n, H, W, 1)
        background = rng.uniform(0.0, 0.3, (n, 1, 1, 1))
    else:
        person = identity["colour"][safe_part, level]  # (n, H, W, 3)
        background = rng.uniform(0.15, 0.85, (n, 1, 1, 1)) + rng.uniform(-0.1, 0.1, (n, 1, 1, 3))
    columns = np.arange(raw_w)[None, None, :, None]
    background = background + rng.uniform(-0.15, 0.15, (n, 1, 1, 1)) * (columns / raw_w - 0.5)
    image = np.where(part[..., None] >= 0, person * rng.uniform(0.8, 1.15, (n, 1, 1, 1)), background)
    image = image + rng.normal(0, 0.03, (n, raw_h, raw_w, channels))
    image = np.broadcast_to(image, (n, raw_h, raw_w, 3))  # infrared: the grey level in all three channels
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def save_images(images, folder, names):
    os.makedirs(folder, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image).save(os.path.join(folder, name), **({"quality": 95} if name.endswith(".jpg") else {}))


def make_demo_dataset(root, num_train_ids=40, num_test_ids=20, imgs_per_cam=6, num_val_ids=None, raw_h=128,
                      raw_w=64, seed=0):
    """A synthetic dataset in the SYSU-MM01 layout: cam1..cam6/<id:04d>/<n:04d>.jpg and exp/*_id.txt.

    Identities 1..num_train_ids are the training ids (train_id.txt, with the last num_val_ids of them in
    val_id.txt; default a fifth), the next num_test_ids the test ids. Every identity has imgs_per_cam images
    in each camera (visible 1,2,4,5; infrared 3,6: a grey rendering). An identity's images depend only on
    (seed, id). Returns root.
    """
    num_val_ids = num_train_ids // 5 if num_val_ids is None else num_val_ids
    if not 0 <= num_val_ids < num_train_ids:
        raise ValueError(f"num_val_ids={num_val_ids} must be in [0, num_train_ids={num_train_ids})")
    ids = list(range(1, num_train_ids + num_test_ids + 1))
    names = [f"{n:04d}.jpg" for n in range(1, imgs_per_cam + 1)]
    for pid in ids:
        rng = np.random.default_rng([seed, pid])
        identity = make_identity(rng)
        for cam in SYSU_RGB_CAMS + SYSU_IR_CAMS:
            images = render_people(rng, identity, imgs_per_cam, raw_h, raw_w, infrared=cam in SYSU_IR_CAMS)
            save_images(images, os.path.join(root, f"cam{cam}", f"{pid:04d}"), names)
    num_train_only = num_train_ids - num_val_ids
    subsets = {"train": ids[:num_train_only], "val": ids[num_train_only:num_train_ids], "test": ids[num_train_ids:]}
    os.makedirs(os.path.join(root, "exp"), exist_ok=True)
    for name, subset in subsets.items():
        with open(os.path.join(root, "exp", f"{name}_id.txt"), "w") as f:
            f.write(",".join(str(pid) for pid in subset))
    return root


DEMO_MARKER = "demo.json"  # written into a root the demo built: which generator, seed and sizes


def prepare_demo_dataset(root, seed, **sizes):
    """Make sure root holds the demo dataset of this seed and sizes (make_demo_dataset); True if it was built now.

    A root the demo built carries demo.json and is rebuilt when its seed or sizes differ; a root without it is
    somebody's SYSU-layout data and is used as it is (--dataset demo --data_path ROOT runs the demo recipe on
    it). A build goes to a temporary folder that is renamed into place, so a killed build never leaves a half
    dataset; the leftovers of killed builds are removed by the next one.
    """
    root = os.path.normpath(root)
    spec = {"generator": "make_demo_dataset", "seed": seed, **sizes}
    if os.path.isdir(root) and (demo_spec(root) == spec or not os.path.isfile(os.path.join(root, DEMO_MARKER))):
        return False
    for leftover in glob.glob(f"{glob.escape(root)}.tmp-*") + glob.glob(f"{glob.escape(root)}.old-*"):
        if not process_alive(leftover.rsplit("-", 1)[-1]):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_demo_dataset(tmp, seed=seed, **sizes)
    with open(os.path.join(tmp, DEMO_MARKER), "w") as f:
        json.dump(spec, f)
    old = f"{root}.old-{os.getpid()}"
    if os.path.isdir(root):
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:  # another process put the same dataset in place first
        shutil.rmtree(tmp, ignore_errors=True)
        if demo_spec(root) != spec:
            raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def demo_spec(root):
    """The contents of root/demo.json, or None."""
    try:
        with open(os.path.join(root, DEMO_MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def process_alive(pid_text):
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def make_demo_regdb(root, num_ids=12, imgs_per_id=10, raw_h=128, raw_w=64, seed=0, trials=10):
    """A synthetic dataset in the RegDB layout: Visible/<id>/v_<n>.bmp, Thermal/<id>/t_<n>.bmp (id 1..num_ids)
    and idx/{train,test}_{visible,thermal}_{1..trials}.txt with lines 'Visible/<id>/v_<n>.bmp <id - 1>'.
    Trial t puts a random half of the ids (np.random.default_rng([seed, t])) in training, the rest in test.
    The labels are the identity numbers, so a training list's labels are not 0..C-1. Returns root."""
    files = {}
    for pid in range(1, num_ids + 1):
        rng = np.random.default_rng([seed, pid])
        identity = make_identity(rng)
        for modal, folder in (("visible", "Visible"), ("thermal", "Thermal")):
            names = [f"{modal[0]}_{n:02d}.bmp" for n in range(1, imgs_per_id + 1)]
            save_images(render_people(rng, identity, imgs_per_id, raw_h, raw_w, infrared=modal == "thermal"),
                        os.path.join(root, folder, str(pid)), names)
            files[modal, pid] = [f"{folder}/{pid}/{name}" for name in names]
    os.makedirs(os.path.join(root, "idx"), exist_ok=True)
    for trial in range(1, trials + 1):
        order = np.random.default_rng([seed, trial]).permutation(np.arange(1, num_ids + 1))
        for split, pids in (("train", sorted(order[:num_ids // 2])), ("test", sorted(order[num_ids // 2:]))):
            for modal in REGDB_MODALS:
                with open(os.path.join(root, "idx", f"{split}_{modal}_{trial}.txt"), "w") as f:
                    f.writelines(f"{name} {pid - 1}\n" for pid in pids for name in files[modal, pid])
    return root
