"""Training throughput: images/s of the real training step (forward, backward, SGD step, center update) through
train_mine.train_one_epoch, and the share of the time spent waiting for data.

    python benchmarks/bench_train.py                              # resnet18 on the CPU
    python benchmarks/bench_train.py --gpu 0                      # + resnet50 288x144, fp32 vs bf16 channels_last

Random uint8 images stand in for the preprocessed arrays; batches are the semi-supervised ones (P x K labeled
per modality + unlabeled images with the DCE loss), so every term of the objective runs.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_mine  # noqa: E402
from data_loader import TrainBatches, make_train_loader  # noqa: E402
from model import embed_net  # noqa: E402
from pseudo_label import ClassCenters  # noqa: E402
from utils import setup_logger  # noqa: E402


def synthetic_data(num_ids, per_id, img_h, img_w):
    rng = np.random.default_rng(0)
    data = {}
    for modality in train_mine.MODALITIES:
        data[f"{modality}_img"] = rng.integers(0, 256, (num_ids * per_id, img_h, img_w, 3), dtype=np.uint8)
        data[f"{modality}_label"] = np.repeat(np.arange(num_ids), per_id)
    return data


def bench(arch, img_h, img_w, device, amp, channels_last, iters, workers):
    args = train_mine.get_args_parser().parse_args(
        ["--arch", arch, "--img_h", str(img_h), "--img_w", str(img_w), "--center_start", "0", "--pl_start", "0",
         "--log_every", "1000000"])
    num_ids, per_id = 40, 10
    data = synthetic_data(num_ids, per_id, img_h, img_w)
    labeled = np.arange(0, num_ids * per_id, 5)
    unlabeled = np.setdiff1d(np.arange(num_ids * per_id), labeled)
    pool = (labeled, data["rgb_label"][labeled])
    model = embed_net(num_ids, arch=arch, pretrained="none").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    centers = ClassCenters(num_ids, args.num_parts, args.part_dim).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    logger = setup_logger()

    def epoch(num_batches, seed):
        batches = TrainBatches(data, pool, pool, args.pl_batch_size, args.num_pos, num_batches, seed, 0,
                               rgb_unlabeled=unlabeled, ir_unlabeled=unlabeled, num_unlabeled=args.num_unlabeled)
        return train_mine.train_one_epoch(model, make_train_loader(batches, workers), optimizer, centers, 6, args,
                                          device, amp, scaler, logger)

    epoch(2, 1)  # warm-up: cudnn autotuning, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    stats = epoch(iters, 2)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    images = iters * 2 * (args.pl_batch_size * args.num_pos + args.num_unlabeled)
    return images / elapsed, stats["data_wait"]


def main():
    parser = argparse.ArgumentParser(__doc__)
    parser.add_argument("--gpu", default="cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0)
    opts = parser.parse_args()
    torch.manual_seed(0)
    rows = [("resnet18", 128, 64, torch.device("cpu"), None, False)]
    if opts.gpu != "cpu" and torch.cuda.is_available():
        gpu = torch.device(f"cuda:{opts.gpu}")
        torch.backends.cudnn.benchmark = True
        rows += [("resnet50", 288, 144, gpu, None, False), ("resnet50", 288, 144, gpu, torch.bfloat16, True)]
    elif opts.gpu != "cpu":
        print("no CUDA device: GPU rows skipped")
    print(f"{'arch':9s} {'size':8s} {'device':7s} {'precision':22s} {'images/s':>9s} {'data wait':>9s}")
    for arch, img_h, img_w, device, amp, channels_last in rows:
        iters = opts.iters if device.type == "cpu" else 5 * opts.iters
        rate, wait = bench(arch, img_h, img_w, device, amp, channels_last, iters, opts.workers)
        precision = ("bf16 autocast" if amp else "fp32") + (" channels_last" if channels_last else "")
        print(f"{arch:9s} {img_h}x{img_w:<4d} {device.type:7s} {precision:22s} {rate:9.1f} {wait * 100:8.1f}%")


if __name__ == "__main__":
    main()
