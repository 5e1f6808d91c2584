"""What the tests that run train_mine.py share: a small but complete configuration and the ways to run and read it."""
import csv
import json
import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# small but complete: warm-up epoch 0 with every identity in each batch (so every class center is set before
# the first round), centers from epoch 0, semi-supervised epochs 1-2 with pseudo-label rounds, evaluation every
# epoch, final evaluation over 2 gallery draws. With these thresholds every unlabeled image is accepted.
FAST = ["--gpu", "cpu", "--arch", "resnet18", "--pretrained", "none", "--img_h", "32", "--img_w", "16",
        "--warmup_epochs", "1", "--center_start", "0", "--pl_start", "1", "--pl_end", "2", "--eval_start", "1",
        "--eval_every", "1", "--test_trials", "2", "--workers", "0", "--iters_per_epoch", "2", "--batch-size", "6",
        "--pl_batch_size", "2", "--num_pos", "2", "--unlabeled_ids", "2", "--unlabeled_pos", "2", "--conf_thresh", "0.0",
        "--dist_thresh", "1.0", "--part_dim", "32", "--test_batch_size", "32"]


def run_train(args, cwd, check=True):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_mine.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_mine.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def with_flag(argv, flag, value):
    """argv with the value after flag replaced."""
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def output_paths(root):
    """A run's log and checkpoint folders under root (root/log, root/save)."""
    return ["--log_path", str(root / "log"), "--model_path", str(root / "save")]


def outputs(root, name):
    return [*output_paths(root), "--run_name", name]


def results_of(root, name):
    """The results.json of run `name` whose outputs are under root (output_paths)."""
    return json.loads((root / "log" / name / "results.json").read_text())


def load_ckpt(root, name, which="last"):
    return torch.load(root / "save" / f"{name}_{which}.pth", weights_only=True)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # bars may share stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
