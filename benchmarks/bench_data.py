"""Training-data throughput: the batched uint8 tensor pipeline (train_augment) vs the per-image PIL pipeline
(ToPILImage, Pad, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize), on the same CPU, in one run.

    python benchmarks/bench_data.py [--img_h 288 --img_w 144 --batch 64 --batches 20]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_loader import per_image_train_transform, train_augment  # noqa: E402


def main():
    parser = argparse.ArgumentParser(__doc__)
    parser.add_argument("--img_h", type=int, default=288)
    parser.add_argument("--img_w", type=int, default=144)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--pad", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch * 4, args.img_h, args.img_w, 3), dtype=np.uint8)
    batches = [rng.choice(len(images), args.batch) for _ in range(args.batches)]
    gen = torch.Generator().manual_seed(0)

    def per_image():
        for rows in batches:
            out = torch.stack([per_image_train_transform(images[r], args.pad, int(rng.integers(0, 2 * args.pad + 1)),
                                                         int(rng.integers(0, 2 * args.pad + 1)), bool(rng.random() < 0.5))
                               for r in rows])
        return out

    def batched():
        for rows in batches:
            out = train_augment(torch.from_numpy(images[rows]), args.pad, gen)
        return out

    batched()
    results = {}
    for name, fn in (("per-image PIL", per_image), ("batched tensor", batched)):
        start = time.perf_counter()
        fn()
        results[name] = args.batch * args.batches / (time.perf_counter() - start)
    print(f"{args.img_h}x{args.img_w}, batches of {args.batch}, {torch.get_num_threads()} threads")
    for name, rate in results.items():
        print(f"  {name:15s}: {rate:8.0f} images/s")
    print(f"  speed-up       : {results['batched tensor'] / results['per-image PIL']:8.1f}x")


if __name__ == "__main__":
    main()
