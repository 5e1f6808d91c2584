"""train_mine.py end to end on a tiny dataset in the real SYSU-MM01 layout, run as a user runs it."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_KEYS = {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "trials"}

# small but complete: warm-up epoch 0, centers from 0, semi-supervised epochs 1-2 with pseudo-label rounds,
# evaluation every epoch, final evaluation over 2 gallery draws
FAST = ["--gpu", "cpu", "--arch", "resnet18", "--pretrained", "none", "--img_h", "32", "--img_w", "16",
        "--warmup_epochs", "1", "--center_start", "0", "--pl_start", "1", "--pl_end", "2", "--eval_start", "1",
        "--eval_every", "1", "--test_trials", "2", "--workers", "0", "--iters_per_epoch", "2", "--batch-size", "4",
        "--pl_batch_size", "2", "--num_pos", "2", "--num_unlabeled", "4", "--conf_thresh", "0.0",
        "--dist_thresh", "1.0", "--part_dim", "32", "--test_batch_size", "32"]


def run_train(args, cwd, check=True):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train_mine.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_mine.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ckpt_pools(tmp_path, name):
    pools = torch.load(tmp_path / "save" / f"{name}_last.pth", weights_only=True)["pools"]
    return torch.cat([pools["rgb"]["indices"], pools["ir"]["indices"]])


def outputs(tmp_path, name):
    return ["--log_path", str(tmp_path / "log"), "--model_path", str(tmp_path / "save"), "--run_name", name]


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # bars may share stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_end_to_end_writes_every_output(tiny_sysu_preprocessed, tmp_path):
    run_train(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--epochs", "3", *FAST,
               *outputs(tmp_path, "e2e")], cwd=tmp_path)
    run_dir = tmp_path / "log" / "e2e"
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) == {"dataset", "mode", "args", "last", "best", "pseudo_label"}
    assert results["dataset"] == "sysu" and results["mode"] == "all"
    assert RESULT_KEYS <= set(results["last"]) and RESULT_KEYS | {"epoch"} <= set(results["best"])
    assert len(results["last"]["trials"]) == 2
    assert 0 <= results["last"]["rank1"] <= 100 and 0 <= results["last"]["mAP"] <= 100
    # permissive thresholds: every unlabeled image of both modalities joins the pool
    assert results["pseudo_label"]["pool_size"] > 0
    assert 0 <= results["pseudo_label"]["precision"] <= 100
    assert results["pseudo_label"]["pool_size"] == len(ckpt_pools(tmp_path, "e2e"))
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 and "loss_dce" in rows[0] and "pool_size" in rows[0]
    split = json.loads((run_dir / "split.json").read_text())
    assert not set(split["rgb_labeled"]) & set(split["rgb_unlabeled"])
    log_text = (run_dir / "log.txt").read_text()
    assert "dataset statistics" in log_text and "Rank-1" in log_text
    ckpt = torch.load(tmp_path / "save" / "e2e_last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["pools"]["rgb"]["indices"]) > 0
    assert (tmp_path / "save" / "e2e_best.pth").exists()

    # the checkpoint evaluator: full protocol, its own results.json
    run_train(["--test-only", "--resume", str(tmp_path / "save" / "e2e_last.pth"), "--gpu", "cpu",
               "--test_trials", "3"], cwd=tmp_path)
    tested = json.loads((run_dir.parent / "e2e_test" / "results.json").read_text())
    assert len(tested["last"]["trials"]) == 3 and tested["last"]["epoch"] == 2


def test_resumed_run_equals_uninterrupted(tiny_sysu_preprocessed, tmp_path):
    common = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST]
    run_train([*common, "--epochs", "3", *outputs(tmp_path, "full")], cwd=tmp_path)
    run_train([*common, "--epochs", "2", *outputs(tmp_path, "cut")], cwd=tmp_path)
    run_train(["--resume", str(tmp_path / "save" / "cut_last.pth"), "--epochs", "3"], cwd=tmp_path)
    full = torch.load(tmp_path / "save" / "full_last.pth", weights_only=True)
    resumed = torch.load(tmp_path / "save" / "cut_last.pth", weights_only=True)
    assert resumed["epoch"] == full["epoch"] == 2
    for key, value in full["model"].items():
        assert torch.allclose(value.float(), resumed["model"][key].float(), atol=1e-6), key
    for key in ("part_centers", "global_centers"):
        assert torch.allclose(full["centers"][key], resumed["centers"][key], atol=1e-6)
    for modality in ("rgb", "ir"):
        assert torch.equal(full["pools"][modality]["indices"], resumed["pools"][modality]["indices"])
        assert torch.equal(full["pools"][modality]["labels"], resumed["pools"][modality]["labels"])
    strip = lambda history: [{k: v for k, v in row.items() if k not in ("time", "data_wait")} for row in history]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])


def test_no_pseudo_baseline_runs_without_pseudo_labels(tiny_sysu_preprocessed, tmp_path):
    run_train(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--epochs", "2", "--no_pseudo", *FAST,
               *outputs(tmp_path, "base")], cwd=tmp_path)
    results = json.loads((tmp_path / "log" / "base" / "results.json").read_text())
    assert results["pseudo_label"]["pool_size"] == 0
    assert "loss_dce" not in (tmp_path / "log" / "base" / "metrics.csv").read_text()


@pytest.mark.parametrize("extra, fragments", [
    (["--dataset", "market"], ["--dataset", "market"]),
    (["--label_ratio", "0"], ["--label_ratio"]),
    (["--label_ratio", "1.5"], ["--label_ratio"]),
    (["--resume", "does_not_exist.pth"], ["does_not_exist.pth"]),
])
def test_bad_flags_give_one_line(extra, fragments, tmp_path):
    proc = run_train(["--gpu", "cpu", *extra], cwd=tmp_path, check=False)
    assert_one_line_error(proc, *fragments)


def test_missing_arrays_name_the_preprocessing_script(tiny_sysu, tmp_path):
    proc = run_train(["--dataset", "sysu", "--data_path", tiny_sysu, *FAST, "--epochs", "1",
                      *outputs(tmp_path, "x")], cwd=tmp_path, check=False)
    assert_one_line_error(proc, "pre_process_sysu.py")


def test_damaged_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(run_train(["--resume", str(bad), "--gpu", "cpu"], cwd=tmp_path, check=False), "bad.pth")
    torch.save({"weights": torch.zeros(1)}, bad)
    assert_one_line_error(run_train(["--resume", str(bad), "--gpu", "cpu"], cwd=tmp_path, check=False),
                          "not a checkpoint of this repo")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_sysu_preprocessed, tmp_path):
    common = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST, *outputs(tmp_path, "nan")]
    run_train([*common, "--epochs", "1"], cwd=tmp_path)
    good = torch.load(tmp_path / "save" / "nan_last.pth", weights_only=True)
    proc = run_train(["--resume", str(tmp_path / "save" / "nan_last.pth"), "--epochs", "3", "--lr", "1e30"],
                     cwd=tmp_path, check=False)
    assert_one_line_error(proc, "non-finite loss at epoch 1")
    kept = torch.load(tmp_path / "save" / "nan_last.pth", weights_only=True)
    assert kept["epoch"] == good["epoch"] == 0
