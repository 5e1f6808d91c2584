"""Dataset protocols: SYSU-MM01 and RegDB id lists and query/gallery sets (field-exact), loading of the
preprocessed training arrays, the labeled/unlabeled split, and the synthetic demo datasets."""
import os
import random

import numpy as np
from PIL import Image

from utils import UserError

SYSU_RGB_CAMS = (1, 2, 4, 5)
SYSU_IR_CAMS = (3, 6)
SYSU_INDOOR_RGB_CAMS = (1, 2)
SYSU_ID_FILES = {"train": ("train_id.txt",), "val": ("val_id.txt",), "test": ("test_id.txt",),
                 "trainval": ("train_id.txt", "val_id.txt")}
ARRAY_NAMES = ("img", "label", "cam")


# ---------------------------------------------------------------------------------------------- SYSU-MM01

def read_sysu_ids(data_path, which):
    """Sorted identity numbers of exp/<which>_id.txt (one line of comma-separated ids); trainval = train + val."""
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
            ids.update(int(token) for token in text.split(",") if token.strip())
        except ValueError:
            raise UserError(f"malformed {path}: expected one line of comma-separated ids") from None
        if not text:
            raise UserError(f"malformed {path}: no ids")
    return sorted(ids)


def sysu_image_list(data_path, ids, cams):
    """All images of the given ids and cameras: id outer, then camera in the given order, then sorted file
    name (the AGW baseline's order). Returns (img_paths, pids int64, camids int64)."""
    paths, pids, camids = [], [], []
    for pid in sorted(ids):
        for cam in cams:
            folder = os.path.join(data_path, f"cam{cam}", f"{pid:04d}")
            if os.path.isdir(folder):
                files = sorted(os.path.join(folder, name) for name in os.listdir(folder))
                paths += files
                pids += [pid] * len(files)
                camids += [cam] * len(files)
    return paths, np.array(pids, dtype=np.int64), np.array(camids, dtype=np.int64)


def sysu_gallery_cams(mode):
    if mode not in ("all", "indoor"):
        raise UserError(f"unknown SYSU mode {mode!r}: use all or indoor")
    return SYSU_RGB_CAMS if mode == "all" else SYSU_INDOOR_RGB_CAMS


def process_query_sysu(data_path, mode="all"):
    """Query set: every infrared image (cams 3, 6) of the test ids, in either mode."""
    sysu_gallery_cams(mode)
    return sysu_image_list(data_path, read_sysu_ids(data_path, "test"), SYSU_IR_CAMS)


