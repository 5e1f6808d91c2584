"""SYSU-MM01 training images -> resized uint8 arrays in the dataset root.

    python pre_process_sysu.py --data_path data/SYSU-MM01/ [--img_h 288 --img_w 144] [--workers 4]

Every training identity of exp/train_id.txt and exp/val_id.txt (395 for SYSU-MM01) is preprocessed once;
train_mine.py --sysu_ids train selects the 296 of train_id.txt at training time. Writes
train_{rgb,ir}_resized_img.npy (N, H, W, 3) uint8, train_{rgb,ir}_resized_label.npy (int64, index of the id in
the sorted train+val id list), train_{rgb,ir}_resized_cam.npy (int64 camera number) and
train_resized_ids.npy (the identity number of each label) and train_resized_sources.npy (a signature of the
files read: paths, sizes, modification times; training refuses arrays whose folder changed since). Order: ids sorted, then camera (visible 1,2,4,5;
infrared 3,6), then file name, as the AGW baseline. All arrays are decoded before anything is written, then
written together (temporary files renamed at the end), so a failure leaves no new .npy behind.
"""
import os

import numpy as np

from data_loader import load_images
from data_manager import (SYSU_IR_CAMS, SYSU_RGB_CAMS, check_sources, current_signature, read_sysu_ids,
                          sources_path, sysu_array_path, sysu_ids_path, sysu_image_list)
from utils import UserError, preprocessing_parser, run_cli, save_arrays_together


def preprocess_sysu(data_path, img_h=288, img_w=144, workers=4):
    """Decode, resize and save the training arrays of both modalities; returns {modality: image count}."""
    ids = read_sysu_ids(data_path, "trainval")
    if not any(os.path.isdir(os.path.join(data_path, f"cam{cam}")) for cam in SYSU_RGB_CAMS + SYSU_IR_CAMS):
        raise UserError(f"no camera folders (cam1..cam6) in {data_path}")
    arrays = {}
    for modality, cams in (("rgb", SYSU_RGB_CAMS), ("ir", SYSU_IR_CAMS)):
        paths, pids, camids = sysu_image_list(data_path, ids, cams)
        missing = sorted(set(ids) - set(pids.tolist()))
        if missing:
            raise UserError(f"training id {missing[0]:04d} has no {modality} image in {data_path}")
        arrays[sysu_array_path(data_path, modality, "img")] = load_images(paths, img_w, img_h, workers,
                                                                          desc=f"SYSU {modality}")
        arrays[sysu_array_path(data_path, modality, "label")] = np.searchsorted(ids, pids).astype(np.int64)
        arrays[sysu_array_path(data_path, modality, "cam")] = camids
    arrays[sysu_ids_path(data_path)] = np.array(ids, dtype=np.int64)
    arrays[sources_path(data_path, "sysu")] = np.array(current_signature(data_path, "sysu"))
    save_arrays_together(arrays)
    return {modality: len(arrays[sysu_array_path(data_path, modality, "img")]) for modality in ("rgb", "ir")}


def array_sizes(data_path):
    """(height, width) of the images of the visible and the infrared arrays, or None where an array is missing or
    unreadable."""
    sizes = []
    for modality in ("rgb", "ir"):
        try:
            sizes.append(np.load(sysu_array_path(data_path, modality, "img"), mmap_mode="r").shape[1:3])
        except (OSError, ValueError):
            sizes.append(None)
    return sizes


def arrays_match(data_path, img_h, img_w):
    """True if all the arrays exist, hold images of this size, and were made from the folder as it is now."""
    others = [sysu_array_path(data_path, m, n) for m in ("rgb", "ir") for n in ("label", "cam")]
    if not all(size == (img_h, img_w) for size in array_sizes(data_path)) or \
            not all(os.path.isfile(path) for path in others + [sysu_ids_path(data_path)]):
        return False
    try:
        check_sources(data_path, "sysu")
    except UserError:
        return False
    return True


def main(args):
    counts = preprocess_sysu(args.data_path, args.img_h, args.img_w, args.workers)
    print(f"wrote {counts['rgb']} visible and {counts['ir']} infrared training images to {args.data_path}")


if __name__ == "__main__":
    run_cli(lambda: main(preprocessing_parser(__doc__.splitlines()[0], "data/SYSU-MM01/").parse_args()))
