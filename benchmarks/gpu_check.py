"""One command that checks the whole CUDA path in the first minutes a GPU is lent.

It checks the demo's correctness on the device, training throughput at the paper's size against the field's data
path, the pseudo-label round and the evaluation at SYSU-MM01 scale, and torchrun/NCCL, and from those estimates the
wall time of the paper's full SYSU run.

    python benchmarks/gpu_check.py --gpu 0                           # one H100/H200: <= 8 minutes (not yet measured)
    python benchmarks/gpu_check.py --gpu cpu --quick                 # every step, toy sizes, CPU (~90 s, 2 cores)
    python benchmarks/gpu_check.py --gpu 0 --steps throughput,estimate  # some steps only (estimate needs 2-4)

Steps, in this order, each timed and guarded (a failure is reported with its first line and the others still run):
1. correctness   the demo end to end on the device in fp32 and bf16 and on the CPU, same seed: last rank-1 / mAP /
                 mINP, pool share and precision; fp32-device minus CPU and bf16 minus fp32 against the seed spread
2. throughput    training images/s and peak GPU memory at the paper's size (resnet50, 288x144) for the warm-up and
                 the semi-supervised batch, in fp32 / bf16 with and without channels_last, and the same step fed the
                 field's way (per-image PIL transforms in DataLoader workers, fp32) as the reference
3. pseudo_label  fp32 eval-mode extraction images/s and the rule at 27,000 x 395 x 6 x 256: one SYSU round
4. evaluation    SYSU metrics (3,803 queries, multi-shot gallery) and k-reciprocal re-ranking, synthetic features
5. distributed   torchrun --standalone train_mine.py --dataset demo at the paper's size on 1, 2, 4, 8 GPUs (those
                 there are; NCCL, --sync_bn; gloo, 2 processes on the CPU): images/s, scaling efficiency, the run's own
                 per-epoch agreement check, and --test-only on its checkpoint reproducing the run's `last` figures
6. estimate      the wall time of the paper's SYSU run (61 epochs) from steps 2-4 and SYSU's real sizes
Writes report.json and report.md into --out (default log/gpu_check/<timestamp>/) and prints the Markdown; every
train_mine.py run keeps its log in --out/runs/, its console output in --out/console/. Exits non-zero (one `error:`
line) when a step failed. Default sizes are the full check's; --quick gives toy ones; every size is a flag.
"""
import contextlib
import csv
import gc
import json
import os
import re
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_train  # noqa: E402  (benchmarks/ is sys.path[0] when this file runs as a script)
import train_mine  # noqa: E402
from bench_data import per_image_train_transform  # noqa: E402
from bench_eval import sysu_problem  # noqa: E402
from data_loader import make_train_loader, random_augment_params  # noqa: E402
from eval_metrics import eval_sysu  # noqa: E402
from evaluate import cosine_distance, extract_features, ranking_distance  # noqa: E402
from model import VISIBLE  # noqa: E402
from pseudo_label import assign_pseudo_labels  # noqa: E402
from runs import write_json  # noqa: E402
from tests.train_helpers import FAST, with_flag  # noqa: E402
from utils import (ArgumentParser, UserError, choose_device, first_line, number, number_list, run_cli,  # noqa: E402
                   run_record)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# SYSU-MM01 as the paper trains and tests it (train + val identities; the published totals are 30,071 visible and
# 15,792 infrared images of 491 identities, so the 96 test identities hold 30,071 - 22,258 = 7,813 visible images,
# the gallery candidates every evaluation extracts, and the 3,803 infrared queries)
SYSU = dict(rgb_train=22258, ir_train=11909, classes=395, queries=3803, test_visible=7813, unlabeled=27000)
# the README's demo table, CPL rank-1 of seeds 0-2 (59.08, 85.21, 65.71): the seed-to-seed std a difference is read
# against when fewer than three seeds run on the device
README_SEED_STD_RANK1 = 13.6
FEATURE_NOISE = 2.7  # the synthetic features' noise around their identity centres (bench_eval's default)
FIGURES = train_mine.FIGURES  # rank1, mAP, mINP

# the configurations of our training step: (autocast dtype, channels_last); fp32_cl is what train_mine.py runs with
# --amp none on a GPU (build_model puts the model in channels_last there), bf16_cl what it runs with --amp bf16
PRECISIONS = {"fp32": (None, False), "fp32_cl": (None, True), "bf16": (torch.bfloat16, False),
              "bf16_cl": (torch.bfloat16, True)}

# Sizes of the full check (fits 8 minutes on one H100/H200) and of --quick (toy, the CPU); a typed flag wins.
FULL = dict(demo_seeds=[0, 1], arch="resnet50", img_h=288, img_w=144, iters=40, workers=4, field_workers=4,
            precisions=list(PRECISIONS), extract_images=2048, rule_rows=SYSU["unlabeled"], gallery_per_cam=10,
            rerank_queries=SYSU["queries"], ddp_iters=60, processes=[1, 2, 4, 8], cpu_threads=0)
QUICK = dict(demo_seeds=[0], arch="resnet18", img_h=32, img_w=16, iters=2, workers=0, field_workers=2,
             precisions=["fp32", "bf16_cl"], extract_images=128, rule_rows=2000, gallery_per_cam=1, rerank_queries=300,
             ddp_iters=2, processes=[1, 2], cpu_threads=1)

# ----------------------------------------------------------------------------------------------------- running

