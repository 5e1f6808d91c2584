"""Wall time per epoch of the same demo run in one process and in N processes (torchrun, DDP), on the CPU or GPUs.

    python benchmarks/bench_ddp.py [--processes 2] [--epochs 4] [--gpu cpu]

On the CPU each process is given one thread (torchrun's OMP_NUM_THREADS=1) and the one-process run is timed both
with one thread (the fair comparison: the same compute per process) and with N threads (what a plain
`python train_mine.py` on the same cores does). An epoch's time is metrics.csv's `time` (training steps, the
pseudo-label round and the periodic evaluation). The runs write into a temporary folder; the demo data comes
from data/demo/stripes/seed0 (built by the first run if absent).
"""
import csv
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import ArgumentParser, number, run_cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def epoch_times(command, threads, out, name):
    """Runs train_mine.py and returns metrics.csv's per-epoch times."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([*command, "--log_path", os.path.join(out, "log"), "--model_path", os.path.join(out, "save"),
                    "--run_name", name], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "log", name, "metrics.csv")) as f:
        return [float(row["time"]) for row in csv.DictReader(f)]


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=number(int, 2), default=2)
    parser.add_argument("--epochs", type=number(int, 2), default=4)
    parser.add_argument("--gpu", default="cpu")
    args = parser.parse_args()
    # the demo recipe, shortened: epoch 0 is warm-up, every later epoch trains with pseudo labels, runs a round
    # and evaluates on gallery trial 0
    flags = ["train_mine.py", "--dataset", "demo", "--gpu", args.gpu, "--epochs", str(args.epochs),
             "--warmup_epochs", "1", "--center_start", "0", "--tri_start", "0",
             "--pl_start", "1", "--pl_end", str(args.epochs), "--eval_start", "1", "--eval_every", "1",
             "--test_trials", "1", "--no_pictures"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(args.processes)]
    cores = args.processes if args.gpu == "cpu" else 1
    with tempfile.TemporaryDirectory() as out:
        runs = {"1 process, 1 thread": epoch_times([sys.executable, *flags], 1, out, "one_thread"),
                f"1 process, {cores} threads": epoch_times([sys.executable, *flags], cores, out, "one_process"),
                f"{args.processes} processes, 1 thread each": epoch_times([*torchrun, *flags], 1, out, "ddp")}
    reference = statistics.median(runs["1 process, 1 thread"][1:])
    print(f"demo recipe, {args.epochs} epochs, device {args.gpu}; seconds per epoch (epoch 0 = warm-up; "
          "later epochs: train + round + evaluation)")
    for label, times in runs.items():
        later = statistics.median(times[1:])
        print(f"{label:>28}: epoch 0 {times[0]:6.1f} s, later epochs median {later:6.1f} s, "
              f"speed-up vs 1 process 1 thread {reference / later:.2f}x")


if __name__ == "__main__":
    run_cli(main)
