"""RegDB images listed in idx/*.txt -> resized uint8 arrays for all 10 trials, in the dataset root.

    python pre_process_regdb.py --data_path data/RegDB/ [--img_h 288 --img_w 144]

Each image listed in any idx/{train,test}_{visible,thermal}_{1..10}.txt is decoded once:
- regdb_{visible,thermal}_img.npy: (N, H, W, 3) uint8, the distinct listed images in sorted path order;
- regdb_{visible,thermal}_paths.npy: their relative paths (str);
- regdb_train_{visible,thermal}_{t}_index.npy / _label.npy: trial t's training list as rows of the image
  array and the labels of the list file (data_manager.load_train_data relabels them to 0..C-1).
Test images are read from their paths at evaluation time (data_manager.process_test_regdb).
Everything is decoded before anything is written, and each file is written to a temporary name and renamed.
"""
import argparse
import os

import numpy as np

from data_loader import load_images
from data_manager import read_regdb_list, regdb_array_path
from utils import UserError, atomic_save_npy, check_range, run_cli

TRIALS = range(1, 11)


def preprocess_regdb(data_path, img_h=288, img_w=144, workers=4, trials=TRIALS):
    if not os.path.isdir(data_path):
        raise UserError(f"dataset folder not found: {data_path}")
    outputs = {}
    for modal in ("visible", "thermal"):
        lists = {(split, trial): read_regdb_list(data_path, split, modal, trial)
                 for split in ("train", "test") for trial in trials}
        rel_paths = sorted({path for paths, _ in lists.values() for path in paths})
        images = load_images([os.path.join(data_path, p) for p in rel_paths], img_w, img_h, workers,
                             desc=f"RegDB {modal}")
        outputs[f"{modal}_img"] = images
        outputs[f"{modal}_paths"] = np.array(rel_paths)
        row_of = {path: row for row, path in enumerate(rel_paths)}
        for trial in trials:
            paths, labels = lists[("train", trial)]
            outputs[f"train_{modal}_{trial}_index"] = np.array([row_of[p] for p in paths], dtype=np.int64)
            outputs[f"train_{modal}_{trial}_label"] = labels
    for name, array in outputs.items():
        atomic_save_npy(regdb_array_path(data_path, name), array)
    return {modal: len(outputs[f"{modal}_img"]) for modal in ("visible", "thermal")}


def main(args):
    check_range("--img_h", args.img_h, 1)
    check_range("--img_w", args.img_w, 1)
    counts = preprocess_regdb(args.data_path, args.img_h, args.img_w, args.workers)
    print(f"wrote {counts['visible']} visible and {counts['thermal']} thermal images to {args.data_path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default="data/RegDB/")
    parser.add_argument("--img_h", type=int, default=288)
    parser.add_argument("--img_w", type=int, default=144)
    parser.add_argument("--workers", type=int, default=4)
    run_cli(main, parser.parse_args())
