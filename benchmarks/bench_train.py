"""Training throughput: images/s of the real training step (forward, backward, SGD step, center update) through
train_mine.train_one_epoch, and the share of the time spent waiting for data.

    python benchmarks/bench_train.py                              # resnet18 on the CPU
    python benchmarks/bench_train.py --gpu 0                      # + resnet50 288x144, fp32 vs bf16 channels_last
    python benchmarks/bench_train.py --compare_precision [--gpu 0] # a short run's losses, fp32 vs bf16 autocast

Random uint8 images stand in for the preprocessed arrays; batches are the semi-supervised ones (P x K labeled
per modality + unlabeled images with the DCE loss), so every term of the objective runs.
"""
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
from utils import ArgumentParser, number, run_cli, setup_logger  # noqa: E402


def synthetic_data(num_ids, per_id, img_h, img_w):
    rng = np.random.default_rng(0)
    data = {}
    for modality in train_mine.MODALITIES:
        data[f"{modality}_img"] = rng.integers(0, 256, (num_ids * per_id, img_h, img_w, 3), dtype=np.uint8)
        data[f"{modality}_label"] = np.repeat(np.arange(num_ids), per_id)
    return data


class Trainer:
    """A model, its centers and optimizer on synthetic data, trained epoch by epoch by train_mine.train_one_epoch."""

    def __init__(self, arch, img_h, img_w, device, channels_last, workers, init_seed=0):
        self.args = train_mine.get_args_parser().parse_args(
            ["--arch", arch, "--img_h", str(img_h), "--img_w", str(img_w), "--center_start", "0", "--pl_start", "0",
             "--log_every", "1000000"])
        num_ids, per_id = 40, 10
        self.data = synthetic_data(num_ids, per_id, img_h, img_w)
        labeled = np.arange(0, num_ids * per_id, 5)
        self.unlabeled = np.setdiff1d(np.arange(num_ids * per_id), labeled)
        self.pool = (labeled, self.data["rgb_label"][labeled])
        torch.manual_seed(init_seed)  # the same initial weights for every run that shares init_seed
        self.model = embed_net(num_ids, arch=arch, pretrained="none").to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.centers = ClassCenters(num_ids, self.args.num_parts, self.args.part_dim).to(device)
        self.optimizer = train_mine.make_optimizer(self.model, self.args)
        train_mine.set_lr(self.optimizer, self.args.lr, factor=1.0)  # the paper's lr after warm-up
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.device, self.workers, self.logger = device, workers, setup_logger()

    def epoch(self, num_batches, batch_seed, epoch, amp, semi=True, make_loader=make_train_loader):
        """One epoch of num_batches batches, returning train_one_epoch's stats: semi-supervised ones (P x K labeled
        + unlabeled images per modality, with the DCE), or warm-up ones (--batch-size x K labeled, semi=False).
        make_loader(batches, workers) builds the loader (another data path can be timed through the same step)."""
        args = self.args
        unlabeled = dict(rgb_unlabeled=self.unlabeled, ir_unlabeled=self.unlabeled, unlabeled_ids=args.unlabeled_ids,
                         unlabeled_pos=args.unlabeled_pos) if semi else {}
        batches = TrainBatches(self.data, self.pool, self.pool, args.pl_batch_size if semi else args.batch_size,
                               args.num_pos, num_batches, batch_seed, epoch, **unlabeled)
        return train_mine.train_one_epoch(self.model, make_loader(batches, self.workers), self.optimizer,
                                          self.centers, epoch, args, self.device, amp, self.scaler, self.logger,
                                          use_dce=semi)


def throughput(arch, img_h, img_w, device, amp, channels_last, iters, workers):
    """Images/s of the training step and the share of the time spent waiting for data."""
    trainer = Trainer(arch, img_h, img_w, device, channels_last, workers)
    trainer.epoch(2, 1, 0, amp)  # warm-up: cudnn autotuning, allocator
    synchronize(device)
    start = time.perf_counter()
    stats = trainer.epoch(iters, 2, 1, amp)
    synchronize(device)
    elapsed = time.perf_counter() - start
    args = trainer.args
    images = iters * 2 * (args.pl_batch_size * args.num_pos + args.unlabeled_ids * args.unlabeled_pos)
    return images / elapsed, stats["data_wait"]


def compare_precision(arch, img_h, img_w, device, amp, epochs, iters):
    """Losses of a short run in fp32 and under autocast from the same weights and batches, against the noise
    of the run itself: the same fp32 run on other batches (another sampling seed)."""
    runs = {"fp32": (None, 0), "autocast": (amp, 0), "fp32, other batches": (None, 1)}
    losses = {}
    for name, (precision, batch_seed) in runs.items():
        trainer = Trainer(arch, img_h, img_w, device, channels_last=precision is not None, workers=0)
        stats = [trainer.epoch(iters, 100 * batch_seed + e, e, precision) for e in range(epochs)]
        losses[name] = {term: np.array([s[term] for s in stats]) for term in stats[0] if term != "data_wait"}
    print(f"{arch} {img_h}x{img_w} on {device}, {epochs} epochs x {iters} steps, per-epoch mean losses:")
    for term, fp32 in losses["fp32"].items():
        mixed, other = losses["autocast"][term], losses["fp32, other batches"][term]
        print(f"  {term:9s} fp32 {np.array2string(fp32, precision=4)}  autocast {np.array2string(mixed, precision=4)}"
              f"  |diff| max {np.abs(mixed - fp32).max():.4f}  (noise: other batches {np.abs(other - fp32).max():.4f})")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="cpu", help="CUDA index, or 'cpu'")
    parser.add_argument("--iters", type=number(int, 1), default=10)
    parser.add_argument("--workers", type=number(int, 0), default=0)
    parser.add_argument("--compare_precision", action="store_true",
                        help="instead of throughput: a short run's losses, fp32 vs bf16 autocast")
    parser.add_argument("--epochs", type=number(int, 1), default=3, help="epochs of the precision comparison")
    opts = parser.parse_args()
    gpu = None
    if opts.gpu != "cpu" and torch.cuda.is_available():
        gpu = torch.device(f"cuda:{opts.gpu}")
        torch.backends.cudnn.benchmark = True
    elif opts.gpu != "cpu":
        print("no CUDA device: GPU rows skipped")
    if opts.compare_precision:
        if gpu is None:  # the CPU's bf16 autocast: the same numerics question, without a GPU
            compare_precision("resnet18", 128, 64, torch.device("cpu"), torch.bfloat16, opts.epochs, opts.iters)
        else:
            compare_precision("resnet50", 288, 144, gpu, torch.bfloat16, opts.epochs, opts.iters)
        return
    rows = [("resnet18", 128, 64, torch.device("cpu"), None, False)]
    if gpu is not None:
        rows += [("resnet50", 288, 144, gpu, None, False), ("resnet50", 288, 144, gpu, torch.bfloat16, True)]
    print(f"{'arch':9s} {'size':8s} {'device':7s} {'precision':22s} {'images/s':>9s} {'data wait':>9s}")
    for arch, img_h, img_w, device, amp, channels_last in rows:
        iters = opts.iters if device.type == "cpu" else 5 * opts.iters
        rate, wait = throughput(arch, img_h, img_w, device, amp, channels_last, iters, opts.workers)
        precision = ("bf16 autocast" if amp else "fp32") + (" channels_last" if channels_last else "")
        print(f"{arch:9s} {img_h}x{img_w:<4d} {device.type:7s} {precision:22s} {rate:9.1f} {wait * 100:8.1f}%")


if __name__ == "__main__":
    run_cli(main)
