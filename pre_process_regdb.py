"""RegDB images listed in idx/*.txt -> resized uint8 arrays for all 10 trials, in the dataset root.

    python pre_process_regdb.py --data_path data/RegDB/ [--img_h 288 --img_w 144] [--workers 4]

Every image listed in any idx/{train,test}_{visible,thermal}_{1..10}.txt is decoded once. Files written
(M = visible or thermal, t = trial 1..10):
- regdb_M_img.npy: (N, H, W, 3) uint8, the distinct listed images of modality M in sorted path order;
- regdb_M_paths.npy: (N,) str, their paths relative to the root, as the list files write them;
- regdb_train_M_t_index.npy, regdb_test_M_t_index.npy: (n,) int64, the rows of regdb_M_img.npy that
  idx/{train,test}_M_t.txt lists, in list order;
- regdb_train_M_t_label.npy, regdb_test_M_t_label.npy: (n,) int64, the labels of those lines as written
  (data_manager.load_train_data relabels a trial's training labels to 0..C-1);
- regdb_sources.npy: a signature of the files read (lists and images: paths, sizes, modification times); training
  refuses arrays whose folder changed since.
Everything is decoded before anything is written, then all files are written together (temporary files
renamed at the end), so a failure leaves no new .npy behind.
"""
import os

import numpy as np

from data_loader import load_images
from data_manager import (REGDB_MODALS, REGDB_TRIALS, read_regdb_list, regdb_array_path, regdb_sources,
                          sources_path, sources_signature)
from utils import UserError, preprocessing_parser, run_cli, save_arrays_together


def preprocess_regdb(data_path, img_h=288, img_w=144, workers=4, trials=REGDB_TRIALS):
    """Decode, resize and save the arrays above; returns {modality: distinct image count}."""
    if not os.path.isdir(data_path):
        raise UserError(f"dataset folder not found: {data_path}")
    arrays, counts = {}, {}
    for modal in REGDB_MODALS:
        lists = {(split, trial): read_regdb_list(data_path, split, modal, trial)
                 for split in ("train", "test") for trial in trials}
        rel_paths = sorted({path for paths, _ in lists.values() for path in paths})
        row_of = {path: row for row, path in enumerate(rel_paths)}
        arrays[regdb_array_path(data_path, f"{modal}_img")] = load_images(
            [os.path.join(data_path, p) for p in rel_paths], img_w, img_h, workers, desc=f"RegDB {modal}")
        arrays[regdb_array_path(data_path, f"{modal}_paths")] = np.array(rel_paths)
        for (split, trial), (paths, labels) in lists.items():
            arrays[regdb_array_path(data_path, f"{split}_{modal}_{trial}_index")] = np.array(
                [row_of[p] for p in paths], dtype=np.int64)
            arrays[regdb_array_path(data_path, f"{split}_{modal}_{trial}_label")] = labels
        counts[modal] = len(rel_paths)
    arrays[sources_path(data_path, "regdb")] = np.array(sources_signature(data_path, regdb_sources(data_path, trials)))
    save_arrays_together(arrays)
    return counts


def main(args):
    counts = preprocess_regdb(args.data_path, args.img_h, args.img_w, args.workers)
    print(f"wrote {counts['visible']} visible and {counts['thermal']} thermal images to {args.data_path}")


if __name__ == "__main__":
    run_cli(lambda: main(preprocessing_parser(__doc__.splitlines()[0], "data/RegDB/").parse_args()))
