"""What the semi-supervised phase adds, and which difference from the released code changes that: the demo recipe on
each renderer and seed, as labeled-only (--no_pseudo), as CPL, and as CPL with one switch per difference from the
released semi-supervised phase (issue 21). Run by hand; hours on a 2-core CPU, minutes on a GPU.

    python benchmarks/phase_study.py                                        # every renderer, seed and variant
    python benchmarks/phase_study.py --renderers stripes --seeds 0 1 2 --variants no_pseudo cpl gt
    python benchmarks/phase_study.py --table_only                          # the table of the finished runs

Each run is train_mine.py --dataset demo --demo_renderer R --seed S plus the variant's flags, into --out/<R>_<variant>
_seed<S>/ (a finished run is never run again), --jobs at a time with --threads threads each (default 2 and 1: the
figures of a run depend on its thread count, so a study keeps one). The identity-only stage (epochs before --pl_start) is the same run
for every variant of a (renderer, seed): same data, split, batches and weights; so each variant's phase gain (last
minus the full evaluation that ends that stage) and its difference to --no_pseudo on the same seed measure the
semi-supervised phase alone. The table: per renderer and variant, mean +- std over seeds of the last rank-1 / mAP,
the phase gain, the paired difference to --no_pseudo, the pool's share of the unlabeled images and its precision,
and the mean in-batch DCE group size n_i.
"""
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from demo_data import RENDERERS  # noqa: E402
from summarize import mean_std as summary_mean_std  # noqa: E402
from utils import ArgumentParser, number, run_cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (flags, what the switch changes); the released code's choice where the switch reproduces it
VARIANTS = {
    "no_pseudo": (["--no_pseudo"], "labeled only (same identity-only stage, same steps)"),
    "cpl": ([], "CPL, this repo's defaults (unlabeled groups by predicted class; rounds score the released number of "
                "uniform draws, ~63% of the images, augmented)"),
    "all_round": (["--pl_scoring", "all"], "rounds score every image once on the test transform (the design's round)"),
    "gt": (["--unlabeled_sampler", "gt"], "unlabeled groups by hidden ground truth (released; a leak)"),
    "random": (["--unlabeled_sampler", "random"], "unlabeled images drawn uniformly, not grouped"),
    "released_round": (["--pl_scoring", "released"],
                       "rounds score the released draws: ~63% of the images, augmented, picked by ground truth"),
    "augmented_round": (["--pl_scoring", "augmented"], "rounds score every image once under the training augmentation"),
    "released_round_gt": (["--pl_scoring", "released", "--unlabeled_sampler", "gt"],
                          "both released choices: its rounds and its groups (the released semi-supervised phase)"),
    "no_dce": (["--w_dce", "0"], "no dynamic center-based CE (pseudo labels in the identity and triplet losses only)"),
    "ce_only": (["--ce_weight", "1", "--rce_weight", "0"], "the DCE as plain CE (no reverse CE)"),
    "p8": (["--pl_batch_size", "8"], "keep P = 8 identities per batch after --pl_start (released: 4)"),
    "no_pseudo_id": (["--no-pseudo_id_loss"], "pseudo labels in the triplets and centers, not the identity loss"),
    "lr_x3": (["--lr_factors", "0.3,0.05"], "lr 0.003 instead of 0.001 from --pl_start"),
}
# the temperature renderer with a longer identity-only stage (issue 22): the same switches on another recipe
LONG = ["--tri_start", "16", "--pl_start", "16", "--epochs", "30", "--lr_steps", "16,24", "--pl_end", "24",
        "--eval_start", "16"]
VARIANTS.update({f"{name}_long": (flags + LONG, what + ", 16 identity-only epochs of 30")
                 for name, (flags, what) in list(VARIANTS.items()) if name in ("no_pseudo", "cpl", "gt")})


def run_name(renderer, variant, seed):
    return f"{renderer}_{variant}_seed{seed}"


def train(renderer, variant, seed, args):
    """One run, unless its results.json exists."""
    name = run_name(renderer, variant, seed)
    if os.path.exists(os.path.join(args.out, name, "results.json")):
        return
    print(f"running {name}", flush=True)
    # a fixed thread count: the figures of a run depend on it (float summation order), and OpenMP threads spinning
    # on cores shared with other jobs slow a run by up to 10x (measured here), where single-threaded jobs share fairly
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    subprocess.run([sys.executable, os.path.join(REPO, "train_mine.py"), "--dataset", "demo", "--demo_renderer",
                    renderer, "--seed", str(seed), "--gpu", args.gpu, "--log_path", args.out, "--model_path",
                    os.path.join(args.out, "save_model"), "--run_name", name, "--no_pictures",
                    *VARIANTS[variant][0]], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"finished {name}", flush=True)