def start_command(command, console_file, env=None):
    """A child process with its output in console_file."""
    with open(console_file, "w") as console:
        return subprocess.Popen(command, cwd=REPO, stdout=console, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(os.environ, **env))


def finish_command(process, console_file, timeout):
    """Wait for a child; a failure (or no end within timeout seconds) raises RuntimeError with the child's error."""
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        raise RuntimeError(f"{os.path.basename(console_file)}: no result after {timeout} s (stopped)") from None
    except BaseException:  # Ctrl-C or SIGTERM of this check: its children stop too
        stop(process)
        raise
    if returncode != 0:
        raise RuntimeError(f"{os.path.basename(console_file)} exited {returncode}: {error_line(console_file)}")


def stop(process):
    """SIGTERM first, which torchrun passes on to its workers (a SIGKILL would leave them running), then SIGKILL."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def error_line(console_file):
    """What a failed run said of its failure: train_mine.py's one-line `error:`, else the first exception line (a
    traceback's root cause; torchrun's own ChildFailedError comes after its child's), else its last line."""
    with open(console_file, errors="replace") as console:
        lines = [line.strip() for line in console if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    exceptions = [line for line in lines if re.match(r"[\w.]*(Error|Exception)(:|$)", line)]
    if errors:
        return errors[-1]
    if exceptions:
        return exceptions[0]
    return lines[-1] if lines else "no output"


def run_command(command, console_file, timeout, env=None):
    finish_command(start_command(command, console_file, env), console_file, timeout)


class Check:
    """Where the step's runs go and what every step shares: options, device, earlier steps' figures."""

    def __init__(self, opts, device):
        self.opts, self.device = opts, device
        self.figures = {}  # step -> its figures, for the steps that read earlier ones (the estimate)
        for folder in ("runs", "console"):
            os.makedirs(os.path.join(opts.out, folder), exist_ok=True)

    @property
    def gpu(self):
        return "cpu" if self.device.type == "cpu" else str(self.device.index)

    def cpu_threads(self, cores=None):
        """OMP_NUM_THREADS of a train_mine.py run on the CPU: --cpu_threads, else `cores` (default: all)."""
        return {"OMP_NUM_THREADS": str(self.opts.cpu_threads or cores or os.cpu_count() or 1)}

    def train_command(self, flags, name):
        return [sys.executable, "train_mine.py", *flags, "--log_path", os.path.join(self.opts.out, "runs", "log"),
                "--model_path", os.path.join(self.opts.out, "runs", "save"), "--run_name", name]

    def console(self, name):
        return os.path.join(self.opts.out, "console", f"{name}.txt")

    def results(self, name):
        with open(os.path.join(self.opts.out, "runs", "log", name, "results.json")) as f:
            return json.load(f)

    def demo_flags(self, seed, gpu, extra=()):
        """train_mine.py flags of a demo run (the demo recipe; with --quick, the tests' small but complete FAST
        configuration for 2 epochs: a warm-up epoch, then a round that accepts every image it scores) plus extra, on
        its data: the demo dataset of the seed at the run's image size, built before any run starts (so concurrent
        runs never build it twice), one root per size (a root holds arrays of one size)."""
        flags = ["--dataset", "demo", "--seed", str(seed), "--no_pictures",
                 *(with_flag(FAST, "--gpu", gpu) + ["--epochs", "2"] if self.opts.quick else ["--gpu", gpu]),
                 *extra]
        args = train_mine.parse_args(flags)
        args.data_path = os.path.join(self.opts.data_root or os.path.join(self.opts.out, "data"),
                                      f"seed{seed}_{args.img_h}x{args.img_w}")
        args.workers = 4  # decoding threads of the preprocessing
        train_mine.prepare_demo_data(args, train_mine.setup_logger(enabled=False))
        return flags + ["--data_path", args.data_path]

    def synchronize(self):
        bench_train.synchronize(self.device)


def free_device_memory(device):
    """Drop what the last configuration left, and restart the peak counter: each peak is one configuration's."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def figure_diff(a, b):
    return {key: a[key] - b[key] for key in FIGURES}


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown_table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


# -------------------------------------------------------------------------------------------- 1. correctness

def demo_figures(results):
    """What a demo run's results.json says of the method: last figures, the pool, the phase gain, its wall time."""
    pool, phase = results["pseudo_label"], results.get("phase") or {}
    return dict({key: results["last"][key] for key in FIGURES}, pool_size=pool["pool_size"], pool_share=pool["share"],
                pool_precision=pool["precision"], phase_gain_rank1=(phase.get("gain") or {}).get("rank1"),
                wall_s=results["run"]["wall_time_s"], device=results["run"]["device"])


def check_correctness(check):
    """The demo run on the device (fp32 on every seed, bf16 on the first) and on the CPU (fp32, the first seed)."""
    opts, device = check.opts, check.device
    seeds = opts.demo_seeds
    device_runs = [(f"demo_{device.type}_fp32_seed{seed}", seed, "none") for seed in seeds]
    if device.type == "cuda":  # train_mine.py's autocast is CUDA-only: on the CPU --amp bf16 would rerun fp32
        device_runs.insert(1, (f"demo_cuda_bf16_seed{seeds[0]}", seeds[0], "bf16"))
    cpu_name = f"demo_cpu_reference_seed{seeds[0]}"
    cpu_command = check.train_command(check.demo_flags(seeds[0], "cpu", ["--amp", "none"]), cpu_name)
    # The CPU run, the longest, goes beside the device runs: on a GPU machine with all cores but 2 (the device runs'
    # own); on the CPU with the device runs' threads (the two runs must then be equal), when both fit in the cores.
    cores = os.cpu_count() or 1
    cpu_threads = check.cpu_threads(max(1, cores - 2) if device.type == "cuda" else None)
    beside = device.type == "cuda" or 2 * int(cpu_threads["OMP_NUM_THREADS"]) <= cores
    background = start_command(cpu_command, check.console(cpu_name), cpu_threads) if beside else None
    try:
        for name, seed, amp in device_runs:
            run_command(check.train_command(check.demo_flags(seed, check.gpu, ["--amp", amp]), name),
                        check.console(name), opts.run_timeout, cpu_threads if device.type == "cpu" else None)
        if background is None:
            run_command(cpu_command, check.console(cpu_name), opts.run_timeout, cpu_threads)
        else:
            finish_command(background, check.console(cpu_name), opts.run_timeout)
            background = None
    finally:
        if background is not None:  # a device run failed: the CPU run is not waited for
            stop(background)
    runs = {name: demo_figures(check.results(name)) for name in [name for name, _, _ in device_runs] + [cpu_name]}
    by_amp = {amp: runs[name] for name, seed, amp in device_runs if seed == seeds[0]}
    seed_rank1 = [runs[name]["rank1"] for name, _, amp in device_runs if amp == "none"]
    measured_spread = float(np.std(seed_rank1, ddof=1)) if len(seed_rank1) > 1 else None
    spread = measured_spread if len(seed_rank1) >= 3 else README_SEED_STD_RANK1
    comparisons = {"fp32_minus_cpu": figure_diff(by_amp["none"], runs[cpu_name]),
                   "bf16_minus_fp32": figure_diff(by_amp["bf16"], by_amp["none"]) if "bf16" in by_amp else None}
    figures = dict(runs=runs, **comparisons, seed_rank1=seed_rank1, seed_std_rank1_measured=measured_spread,
                   seed_std_rank1_reference=spread, within_seed_spread={
                       key: abs(diff["rank1"]) <= spread for key, diff in comparisons.items() if diff is not None})
    rows = [[name, run["device"], fmt(run["rank1"], 2), fmt(run["mAP"], 2), fmt(run["mINP"], 2),
             f"{fmt(run['pool_share'])}% / {fmt(run['pool_precision'])}%", fmt(run["phase_gain_rank1"], 2),
             fmt(run["wall_s"], 0)] for name, run in runs.items()]
    lines = markdown_table(["run", "device", "rank-1", "mAP", "mINP", "pool share / precision", "phase gain r1",
                            "wall s"], rows)
    lines += [""] + [f"- {key.replace('_', ' ')}: rank-1 {diff['rank1']:+.2f}, mAP {diff['mAP']:+.2f}, "
                     f"mINP {diff['mINP']:+.2f} (within the seed spread of {spread:.1f} rank-1: "
                     f"{figures['within_seed_spread'][key]})" for key, diff in comparisons.items() if diff is not None]
    lines.append(f"- rank-1 over seeds {seeds} on the device: {', '.join(f'{r:.2f}' for r in seed_rank1)}"
                 + (f" (std {measured_spread:.1f})" if measured_spread is not None else "")
                 + f"; the README's 3-seed std is {README_SEED_STD_RANK1}")
    if device.type == "cpu":
        lines.append("- on the CPU the device run is the CPU run (same seed, same threads): the difference must be 0; "
                     "no bf16 run (train_mine.py's autocast is CUDA-only)")
    return figures, lines


# --------------------------------------------------------------------------------------------- 2. throughput

def images_per_step(args, semi):
    """Images of one step (both modalities): P x K labeled, plus the unlabeled groups in the semi-supervised batch."""
    if semi:
        return 2 * (args.pl_batch_size * args.num_pos + args.unlabeled_ids * args.unlabeled_pos)
    return 2 * args.batch_size * args.num_pos


class FieldBatches(torch.utils.data.Dataset):
    """TrainBatches' batches through the field's per-image pipeline (ToPILImage, Pad, crop, flip, ToTensor,
    Normalize, one image at a time, in the loader's worker processes, as the AGW/released loops do): float32 NCHW
    images instead of uint8 ones, so the step receives them augmented."""

    def __init__(self, batches, pad):
        self.batches, self.pad = batches, pad

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, b):
        batch = self.batches[b]
        generator = torch.Generator().manual_seed(b)
        for key in ("rgb", "ir", "rgb_unl", "ir_unl"):
            if key in batch:
                offsets, flips = random_augment_params(len(batch[key]), self.pad, generator)
                batch[key] = torch.stack([per_image_train_transform(image.numpy(), self.pad, top, left, flip)
                                          for image, (top, left), flip in
                                          zip(batch[key], offsets.tolist(), flips.tolist())])
        return batch


