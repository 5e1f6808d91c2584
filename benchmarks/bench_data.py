"""Training-data throughput: the batched uint8 tensor pipeline (train_augment) vs the per-image PIL pipeline
(ToPILImage, Pad, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize), on the same CPU, in one run.

    python benchmarks/bench_data.py [--img_h 288 --img_w 144 --batch 64 --batches 20 --rounds 3]

Both start from the same uint8 array and batch rows and end with one (B, 3, H, W) float32 batch; each round
runs every batch once through each pipeline, and the best round of each is kept (the machine is shared; the
best round is the least disturbed one). Goal (issue 6): batched >= 5x the per-image images/s.
On the CPU, part of the batched time is the kernel handing fresh pages to each new 32 MB float batch
(288x144x64); on a GPU the caching allocator reuses memory and the batched path runs where the model does.
"""
import os
import sys
import timeit

import numpy as np
import torch
import torchvision.transforms as T

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_loader import IMAGENET_MEAN, IMAGENET_STD, random_augment_params, train_augment  # noqa: E402
from utils import ArgumentParser, number, run_cli  # noqa: E402


def per_image_train_transform(image, pad, top, left, flip):
    """The AGW per-image pipeline (ToPILImage, Pad, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize)
    with its random draws fixed, image (H, W, 3) uint8 -> (3, H, W) float32: the baseline of this benchmark
    (tests/test_data_loader.py checks it computes what train_augment computes)."""
    height, width = image.shape[:2]
    img = T.Pad(pad)(T.ToPILImage()(image))
    img = T.functional.crop(img, top, left, height, width)
    if flip:
        img = T.functional.hflip(img)
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(img))




def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img_h", type=number(int, 1), default=288)
    parser.add_argument("--img_w", type=number(int, 1), default=144)
    parser.add_argument("--batch", type=number(int, 1), default=64)
    parser.add_argument("--batches", type=number(int, 1), default=20)
    parser.add_argument("--rounds", type=number(int, 1), default=3)
    parser.add_argument("--pad", type=number(int, 0), default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch * 4, args.img_h, args.img_w, 3), dtype=np.uint8)
    batches = [rng.choice(len(images), args.batch) for _ in range(args.batches)]
    # the per-image pipeline gets its random draws from torch too, batch by batch, like the batched one
    gen = torch.Generator().manual_seed(0)

    def per_image():
        for rows in batches:
            offsets, flips = random_augment_params(len(rows), args.pad, gen)
            torch.stack([per_image_train_transform(images[r], args.pad, int(top), int(left), bool(flip))
                         for r, (top, left), flip in zip(rows, offsets.tolist(), flips.tolist())])

    def batched():
        for rows in batches:
            train_augment(torch.from_numpy(images[rows]), args.pad, gen)

    batched()  # warm-up
    seconds = {"per-image PIL": float("inf"), "batched tensor": float("inf")}
    for _ in range(args.rounds):
        for name, fn in (("per-image PIL", per_image), ("batched tensor", batched)):
            seconds[name] = min(seconds[name], timeit.timeit(fn, number=1))
    rates = {name: args.batch * args.batches / s for name, s in seconds.items()}
    print(f"{args.img_h}x{args.img_w}, {args.batches} batches of {args.batch}, best of {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    for name, rate in rates.items():
        print(f"  {name:15s}: {rate:8.0f} images/s")
    print(f"  speed-up       : {rates['batched tensor'] / rates['per-image PIL']:8.1f}x   (goal >= 5x)")


if __name__ == "__main__":
    run_cli(main)