def build_data(renderer, seed):
    """The demo dataset of (renderer, seed) and its arrays, as the runs would build them (train_mine's own code)."""
    import train_mine
    demo = train_mine.parse_args(["--dataset", "demo", "--demo_renderer", renderer, "--seed", str(seed)])
    demo.data_path = os.path.join(REPO, demo.data_path)
    train_mine.prepare_demo_data(demo, train_mine.setup_logger(enabled=False))


def load(renderer, variant, seed, out):
    """(results.json, the mean DCE group size over the run's epochs) of a finished run, or None."""
    folder = os.path.join(out, run_name(renderer, variant, seed))
    if not os.path.exists(os.path.join(folder, "results.json")):
        return None
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(folder, "metrics.csv")) as f:
        sizes = [float(row["dce_group_size"]) for row in csv.DictReader(f) if row.get("dce_group_size")]
    return results, (np.mean(sizes) if sizes else None)


def mean_std(values, signed=False):
    return summary_mean_std(values, signed, decimals=1)


def table(args):
    """The markdown table of the finished runs."""
    lines = ["| renderer | variant | seeds | last r1 | last mAP | r1 at pl_start | phase gain r1 / mAP | "
             "vs no_pseudo r1 / mAP | pool share | precision | mean n_i |", "|" + "---|" * 11]
    for renderer in args.renderers:
        for variant in args.variants:
            baseline = "no_pseudo_long" if variant.endswith("_long") else "no_pseudo"
            rows, deltas = [], []
            for seed in args.seeds:
                run = load(renderer, variant, seed, args.out)
                if run is None:
                    continue
                rows.append(run)
                base = load(renderer, baseline, seed, args.out)
                if base is not None and variant != baseline:
                    deltas.append([run[0]["last"][key] - base[0]["last"][key] for key in ("rank1", "mAP")])
            if not rows:
                continue
            results = [r for r, _ in rows]
            phases = [r["phase"] for r in results if r.get("phase")]
            pools = [r["pseudo_label"] for r in results]
            lines.append("| " + " | ".join([
                renderer, variant, str(len(rows)),
                mean_std([r["last"]["rank1"] for r in results]), mean_std([r["last"]["mAP"] for r in results]),
                mean_std([p["at_pl_start"]["rank1"] for p in phases]),
                f"{mean_std([p['gain']['rank1'] for p in phases], True)} / "
                f"{mean_std([p['gain']['mAP'] for p in phases], True)}",
                (f"{mean_std([d[0] for d in deltas], True)} / {mean_std([d[1] for d in deltas], True)}"
                 if deltas else "-"),
                mean_std([p.get("share") for p in pools]), mean_std([p.get("precision") for p in pools]),
                mean_std([size for _, size in rows])]) + " |")
    return "\n".join(lines)


def main(args):
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: use {', '.join(VARIANTS)}")
    if not args.table_only:
        # the baselines and the default first, so that a partial study is already a comparison; the data are built
        # first, so that parallel runs do not build the same dataset
        runs = [(renderer, variant, seed) for variant in args.variants for renderer in args.renderers
                for seed in args.seeds]
        for renderer, seed in sorted({(renderer, seed) for renderer, _, seed in runs}):
            build_data(renderer, seed)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda run: train(*run, args), runs))
    print(table(args))
    print("\nvariants: " + "; ".join(f"{name}: {VARIANTS[name][1]}" for name in args.variants))


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renderers", nargs="+", default=sorted(RENDERERS), choices=sorted(RENDERERS))
    parser.add_argument("--seeds", nargs="+", type=number(int, 0), default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if not v.endswith("_long")])
    parser.add_argument("--out", default="log/phase_study/", help="the runs' log folder (checkpoints under it)")
    parser.add_argument("--gpu", default="cpu")
    parser.add_argument("--jobs", type=number(int, 1), default=2, help="runs at a time")
    parser.add_argument("--threads", type=number(int, 1), default=1, help="threads per run (the figures depend on it)")
    parser.add_argument("--table_only", action="store_true", help="print the table of the finished runs, train none")
    run_cli(lambda: main(parser.parse_args()))