def process_gallery_sysu(data_path, mode="all", trial=0):
    """Single-shot gallery of one trial, bit-compatible with the field's draw: random.seed(trial), then per
    test id (sorted) and visible camera (in order) with a folder, random.choice over its sorted files."""
    cams = sysu_gallery_cams(mode)
    rng = random.Random(trial)  # same sequence as random.seed(trial) + random.choice, without global state
    paths, pids, camids = [], [], []
    for pid in read_sysu_ids(data_path, "test"):
        for cam in cams:
            folder = os.path.join(data_path, f"cam{cam}", f"{pid:04d}")
            if os.path.isdir(folder):
                files = sorted(os.path.join(folder, name) for name in os.listdir(folder))
                paths.append(rng.choice(files))
                pids.append(pid)
                camids.append(cam)
    return paths, np.array(pids, dtype=np.int64), np.array(camids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- RegDB

REGDB_MODALS = {"visible": "visible", "thermal": "thermal"}


def read_regdb_list(data_path, split, modal, trial):
    """(relative paths, labels) of idx/<split>_<modal>_<trial>.txt (lines 'relative/path.bmp label')."""
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


def process_test_regdb(data_path, trial=1, modal="visible"):
    """Test images of one trial and modality: (img_paths, labels)."""
    if modal not in REGDB_MODALS:
        raise UserError(f"unknown RegDB modality {modal!r}: use visible or thermal")
    rel_paths, labels = read_regdb_list(data_path, "test", modal, trial)
    return [os.path.join(data_path, p) for p in rel_paths], labels


# ---------------------------------------------------------------------------------------------- arrays

def sysu_array_path(data_path, modality, name):
    return os.path.join(data_path, f"train_{modality}_resized_{name}.npy")


def regdb_array_path(data_path, name):
    return os.path.join(data_path, f"regdb_{name}.npy")


def load_train_data(data_path, dataset, trial=1):
    """The preprocessed training arrays of both modalities (images memory-mapped):
    dict with rgb_img (N,H,W,3) uint8, rgb_label int64 0..C-1, rgb_cam int64, and ir_img, ir_label, ir_cam."""
    if not os.path.isdir(data_path):
        raise UserError(f"dataset folder not found: {data_path}")
    script = "pre_process_regdb.py" if dataset == "regdb" else "pre_process_sysu.py"
    try:
        if dataset == "regdb":
            data = {}
            for modality, modal in (("rgb", "visible"), ("ir", "thermal")):
                images = np.load(regdb_array_path(data_path, f"{modal}_img"), mmap_mode="r")
                index = np.load(regdb_array_path(data_path, f"train_{modal}_{trial}_index"))
                raw_labels = np.load(regdb_array_path(data_path, f"train_{modal}_{trial}_label"))
                data[f"{modality}_img"] = images[index]  # one trial's training images (~2,060), in memory
                data[f"{modality}_raw_label"] = raw_labels
                data[f"{modality}_cam"] = np.full(len(index), 1 if modality == "rgb" else 2, dtype=np.int64)
            # relabel to 0..C-1 by sorted original label, the same map for both modalities
            classes = np.unique(np.concatenate([data["rgb_raw_label"], data["ir_raw_label"]]))
            for modality in ("rgb", "ir"):
                data[f"{modality}_label"] = np.searchsorted(classes, data.pop(f"{modality}_raw_label")).astype(np.int64)
        else:
            data = {f"{modality}_{name}": np.load(sysu_array_path(data_path, modality, name),
                                                  mmap_mode="r" if name == "img" else None)
                    for modality in ("rgb", "ir") for name in ARRAY_NAMES}
    except (FileNotFoundError, ValueError, OSError) as err:
        missing = getattr(err, "filename", None) or str(err).splitlines()[0]
        raise UserError(f"training arrays missing or unreadable in {data_path} ({missing}): run "
                        f"python {script} --data_path {data_path}") from None
    for modality in ("rgb", "ir"):
        n = len(data[f"{modality}_img"])
        if not (len(data[f"{modality}_label"]) == len(data[f"{modality}_cam"]) == n) or n == 0:
            raise UserError(f"training arrays in {data_path} disagree in length: re-run python {script}")
        data[f"{modality}_label"] = np.asarray(data[f"{modality}_label"], dtype=np.int64)
        data[f"{modality}_cam"] = np.asarray(data[f"{modality}_cam"], dtype=np.int64)
    return data


# ---------------------------------------------------------------------------------------------- split

def split_one_modality(labels, cams, ratio, rng, per_camera):
    """Labeled indices of one modality: floor(ratio * n) per group, at least one per identity.

    per_camera=False (RegDB): groups are identities, the first images in list order.
    per_camera=True (SYSU): groups are (identity, camera) folders, drawn with rng; an identity whose folders
    all round down to zero gets one image drawn from all of its images.
    """
    labeled = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if not per_camera:
            labeled.append(rows[:max(1, int(ratio * len(rows)))])
            continue
        chosen = [rng.choice(cam_rows, int(ratio * len(cam_rows)), replace=False)
                  for cam_rows in (rows[cams[rows] == cam] for cam in np.unique(cams[rows]))]
        chosen = np.concatenate(chosen)
        labeled.append(chosen if len(chosen) else rng.choice(rows, 1))
    labeled = np.sort(np.concatenate(labeled)).astype(np.int64)
    unlabeled = np.setdiff1d(np.arange(len(labels)), labeled).astype(np.int64)
    return labeled, unlabeled


def make_split(labels_rgb, cams_rgb, labels_ir, cams_ir, dataset, ratio, seed):
    """The labeled/unlabeled split of both modalities, a pure function of its arguments (design section 3).
    Returns {'rgb_labeled', 'rgb_unlabeled', 'ir_labeled', 'ir_unlabeled'}: sorted int64 index arrays."""
    if not 0 < ratio <= 1:
        raise UserError(f"--label_ratio must be in (0, 1], got {ratio}")
    split = {}
    for modal, (modality, labels, cams) in enumerate((("rgb", labels_rgb, cams_rgb), ("ir", labels_ir, cams_ir))):
        rng = np.random.default_rng([seed, modal])
        labeled, unlabeled = split_one_modality(np.asarray(labels), np.asarray(cams), ratio, rng,
                                                per_camera=dataset != "regdb")
        split[f"{modality}_labeled"], split[f"{modality}_unlabeled"] = labeled, unlabeled
    return split


# ---------------------------------------------------------------------------------------------- demo data

def render_person(rng, identity, raw_h, raw_w, infrared):
    """One synthetic pedestrian (raw_h, raw_w, 3) uint8. The identity fixes body proportions, a colour per
    body part and a stripe texture; the image adds pose shift, scale, background and noise. Infrared keeps
    the shapes and the texture but no colour (a grey rendering with its own brightness mapping)."""
    yy, xx = np.mgrid[0:raw_h, 0:raw_w].astype(np.float32)
    scale = rng.uniform(0.85, 1.05)
    cx = raw_w / 2 + rng.uniform(-0.08, 0.08) * raw_w
    top = rng.uniform(0.02, 0.08) * raw_h
    height = scale * raw_h * 0.9
    bg = rng.uniform(60, 200) + rng.normal(0, 12, (raw_h, raw_w))
    image = np.repeat(bg[..., None], 3, axis=2).astype(np.float32)
    parts = [  # (start, end) as fraction of height, half width as fraction of width
        (0.00, 0.14, identity["head_w"]), (0.14, 0.52, identity["torso_w"]), (0.52, 1.00, identity["leg_w"])]
    for part, (start, end, half_w) in enumerate(parts):
        y0, y1 = top + start * height, top + end * height
        mask = (yy >= y0) & (yy < y1) & (np.abs(xx - cx) < half_w * raw_w * scale)
        if part == 2:  # a gap between the legs
            mask &= np.abs(xx - cx) > identity["leg_gap"] * raw_w * scale
        stripes = np.sin((yy - y0) * identity["stripe_freq"][part] + identity["stripe_phase"][part]) > 0
        colour = np.where(stripes[..., None], identity["colour"][part], identity["colour2"][part])
        image = np.where(mask[..., None], colour, image)
    if infrared:
        # thermal look: brightness from the identity's own heat pattern, no colour
        grey = image.mean(axis=2, keepdims=True) * 0.5 + 80
        image = np.repeat(grey, 3, axis=2)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_identity(rng):
    return {"head_w": rng.uniform(0.08, 0.16), "torso_w": rng.uniform(0.18, 0.34), "leg_w": rng.uniform(0.14, 0.28),
            "leg_gap": rng.uniform(0.0, 0.08), "stripe_freq": rng.uniform(0.0, 1.6, 3),
            "stripe_phase": rng.uniform(0, 6.3, 3), "colour": rng.uniform(0, 255, (3, 3)),
            "colour2": rng.uniform(0, 255, (3, 3))}


def make_demo_dataset(root, num_train_ids=40, num_test_ids=20, imgs_per_cam=6, raw_h=128, raw_w=64, seed=0):
    """A synthetic dataset in the SYSU-MM01 layout: cam1..cam6/<id:04d>/<n:04d>.jpg and exp/*_id.txt.
    Every identity appears in all six cameras (visible 1,2,4,5; infrared 3,6). Deterministic from seed.
    Ids are split train (first ~80% of the training ids) / val (rest) / test."""
    rng = np.random.default_rng(seed)
    num_ids = num_train_ids + num_test_ids
    ids = list(range(1, num_ids + 1))
    for pid in ids:
        identity = make_identity(rng)
        for cam in SYSU_RGB_CAMS + SYSU_IR_CAMS:
            folder = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            os.makedirs(folder, exist_ok=True)
            for n in range(1, imgs_per_cam + 1):
                image = render_person(rng, identity, raw_h, raw_w, infrared=cam in SYSU_IR_CAMS)
                Image.fromarray(image).save(os.path.join(folder, f"{n:04d}.jpg"), quality=95)
    num_val = max(1, num_train_ids // 5) if num_train_ids > 1 else 0
    train_ids, val_ids = ids[:num_train_ids - num_val], ids[num_train_ids - num_val:num_train_ids]
    os.makedirs(os.path.join(root, "exp"), exist_ok=True)
    for name, subset in (("train_id.txt", train_ids), ("val_id.txt", val_ids), ("test_id.txt", ids[num_train_ids:])):
        with open(os.path.join(root, "exp", name), "w") as f:
            f.write(",".join(str(pid) for pid in subset))
    return root


def make_demo_regdb(root, num_train_ids=6, num_test_ids=6, imgs_per_id=10, raw_h=128, raw_w=64, seed=0, trials=10):
    """A synthetic dataset in the RegDB layout: Visible/<id>/*.bmp, Thermal/<id>/*.bmp and
    idx/{train,test}_{visible,thermal}_{1..trials}.txt. Each trial splits the ids in its own random half."""
    rng = np.random.default_rng(seed)
    num_ids = num_train_ids + num_test_ids
    files = {"visible": {}, "thermal": {}}
    for pid in range(num_ids):
        identity = make_identity(rng)
        for modal, folder_name in (("visible", "Visible"), ("thermal", "Thermal")):
            folder = os.path.join(root, folder_name, str(pid + 1))
            os.makedirs(folder, exist_ok=True)
            files[modal][pid] = []
            for n in range(imgs_per_id):
                name = f"{folder_name}/{pid + 1}/{modal}_{n:03d}.bmp"
                Image.fromarray(render_person(rng, identity, raw_h, raw_w, infrared=modal == "thermal")).save(
                    os.path.join(root, name))
                files[modal][pid].append(name)
    os.makedirs(os.path.join(root, "idx"), exist_ok=True)
    for trial in range(1, trials + 1):
        order = np.random.default_rng([seed, trial]).permutation(num_ids)
        subsets = {"train": sorted(order[:num_train_ids]), "test": sorted(order[num_train_ids:])}
        for split, pids in subsets.items():
            for modal in ("visible", "thermal"):
                with open(os.path.join(root, "idx", f"{split}_{modal}_{trial}.txt"), "w") as f:
                    for label, pid in enumerate(pids):
                        # RegDB numbers test labels after the training ones
                        label = label if split == "train" else label + num_train_ids
                        f.writelines(f"{name} {label}\n" for name in files[modal][pid])
    return root
