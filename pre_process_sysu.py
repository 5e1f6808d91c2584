"""SYSU-MM01 training images -> resized uint8 arrays in the dataset root.

    python pre_process_sysu.py --data_path data/SYSU-MM01/ [--img_h 288 --img_w 144] [--sysu_ids trainval|train]
                               [--workers 4]

Writes train_{rgb,ir}_resized_img.npy (N, H, W, 3) uint8, train_{rgb,ir}_resized_label.npy (int64, index of
the id in the sorted training id list) and train_{rgb,ir}_resized_cam.npy (int64 camera number). Order: ids
sorted, then camera (visible 1,2,4,5; infrared 3,6), then file name, as the AGW baseline. All six arrays are
decoded before anything is written, then written together (temporary files renamed at the end), so a failure
leaves no new .npy behind.
"""
import os

import numpy as np

from data_loader import load_images
from data_manager import SYSU_IR_CAMS, SYSU_RGB_CAMS, read_sysu_ids, sysu_array_path, sysu_image_list
from utils import UserError, preprocessing_parser, run_cli, save_arrays_together


def preprocess_sysu(data_path, img_h=288, img_w=144, sysu_ids="trainval", workers=4):
    """Decode, resize and save the training arrays of both modalities; returns {modality: image count}."""
    ids = read_sysu_ids(data_path, sysu_ids)
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
    save_arrays_together(arrays)
    return {modality: len(arrays[sysu_array_path(data_path, modality, "img")]) for modality in ("rgb", "ir")}


def arrays_match(data_path, img_h, img_w):
    """True if all six arrays exist and hold images of this size."""
    try:
        shapes = [np.load(sysu_array_path(data_path, m, "img"), mmap_mode="r").shape for m in ("rgb", "ir")]
    except (OSError, ValueError):
        return False
    return all(os.path.isfile(sysu_array_path(data_path, m, n)) for m in ("rgb", "ir") for n in ("label", "cam")) \
        and all(shape[1:3] == (img_h, img_w) for shape in shapes)


def main(args):
    counts = preprocess_sysu(args.data_path, args.img_h, args.img_w, args.sysu_ids, args.workers)
    print(f"wrote {counts['rgb']} visible and {counts['ir']} infrared training images to {args.data_path}")


if __name__ == "__main__":
    parser = preprocessing_parser(__doc__.splitlines()[0], "data/SYSU-MM01/")
    parser.add_argument("--sysu_ids", default="trainval", choices=["trainval", "train"],
                        help="trainval: the standard 395 training ids; train: the 296 the released code reads")
    run_cli(lambda: main(parser.parse_args()))