class ClockedLoader:
    """A loader that notes when it handed out its first batch: the time after that is the steady state; the
    workers' start before it, which a real epoch of hundreds of steps amortises, is left out of the rate."""

    def __init__(self, loader):
        self.loader, self.first_batch_at = loader, None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.first_batch_at = self.first_batch_at or time.perf_counter()
            yield batch


@contextlib.contextmanager
def clocked_loaders(field_pad=None, field_workers=0):
    """A loader factory for Trainer.epoch (yielded with the list of the loaders it made) whose loaders are
    ClockedLoaders. With field_pad, their batches come through FieldBatches in field_workers processes, and the
    step's own augmentation passes the images it receives, augmented already, through: the same step, fed the
    field's way."""
    loaders = []

    def make(batches, workers):
        if field_pad is not None:
            batches, workers = FieldBatches(batches, field_pad), field_workers
        loaders.append(ClockedLoader(make_train_loader(batches, workers)))
        return loaders[-1]
    with contextlib.ExitStack() as patches:
        if field_pad is not None:
            patches.enter_context(mock.patch.object(train_mine, "train_augment", lambda images, *_: images))
        yield make, loaders


def step_rate(check, config, semi):
    """images/s, seconds per step, peak GPU memory (GiB) and data-wait share of one configuration of the step."""
    opts, device = check.opts, check.device
    field = config == "field"  # fp32, contiguous, the field's data path
    amp, channels_last = PRECISIONS.get(config, (None, False))
    free_device_memory(device)
    trainer = bench_train.Trainer(opts.arch, opts.img_h, opts.img_w, device, channels_last, opts.workers)
    trainer.logger.disabled = True  # one progress line per epoch otherwise
    per_step = images_per_step(trainer.args, semi)
    with clocked_loaders(trainer.args.pad if field else None, opts.field_workers) as (make_loader, loaders):
        trainer.epoch(2, 1, 0, amp, semi, make_loader)  # warm-up: cudnn autotuning, allocator
        stats = trainer.epoch(opts.iters, 2, 1, amp, semi, make_loader)  # timed from its first batch (ClockedLoader)
        check.synchronize()
    seconds_per_step = (time.perf_counter() - loaders[-1].first_batch_at) / opts.iters
    memory = peak_memory_gib(device)
    del trainer
    free_device_memory(device)
    return dict(images_per_s=per_step / seconds_per_step, seconds_per_step=seconds_per_step, peak_memory_gib=memory,
                data_wait=stats["data_wait"])


