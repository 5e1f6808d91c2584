"""Pseudo-label round at SYSU scale: the vectorised rule vs a per-sample loop of the same rule, then the full
round (feature extraction + rule) per 1,000 images.

    python benchmarks/bench_pseudo_label.py                      # CPU defaults
    python benchmarks/bench_pseudo_label.py --gpu 0 --arch resnet50 --img_h 288 --img_w 144
"""
import os
import sys
import time
import timeit

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluate import extract_features  # noqa: E402
from model import VISIBLE, embed_net  # noqa: E402
from pseudo_label import assign_pseudo_labels  # noqa: E402
from utils import ArgumentParser, choose_device, run_cli  # noqa: E402


def per_sample_rule(part_feats, mean_logits, part_centers, conf_thresh, dist_thresh):
    """The rule written the way the released code does it: one image at a time, one part at a time."""
    accept, labels = [], []
    for feats, logits in zip(part_feats, mean_logits):
        probs = torch.softmax(logits, dim=0)
        conf, label = probs.max(dim=0)
        dists = []
        for part, center in zip(feats, part_centers[label]):
            dists.append(1 - torch.minimum(part, center).sum() / torch.maximum(part, center).sum())
        dist = torch.stack(dists).mean()
        accept.append(bool(conf > conf_thresh and dist < dist_thresh))
        labels.append(int(label))
    return torch.tensor(accept), torch.tensor(labels)


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_unlabeled", type=int, default=27000)
    parser.add_argument("--num_classes", type=int, default=395)
    parser.add_argument("--num_parts", type=int, default=6)
    parser.add_argument("--part_dim", type=int, default=256)
    parser.add_argument("--loop_samples", type=int, default=3000, help="the loop is timed on this many, scaled up")
    parser.add_argument("--gpu", default="cpu", help="CUDA index, or 'cpu'")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--img_h", type=int, default=128)
    parser.add_argument("--img_w", type=int, default=64)
    parser.add_argument("--extract_images", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = choose_device(args.gpu)

    # features shaped like the model's: ReLU part features, logits peaked on a class for some rows
    num, classes, parts, dim = args.num_unlabeled, args.num_classes, args.num_parts, args.part_dim
    part_centers = torch.rand(classes, parts, dim).pow(3)
    true_class = torch.randint(0, classes, (num,))
    part_feats = (part_centers[true_class] + 0.15 * torch.rand(num, parts, dim)).relu()
    noise = torch.randn(num, classes)
    peaked = torch.rand(num, 1) > 0.3  # drawn in this order: the figures stay comparable across runs of older versions
    mean_logits = noise + 8 * torch.nn.functional.one_hot(true_class, classes) * peaked
    args_rule = (0.8, 0.6)

    # on the device once, outside the timing: a round is given features already there
    part_feats_dev, mean_logits_dev, part_centers_dev = (t.to(device) for t in (part_feats, mean_logits, part_centers))

    def vectorised():
        accept, labels, _, _ = assign_pseudo_labels(part_feats_dev, mean_logits_dev, part_centers_dev, *args_rule)
        return accept.cpu(), labels.cpu()  # .cpu() waits for the device, so the time is the round's

    def one_chunk():  # the same rule with every row gathered at once
        accept, _, _, _ = assign_pseudo_labels(part_feats_dev, mean_logits_dev, part_centers_dev, *args_rule,
                                               chunk_rows=num)
        return accept.cpu()

    accept, labels = vectorised()  # the decisions, and a warm-up
    t_vec = min(timeit.repeat(vectorised, number=1, repeat=3))
    t_one_chunk = min(timeit.repeat(one_chunk, number=1, repeat=3))
    loop_n = min(args.loop_samples, num)
    start = time.perf_counter()
    accept_loop, labels_loop = per_sample_rule(part_feats[:loop_n], mean_logits[:loop_n], part_centers, *args_rule)
    t_loop = time.perf_counter() - start
    t_loop_full = t_loop * num / loop_n
    same = bool((accept[:loop_n] == accept_loop).all() and (labels[:loop_n] == labels_loop).all())
    print(f"pseudo-label rule, {num} images x {classes} classes x {parts} parts x {dim}-d on {device}")
    print(f"  vectorised      : {t_vec * 1e3:9.1f} ms  ({accept.float().mean() * 100:.1f}% accepted)")
    print(f"  in one chunk    : {t_one_chunk * 1e3:9.1f} ms  (the default chunks are {t_one_chunk / t_vec:.1f}x faster)")
    print(f"  per-sample loop : {t_loop_full * 1e3:9.1f} ms  (timed on {loop_n}, scaled)")
    print(f"  speed-up        : {t_loop_full / t_vec:9.1f}x   identical decisions: {same}")

    # the full round: eval-mode extraction with parts and logits, then the rule
    model = embed_net(classes, arch=args.arch, pretrained="none", num_parts=parts, part_dim=dim).to(device)
    images = np.random.default_rng(0).integers(0, 256, (args.extract_images, args.img_h, args.img_w, 3), dtype=np.uint8)
    amp = torch.bfloat16 if device.type == "cuda" else None
    extract_features(model, images[:32], VISIBLE, 64, device, amp, return_parts=True)  # warm-up
    start = time.perf_counter()
    _, feats, logits = extract_features(model, images, VISIBLE, 64, device, amp, return_parts=True)
    assign_pseudo_labels(feats.to(device), logits.to(device), torch.rand(classes, parts, dim, device=device), *args_rule)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_thousand = (time.perf_counter() - start) / args.extract_images * 1000
    print(f"full round ({args.arch} {args.img_h}x{args.img_w}, {device}): {per_thousand:.2f} s per 1,000 images")


if __name__ == "__main__":
    run_cli(main)