def check_throughput(check):
    opts = check.opts
    configs = opts.precisions + ["field"]
    rows, figures = [], {"arch": opts.arch, "size": f"{opts.img_h}x{opts.img_w}", "iters": opts.iters}
    for semi, batch in ((False, "warmup"), (True, "semi")):
        figures[batch] = {}
        for config in configs:
            figures[batch][config] = step_rate(check, config, semi)
        field = figures[batch]["field"]["images_per_s"]
        for config in configs:
            result = figures[batch][config]
            result["vs_field"] = result["images_per_s"] / field
            rows.append([batch, config if config != "field" else f"field (PIL, {opts.field_workers} workers, fp32)",
                         fmt(result["images_per_s"]), fmt(result["peak_memory_gib"], 2),
                         f"{100 * result['data_wait']:.0f}%", f"{result['vs_field']:.2f}x"])
    args = train_mine.parse_args([])  # the paper's batches, which bench_train.Trainer trains
    lines = [f"{opts.arch} {opts.img_h}x{opts.img_w}, {opts.iters} timed steps per row after 2 warm-up steps; warmup "
             f"batch {args.batch_size}x{args.num_pos} per modality ({images_per_step(args, False)} images a step), "
             "semi "
             f"{args.pl_batch_size}x{args.num_pos} labeled + {args.unlabeled_ids}x{args.unlabeled_pos} unlabeled per "
             f"modality ({images_per_step(args, True)}); ours with {opts.workers} loader workers; fp32_cl is "
             "train_mine.py's `--amp none` on a GPU, bf16_cl its `--amp bf16`", ""]
    lines += markdown_table(["batch", "configuration", "images/s", "peak GiB", "data wait", "vs field"], rows)
    return figures, lines


# ------------------------------------------------------------------------------------------ 3. pseudo labels

def check_pseudo_label(check):
    """Extraction images/s (eval mode, fp32, with parts, the round's batch size) and the rule on the round's
    sizes; one SYSU round = 27,000 images through both."""
    opts, device = check.opts, check.device
    args = train_mine.parse_args(["--dataset", "sysu", "--arch", opts.arch, "--img_h", str(opts.img_h),
                                  "--img_w", str(opts.img_w), "--pretrained", "none", "--gpu", check.gpu])
    free_device_memory(device)
    model = train_mine.build_model(args, SYSU["classes"], "none", device)
    images = np.random.default_rng(0).integers(0, 256, (min(512, opts.extract_images), opts.img_h, opts.img_w, 3),
                                               dtype=np.uint8)
    rows = np.arange(opts.extract_images) % len(images)  # the same images again: the rate does not depend on them
    extract_features(model, images, VISIBLE, args.test_batch_size, device, None,
                     indices=rows[:2 * args.test_batch_size], return_parts=True)  # warm-up
    start = time.perf_counter()
    extract_features(model, images, VISIBLE, args.test_batch_size, device, None, indices=rows, return_parts=True)
    extract_rate = opts.extract_images / (time.perf_counter() - start)  # each batch ends in a copy to the CPU
    del model

    generator = torch.Generator(device=device).manual_seed(0)
    part_centers = torch.rand(SYSU["classes"], args.num_parts, args.part_dim, device=device, generator=generator)
    part_feats = torch.rand(opts.rule_rows, args.num_parts, args.part_dim, device=device, generator=generator)
    mean_logits = 8 * torch.rand(opts.rule_rows, SYSU["classes"], device=device, generator=generator)
    rule = (part_feats, mean_logits, part_centers, args.conf_thresh, args.dist_thresh)
    assign_pseudo_labels(*(t[:1000] for t in rule[:2]), *rule[2:])  # warm-up
    start = time.perf_counter()
    assign_pseudo_labels(*rule)[0].cpu()  # .cpu() waits for the device
    rule_s = time.perf_counter() - start
    memory = peak_memory_gib(device)
    round_s = SYSU["unlabeled"] / extract_rate + rule_s * SYSU["unlabeled"] / opts.rule_rows
    figures = dict(extract_images_per_s=extract_rate, extract_images=opts.extract_images,
                   batch_size=args.test_batch_size, rule_rows=opts.rule_rows, rule_s=rule_s, peak_memory_gib=memory,
                   sysu_round_s=round_s)
    lines = [f"- extraction ({opts.arch} {opts.img_h}x{opts.img_w}, fp32, eval mode, parts and logits, batch "
             f"{args.test_batch_size}): **{extract_rate:,.0f} images/s** over {opts.extract_images} images",
             f"- the rule on {opts.rule_rows:,} x {SYSU['classes']} x {args.num_parts} x {args.part_dim}: "
             f"**{rule_s * 1e3:,.0f} ms** (peak GPU memory {fmt(memory, 2)} GiB)",
             f"- one SYSU round ({SYSU['unlabeled']:,} unlabeled images): **{round_s:,.1f} s**"
             + ("" if opts.rule_rows == SYSU["unlabeled"] else " (the rule's time scaled linearly)")]
    return figures, lines


# -------------------------------------------------------------------------------------------- 4. evaluation

def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def check_evaluation(check):
    """eval_sysu on -cosine (features on the CPU, as evaluate() has them) on the single-shot gallery of one trial
    and on the --gallery_per_cam gallery, and the re-ranked distance on the device for the latter."""
    opts, device = check.opts, check.device
    rerank = {key: getattr(train_mine.parse_args([]), key) for key in ("k1", "k2", "lambda_value")}
    rng = np.random.default_rng(0)
    figures, rows = {"dim": opts.dim, "rerank": rerank}, []
    for gallery_per_cam in sorted({1, opts.gallery_per_cam}):
        (q_feat, q_pids, q_cams), ((g_feat, g_pids, g_cams),) = sysu_problem(rng, opts.dim, FEATURE_NOISE,
                                                                             gallery_per_cam, trials=1)
        query, gallery = torch.from_numpy(q_feat), torch.from_numpy(g_feat)

        def metrics(dist, num_queries=len(query)):  # of the first num_queries queries
            return eval_sysu(dist, q_pids[:num_queries], g_pids, q_cams[:num_queries], g_cams)
        (cmc, _, _), metrics_s = timed(lambda: metrics(cosine_distance(query, gallery)))
        name = "single_shot" if gallery_per_cam == 1 else f"{gallery_per_cam}_per_camera"
        figures[name] = dict(queries=len(query), gallery=len(gallery), metrics_s=metrics_s, rank1=100 * cmc[0])
        rows.append([name, f"{len(query):,} x {len(gallery):,}", "metrics (-cosine)", f"{metrics_s:.3f}"])
        if gallery_per_cam != opts.gallery_per_cam:
            continue
        num_rerank = min(opts.rerank_queries, len(query))
        ranking_distance(query[:50], gallery[:50], rerank, device)  # warm-up (CUDA kernels)
        dist, rerank_s = timed(lambda: ranking_distance(query[:num_rerank], gallery, rerank, device))
        (cmc_rerank, _, _), rerank_metrics_s = timed(lambda: metrics(dist, num_rerank))
        figures[name].update(rerank_queries=num_rerank, rerank_s=rerank_s, rerank_metrics_s=rerank_metrics_s,
                             rerank_rank1=100 * cmc_rerank[0])
        rows.append([name, f"{num_rerank:,} x {len(gallery):,}", f"--rerank distance on {device.type}",
                     f"{rerank_s:.3f}"])
        rows.append([name, f"{num_rerank:,} x {len(gallery):,}", "metrics (re-ranked)", f"{rerank_metrics_s:.3f}"])
    lines = [f"Synthetic features (D = {opts.dim}, 96 identities); the metrics run on the CPU, as in a run; rank-1 is "
             "a sanity figure of the random features", ""]
    lines += markdown_table(["gallery", "size", "what", "seconds"], rows)
    return figures, lines


# ------------------------------------------------------------------------------------------- 5. distributed

def epoch_seconds(log_dir):
    with open(os.path.join(log_dir, "metrics.csv")) as f:
        return [float(row["time"]) for row in csv.DictReader(f)]


def check_distributed(check):
    """One short demo run per process count; its epoch 1 (training, a round, an evaluation) is timed."""
    opts, device = check.opts, check.device
    available = torch.cuda.device_count() if device.type == "cuda" else max(opts.processes)
    counts = [n for n in opts.processes if n <= available]
    # epoch 0: warm-up batches (and cudnn autotuning); epoch 1: semi-supervised batches with the DCE, a pseudo-label
    # round, and the last epoch's evaluation; the per-epoch agreement check after each
    schedule = ["--epochs", "2", "--iters_per_epoch", str(opts.ddp_iters), "--warmup_epochs", "1", "--center_start",
                "0", "--tri_start", "0", "--pl_start", "1", "--pl_end", "1", "--eval_start", "1", "--test_trials", "1"]
    paper_size = [] if opts.quick else ["--arch", opts.arch, "--img_h", str(opts.img_h), "--img_w", str(opts.img_w)]
    sync_bn = ["--sync_bn"] if device.type == "cuda" else []  # train_mine refuses it without CUDA
    flags = check.demo_flags(0, check.gpu, paper_size + sync_bn + schedule)
    per_step = images_per_step(train_mine.parse_args(flags), semi=True)
    figures, rows = {"runs": {}, "skipped": sorted(set(opts.processes) - set(counts))}, []
    for count in counts:
        name = f"ddp_{device.type}_{count}"
        threads = None if device.type == "cuda" else check.cpu_threads(max(1, (os.cpu_count() or 1) // count))
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(count)]
        command = check.train_command(flags, name)
        run_command(torchrun + command[1:], check.console(name), opts.run_timeout, threads)
        results = check.results(name)
        seconds = epoch_seconds(os.path.join(opts.out, "runs", "log", name))[1]
        run = dict(processes=count, world_size=results["run"]["world_size"], sync_bn=results["run"]["sync_bn"],
                   epoch1_s=seconds, images_per_s=opts.ddp_iters * per_step / seconds,
                   last={key: results["last"][key] for key in FIGURES}, test_only_max_diff=None)
        if count > 1 or len(counts) == 1:  # what the check is about: a sharded run's checkpoint in one process
            checkpoint = os.path.join(opts.out, "runs", "save", f"{name}_last.pth")
            run_command([sys.executable, "train_mine.py", "--test-only", "--resume", checkpoint],
                        check.console(f"{name}_test"), opts.run_timeout)
            tested = check.results(f"{name}_test")["last"]
            run["test_only_max_diff"] = max(abs(tested[key] - results["last"][key]) for key in train_mine.FIGURES)
        run["efficiency"] = run["images_per_s"] / (figures["runs"]["1"]["images_per_s"] * count) \
            if "1" in figures["runs"] else None
        figures["runs"][str(count)] = run
        diff = run["test_only_max_diff"]
        reproduced = "not run" if diff is None else "exactly" if diff == 0 else \
            f"{'within' if diff <= opts.reproduce_tol else 'NOT within'} {opts.reproduce_tol} (max diff {diff:.2g})"
        rows.append([count, run["sync_bn"], fmt(seconds, 2), fmt(run["images_per_s"]), fmt(run["efficiency"], 2),
                     "passed" if count > 1 else "- (1 process)", reproduced])
    differing = {count: run["test_only_max_diff"] for count, run in figures["runs"].items()
                 if (run["test_only_max_diff"] or 0) > opts.reproduce_tol}
    if differing:
        raise RuntimeError(f"--test-only on a run's checkpoint did not reproduce its last figures within "
                           f"--reproduce_tol {opts.reproduce_tol} (max diff by processes: {differing})")
    backend = "NCCL" if device.type == "cuda" else "gloo"
    lines = [f"torchrun --standalone, {backend}, the demo data at the run's size, {opts.ddp_iters} steps per epoch of "
             f"{per_step} images; epoch 1 = semi-supervised training + a pseudo-label round + an evaluation "
             "(metrics.csv's time); images/s = its trained images / its time", ""]
    lines += markdown_table(["processes", "SyncBN", "epoch 1 s", "images/s", "scaling efficiency", "agreement check",
                             "--test-only reproduces last"], rows)
    if figures["skipped"]:
        lines.append(f"\nnot run (only {available} device(s)): {figures['skipped']} processes")
    return figures, lines


# ---------------------------------------------------------------------------------------------- 6. estimate

def sysu_epoch_steps(args, pool_share_at):
    """(semi-supervised?, steps) of each epoch of the paper's SYSU run: train_mine.batches_per_epoch on SYSU's
    sizes, with the pool holding pool_share_at(epoch) of each modality's unlabeled images during that epoch."""
    labeled = {"rgb": int(args.label_ratio * SYSU["rgb_train"]), "ir": int(args.label_ratio * SYSU["ir_train"])}
    unlabeled = {"rgb": SYSU["rgb_train"] - labeled["rgb"], "ir": SYSU["ir_train"] - labeled["ir"]}
    steps = []
    for epoch in range(args.epochs):
        semi = train_mine.is_semi_supervised(epoch, args)
        pools = [labeled[m] + int(pool_share_at(epoch) * unlabeled[m]) for m in ("rgb", "ir")]
        steps.append((semi, train_mine.batches_per_epoch(
            pools, args.pl_batch_size if semi else args.batch_size, args.num_pos, [unlabeled["rgb"], unlabeled["ir"]],
            args.unlabeled_ids * args.unlabeled_pos)))
    return steps


def check_estimate(check):
    missing = [step for step in ("throughput", "pseudo_label", "evaluation") if step not in check.figures]
    if missing:
        raise RuntimeError(f"needs the figures of step(s) {', '.join(missing)} (failed or not run)")
    throughput, round_figures, evaluation = (check.figures[step] for step in ("throughput", "pseudo_label",
                                                                              "evaluation"))
    args = train_mine.parse_args(["--dataset", "sysu"])  # the paper's schedule and batches
    round_epochs = [epoch for epoch in range(args.epochs) if train_mine.is_pseudo_label_epoch(epoch, args)]
    periodic = sum(train_mine.is_eval_epoch(epoch, args) for epoch in range(args.epochs))
    full = 2 + (train_mine.phase_start_epoch(args) is not None)  # last and best, and the end of the identity stage
    extraction_s = (SYSU["queries"] + SYSU["test_visible"]) / round_figures["extract_images_per_s"]
    trial_s = evaluation["single_shot"]["metrics_s"]
    eval_s = periodic * (extraction_s + trial_s) + full * (extraction_s + args.test_trials * trial_s)
    round_s = len(round_epochs) * round_figures["sysu_round_s"]

    def rounds_before(epoch):  # an epoch trains on the pool the rounds before it left
        return sum(r < epoch for r in round_epochs)
    pool_share = check.opts.pool_share
    bounds = {"lower": ("the pool stays empty", lambda epoch: 0.0),
              "middle": (f"linear growth over the rounds to {pool_share:.0%}, then frozen",
                         lambda epoch: pool_share * rounds_before(epoch) / len(round_epochs)),
              "upper": ("every unlabeled image from the first round on", lambda epoch: float(rounds_before(epoch) > 0))}
    steps = {name: sysu_epoch_steps(args, share) for name, (_, share) in bounds.items()}
    figures = dict(rounds=len(round_epochs), periodic_evaluations=periodic, full_evaluations=full, round_s=round_s,
                   eval_s=eval_s, pool={name: text for name, (text, _) in bounds.items()}, hours={},
                   steps={name: dict(warmup=sum(n for semi, n in s if not semi), semi=sum(n for semi, n in s if semi),
                                     first_epoch=s[0][1], last_epoch=s[-1][1]) for name, s in steps.items()})
    rows = []
    for config in [config for config in throughput["semi"] if config != "field"]:
        per_step = {semi: throughput["semi" if semi else "warmup"][config]["seconds_per_step"]
                    for semi in (False, True)}
        figures["hours"][config] = {}
        for name, epoch_steps in steps.items():
            train_s = sum(n * per_step[semi] for semi, n in epoch_steps)
            figures["hours"][config][name] = (train_s + round_s + eval_s) / 3600
            rows.append([config, f"{name}: {bounds[name][0]}", f"{sum(n for _, n in epoch_steps):,}",
                         fmt(train_s / 3600, 2), fmt(figures["hours"][config][name], 2)])
    lines = [f"The paper's run: {args.epochs} epochs of {figures['steps']['lower']['first_epoch']} warm-up steps "
             f"(epochs < {args.pl_start}), then {figures['steps']['lower']['last_epoch']} (empty pool) to "
             f"{figures['steps']['upper']['last_epoch']} (every unlabeled image in it; the unlabeled loader caps the "
             f"epoch) semi-supervised steps, from train_mine.batches_per_epoch on SYSU's {SYSU['rgb_train']:,} visible "
             f"/ {SYSU['ir_train']:,} infrared training images, {args.label_ratio:.0%} labeled; {len(round_epochs)} "
             f"rounds of {SYSU['unlabeled']:,} images ({round_s / 60:.1f} min); {periodic} periodic evaluations "
             f"(gallery trial 0) and {full} of {args.test_trials} trials, each extracting {SYSU['queries']:,} queries "
             f"+ {SYSU['test_visible']:,} gallery candidates ({eval_s / 60:.1f} min). Not counted: start-up, "
             "checkpoint writes, pictures."]
    if (throughput["arch"], throughput["size"]) != ("resnet50", "288x144"):
        lines.append(f"**Measured at {throughput['arch']} {throughput['size']}, not the paper's resnet50 288x144: "
                     "these hours are not the paper's run.**")
    lines += [""] + markdown_table(["configuration", "pool", "steps", "training h", "total h"], rows)
    return figures, lines


STEPS = {"correctness": check_correctness, "throughput": check_throughput, "pseudo_label": check_pseudo_label,
         "evaluation": check_evaluation, "distributed": check_distributed, "estimate": check_estimate}
TITLES = {"correctness": "1. Correctness: the demo on the device and on the CPU",
          "throughput": "2. Training throughput at the paper's size",
          "pseudo_label": "3. The pseudo-label round at SYSU scale",
          "evaluation": "4. Evaluation and re-ranking at SYSU scale",
          "distributed": "5. Distributed (torchrun)",
          "estimate": "6. Estimate: the paper's full SYSU run on this device"}


# ------------------------------------------------------------------------------------------------ the check

def run_step(check, name):
    """One step, timed; an exception is the step's result (its type and first line), not the end of the check."""
    print(f"[{list(STEPS).index(name) + 1}/{len(STEPS)}] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        figures, lines = STEPS[name](check)
        check.figures[name] = figures
        result = {"status": "ok", **figures}
    except Exception as err:  # any failure of one step: reported, and the next step runs
        lines = [f"**FAILED**: {type(err).__name__}: {first_line(err)}"]
        result = {"status": "failed", "error": f"{type(err).__name__}: {first_line(err)}"}
    result["seconds"] = time.perf_counter() - start
    print(f"[{list(STEPS).index(name) + 1}/{len(STEPS)}] {name}: {result['status']} in {result['seconds']:.1f} s",
          flush=True)
    return result, lines


def header(record, opts, device, steps, total_s):
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    lines = [f"# GPU check: {record['device']}", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}; torch {record['torch']} (CUDA {record['cuda']}, cuDNN "
             f"{torch.backends.cudnn.version()}); {gpus} CUDA device(s), {os.cpu_count()} CPU cores; git "
             f"{record['git_commit']}{' (uncommitted changes)' if record['git_dirty'] else ''}; "
             f"{'--quick' if opts.quick else 'full sizes'} on {device}; total {total_s:.0f} s", ""]
    rows = [[name, result["status"], f"{result['seconds']:.1f}"] for name, result in steps.items()]
    return lines + markdown_table(["step", "status", "seconds"], rows)


def parse_options(argv):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="0", help="CUDA index, or 'cpu'")
    parser.add_argument("--quick", action="store_true", help="toy sizes (the CPU: ~90 s on 2 cores)")
    parser.add_argument("--out", default=None, help="report folder (default log/gpu_check/<timestamp>/)")
    parser.add_argument("--steps", default=",".join(STEPS), type=lambda text: [s for s in text.split(",") if s],
                        help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--data_root", default=None, help="where the demo datasets are built (default <out>/data)")
    parser.add_argument("--run_timeout", type=number(int, 1), default=300,
                        help="seconds one train_mine.py run may take before it is stopped and its step fails")
    parser.add_argument("--cpu_threads", type=number(int, 0),
                        help="threads of the CPU work (in this process and in train_mine.py runs on the CPU); 0: all "
                             "cores (full default); --quick: 1, as toy sizes gain little from threads and a shared "
                             "machine loses much to oversubscribed ones (a --quick demo run on 2 busy cores: 16 s with "
                             "1 thread, 51-67 s with 2)")
    size = parser.add_argument_group("sizes (default: the full check's; with --quick, toy ones)")
    size.add_argument("--demo_seeds", type=number_list(int), help="demo seeds on the device (first: the comparisons)")
    size.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50"], help="steps 2, 3 and 5 (full: resnet50)")
    size.add_argument("--img_h", type=number(int, 16), help="steps 2, 3 and 5 (full: 288)")
    size.add_argument("--img_w", type=number(int, 8), help="steps 2, 3 and 5 (full: 144)")
    size.add_argument("--iters", type=number(int, 1), help="timed steps per throughput configuration (full: 40)")
    size.add_argument("--workers", type=number(int, 0), help="loader workers of our step (full: 4, train_mine's)")
    size.add_argument("--field_workers", type=number(int, 0), help="workers of the field's loader (full: 4, AGW's)")
    size.add_argument("--precisions", type=lambda text: text.split(","),
                      help=f"our step's configurations, of {', '.join(PRECISIONS)} (full: all; quick: fp32,bf16_cl)")
    size.add_argument("--extract_images", type=number(int, 1), help="images of the timed extraction (full: 2048)")
    size.add_argument("--rule_rows", type=number(int, 1), help="rows of the timed rule (full: 27000)")
    size.add_argument("--dim", type=number(int, 1), default=1536, help="feature size of the evaluation step")
    size.add_argument("--gallery_per_cam", type=number(int, 1), help="gallery images per identity and camera (10)")
    size.add_argument("--rerank_queries", type=number(int, 1), help="queries re-ranked (full: all 3803)")
    size.add_argument("--ddp_iters", type=number(int, 1), help="steps per epoch of the distributed runs (full: 60)")
    size.add_argument("--processes", type=number_list(int), help="process counts (full: 1,2,4,8, those that fit)")
    parser.add_argument("--reproduce_tol", type=number(float, 0), default=0.01,
                        help="largest |difference| (percentage points) of a --test-only figure from the run's own "
                             "that passes: every batch of a sharded extraction is a one-process batch, exact on the "
                             "CPU (tested); CUDA kernels autotuned per process may round otherwise")
    parser.add_argument("--pool_share", type=number(float, 0, 1), default=0.7,
                        help="the estimate's middle case: the pool's final share of the unlabeled images")
    opts = parser.parse_args(argv)
    for key, value in (QUICK if opts.quick else FULL).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    unknown = sorted(set(opts.steps) - set(STEPS)) + sorted(set(opts.precisions) - set(PRECISIONS))
    if unknown or not opts.steps:
        raise UserError(f"unknown --steps or --precisions {unknown or opts.steps}: use {', '.join(STEPS)} and "
                        f"{', '.join(PRECISIONS)}")
    if opts.out is None:
        opts.out = os.path.join(REPO, "log", "gpu_check", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(os.path.join(opts.out, "report.json")):
        raise UserError(f"{opts.out} holds a report already: choose another --out")
    opts.out = os.path.abspath(opts.out)
    return opts


def main(argv=None):
    opts = parse_options(sys.argv[1:] if argv is None else argv)
    device = choose_device(opts.gpu)
    if opts.gpu != "cpu" and device.type == "cpu":
        raise UserError(f"--gpu {opts.gpu}: CUDA is not available here (the CPU check is --gpu cpu --quick)")
    if opts.cpu_threads:
        torch.set_num_threads(opts.cpu_threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as train_mine.py runs
    check = Check(opts, device)
    started = time.perf_counter()
    results, sections = {}, []
    for name in (name for name in STEPS if name in opts.steps):
        results[name], lines = run_step(check, name)
        sections += ["", f"## {TITLES[name]} ({results[name]['seconds']:.0f} s)", "", *lines]
    total_s = time.perf_counter() - started
    record = run_record(device)
    report = {"record": dict(record, quick=opts.quick, command=" ".join(sys.argv), total_s=total_s,
                             cpu_cores=os.cpu_count()), "steps": results}
    markdown = "\n".join(header(record, opts, device, results, total_s) + sections) + "\n"
    write_json(os.path.join(opts.out, "report.json"), report)
    with open(os.path.join(opts.out, "report.md"), "w") as f:
        f.write(markdown)
    print("\n" + markdown + f"\nreport: {os.path.join(opts.out, 'report.md')} (and report.json)")
    failed = [name for name, result in results.items() if result["status"] != "ok"]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} steps failed ({', '.join(failed)}): see "
                        f"{os.path.join(opts.out, 'report.md')}")


if __name__ == "__main__":
    run_cli(main)
