"""A run's identity and durability (train_mine.py as a user runs it): no run overwrites another, a run killed at
any write resumes to the uninterrupted result, refused resumes and unwritable outputs fail early in one line."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_mine
from pre_process_sysu import preprocess_sysu
from train_helpers import (FAST, assert_one_line_error, load_ckpt, output_paths, outputs, read_csv, results_of,
                           run_train, with_flag)
from utils import UserError, load_checkpoint, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_runs_that_differ_in_flags_keep_their_own_files(tiny_sysu_preprocessed, tmp_path):
    common = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST, "--epochs", "1", "--no_pictures",
              *output_paths(tmp_path)]
    run_train(common, cwd=tmp_path)
    run_train([*common, "--w_dce", "0.5"], cwd=tmp_path)
    run_train(common, cwd=tmp_path)  # the same flags again: a new run beside the first, not over it
    names = sorted(os.listdir(tmp_path / "log"))
    assert len(names) == 3 and len({name.split("_cfg-")[1].split("-")[0] for name in names}) == 2
    assert [name for name in names if name.endswith("-2")], names
    for name in names:
        assert (tmp_path / "log" / name / "results.json").exists() and (tmp_path / "save" / f"{name}_last.pth").exists()
        assert load_ckpt(tmp_path, name)["args"]["run_name"] == name
    # a typed name that is taken is refused before anything is written
    before = sorted(os.listdir(tmp_path / "save"))
    proc = run_train([*common, "--run_name", names[0]], cwd=tmp_path, check=False)
    assert_one_line_error(proc, f"run {names[0]} exists already", "--resume")
    assert sorted(os.listdir(tmp_path / "save")) == before


def test_default_names_spell_out_an_ablation():
    assert train_mine.default_run_name(train_mine.parse_args(["--dataset", "demo", "--seed", "2"])) == \
        "demo_all_resnet18_seed2"
    assert train_mine.default_run_name(train_mine.parse_args(["--dataset", "demo", "--w_dce", "0"])) == \
        "demo_all_resnet18_seed0_w_dce-0"
    assert train_mine.default_run_name(train_mine.parse_args(["--dataset", "regdb", "--trial", "3", "--no_pseudo"])) \
        == "regdb_trial3_resnet50_seed0_nopseudo"


# kill points (the k-th file replacement of a 3-epoch FAST run with pictures): 1 split.json, then per epoch the
# checkpoint and metrics.csv (2-7), then 3 pictures (8-10), _best.pth (11), results.json (12)
KILL_POINTS = {2: "inside the first checkpoint write", 3: "between a checkpoint and metrics.csv",
               6: "inside the last epoch's checkpoint write", 11: "inside the _best.pth write",
               12: "inside the results.json write"}


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_run_killed_at_any_write_resumes_to_the_uninterrupted_result(kill_at, sysu_run, tiny_sysu_preprocessed,
                                                                       tmp_path):
    argv = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--epochs", "3", *FAST,
            *outputs(tmp_path, "killed")]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "kill_at_write.py"), str(kill_at), *argv],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, proc.stderr[-2000:]
    last = tmp_path / "save" / "killed_last.pth"
    if last.exists():  # resume exactly where it stopped
        run_train(["--resume", str(last)], cwd=tmp_path)
    else:  # killed before any epoch was saved: nothing to resume, the same command starts again
        run_train(argv, cwd=tmp_path)
    resumed, reference = results_of(tmp_path, "killed"), results_of(sysu_run, "e2e")
    for key in ("last", "best", "pseudo_label"):
        assert resumed[key] == reference[key], (KILL_POINTS[kill_at], key)
    assert [int(row["epoch"]) for row in read_csv(tmp_path / "log" / "killed" / "metrics.csv")] == [0, 1, 2]
    assert torch.equal(load_ckpt(tmp_path, "killed", "best")["model"]["classifier_weight"],
                       load_ckpt(sysu_run, "e2e", "best")["model"]["classifier_weight"])
    leftovers = [name for folder in (tmp_path / "save", tmp_path / "log" / "killed") for name in os.listdir(folder)
                 if name.startswith(".tmp_")]
    assert leftovers == []  # the killed write's temporary file was removed at the restart


def test_finished_and_overtrained_resumes_are_refused(sysu_run):
    last = str(sysu_run / "save" / "e2e_last.pth")
    assert_one_line_error(run_train(["--resume", last], cwd=sysu_run, check=False), "is finished", "--epochs")
    assert_one_line_error(run_train(["--resume", last, "--epochs", "2"], cwd=sysu_run, check=False),
                          "--epochs 2", "trained 3 epochs already")


def test_a_copied_checkpoint_forks_a_new_run_and_leaves_the_original_alone(sysu_run, tmp_path):
    copy = tmp_path / "copy.pth"
    shutil.copy(sysu_run / "save" / "e2e_last.pth", copy)
    original = {path: path.stat().st_mtime_ns for path in (sysu_run / "log" / "e2e").iterdir()}
    assert_one_line_error(run_train(["--resume", str(copy), "--epochs", "4"], cwd=tmp_path, check=False),
                          "not the last checkpoint of run e2e", "--run_name")
    run_train(["--resume", str(copy), "--epochs", "4", "--run_name", "fork", *output_paths(tmp_path), "--no_pictures"],
              cwd=tmp_path)
    assert results_of(tmp_path, "fork")["last"]["epoch"] == 3
    assert [int(row["epoch"]) for row in read_csv(tmp_path / "log" / "fork" / "metrics.csv")] == [0, 1, 2, 3]
    assert {path: path.stat().st_mtime_ns for path in (sysu_run / "log" / "e2e").iterdir()} == original


def test_other_training_arrays_are_refused_on_resume(sysu_run, tiny_sysu, tmp_path):
    other = str(tmp_path / "other")
    shutil.copytree(tiny_sysu, other)
    preprocess_sysu(other, 32, 16, workers=0)
    labels_path = os.path.join(other, "train_rgb_resized_label.npy")
    labels = np.load(labels_path)
    np.save(labels_path, np.minimum(labels + 1, labels.max()))  # the same images under other labels
    proc = run_train(["--resume", str(sysu_run / "save" / "e2e_last.pth"), "--epochs", "4", "--run_name", "moved",
                      "--data_path", other, *output_paths(tmp_path)], cwd=tmp_path, check=False)
    assert_one_line_error(proc, "holds other training arrays")


def test_unwritable_outputs_fail_at_start_in_one_line(tiny_sysu_preprocessed, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made under a regular file, whoever runs the test (root too)
    common = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST, "--epochs", "1"]
    for flag in ("--model_path", "--log_path"):
        proc = run_train([*common, flag, str(blocker / "sub")], cwd=tmp_path, check=False)
        assert_one_line_error(proc, "cannot write to", "a_file")
        assert "epoch 0" not in proc.stdout  # before any training


def test_a_failing_write_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "run_last.pth")
    save_checkpoint(path, {"epoch": 1})

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match="cannot write .*run_last.pth: No space left on device"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and os.listdir(tmp_path) == ["run_last.pth"]


def test_outputs_get_the_umask_file_mode(sysu_run):
    umask = os.umask(0)
    os.umask(umask)
    for path in (sysu_run / "save" / "e2e_last.pth", sysu_run / "log" / "e2e" / "results.json",
                 sysu_run / "log" / "e2e" / "metrics.csv", sysu_run / "log" / "e2e" / "split.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_impossible_batches_fail_at_start(tiny_sysu_preprocessed, tmp_path):
    proc = run_train(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed,
                      *with_flag(FAST, "--pl_batch_size", "100"), "--epochs", "3", *output_paths(tmp_path)],
                     cwd=tmp_path, check=False)
    assert_one_line_error(proc, "--pl_batch_size 100", "identities")
    assert "epoch 0" not in proc.stdout


def test_non_finite_weights_stop_before_a_checkpoint_is_written(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    args = train_mine.parse_args(["--model_path", str(tmp_path), "--run_name", "r"])
    with pytest.raises(UserError, match=r"non-finite weights after epoch 4: stopped$"):  # no checkpoint to name
        train_mine.check_finite_weights(model, 4, args)
    (tmp_path / "r_last.pth").write_bytes(b"")
    with pytest.raises(UserError, match="the last good checkpoint is .*r_last.pth"):
        train_mine.check_finite_weights(model, 4, args)


# ---------------------------------------------------------------------------------------------- concurrent runs

def start_train(args, cwd):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train_mine.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_started_together_never_share_a_folder(tiny_sysu_preprocessed, tmp_path):
    common = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST, "--epochs", "1", "--no_pictures",
              *output_paths(tmp_path)]
    # the same typed name: one run takes it, the other is refused in one line (before writing anything)
    procs = [start_train([*common, "--run_name", "same"], tmp_path) for _ in range(2)]
    outcomes = [(proc.wait(timeout=600), proc.stderr.read()) for proc in procs]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    refusal = next(stderr for code, stderr in outcomes if code == 2)
    assert "Traceback" not in refusal and "run same " in refusal.splitlines()[-1]
    assert sorted(os.listdir(tmp_path / "log")) == ["same"] and results_of(tmp_path, "same")["last"]["epoch"] == 0
    # the same command twice with the default name: two runs, the second named -2
    procs = [start_train(common, tmp_path) for _ in range(2)]
    assert [proc.wait(timeout=600) for proc in procs] == [0, 0], [proc.stderr.read() for proc in procs]
    names = sorted(set(os.listdir(tmp_path / "log")) - {"same"})
    assert len(names) == 2 and names[1] == names[0] + "-2"
    for name in names:
        assert load_ckpt(tmp_path, name)["args"]["run_name"] == name and results_of(tmp_path, name)


def test_a_start_that_fails_leaves_nothing_behind_and_frees_its_name(sysu_run, tiny_sysu, tmp_path):
    # a --test-only whose test images are missing: refused after its folder was claimed, which it removes
    proc = run_train(["--test-only", "--resume", str(sysu_run / "save" / "e2e_last.pth"), "--data_path",
                      str(tmp_path / "nowhere"), "--log_path", str(tmp_path / "log")], cwd=tmp_path, check=False)
    assert_one_line_error(proc, "nowhere")
    assert not (tmp_path / "log" / "e2e_test").exists()
    run_train(["--test-only", "--resume", str(sysu_run / "save" / "e2e_last.pth"), "--log_path",
               str(tmp_path / "log"), "--no_pictures", "--test_trials", "2"], cwd=tmp_path)
    assert os.listdir(tmp_path / "log") == ["e2e_test"]  # the name was free again, not e2e_test-2
    # a training run on a dataset without arrays: refused after the claim, no folder left
    proc = run_train(["--dataset", "sysu", "--data_path", tiny_sysu, *FAST, "--epochs", "1",
                      *outputs(tmp_path, "no_arrays")], cwd=tmp_path, check=False)
    assert_one_line_error(proc, "pre_process_sysu.py")
    assert not (tmp_path / "log" / "no_arrays").exists()


# ---------------------------------------------------------------------------------------------- --test-only

def test_test_only_evaluates_the_checkpoint_s_network_and_refuses_flags_it_cannot_apply(sysu_run, tmp_path):
    last = str(sysu_run / "save" / "e2e_last.pth")
    for flags, fragment in ((["--arch", "resnet50"], "--arch resnet50: --test-only evaluates the checkpoint"),
                            (["--img_h", "64"], "--img_h 64"), (["--dataset", "regdb"], "--dataset regdb"),
                            (["--lr", "0.5", "--epochs", "9"], "--epochs, --lr: not used by --test-only")):
        with pytest.raises(UserError, match=fragment):
            train_mine.parse_args(["--test-only", "--resume", last, *flags])
    args = train_mine.parse_args(["--test-only", "--resume", last, "--arch", "resnet18", "--mode", "indoor",
                                  "--rerank"])  # the checkpoint's own value, and evaluation flags: fine
    assert (args.arch, args.part_dim, args.mode, args.rerank) == ("resnet18", 32, "indoor", True)


# ---------------------------------------------------------------------------------------------- the demo's data

def test_the_demo_recipe_on_somebody_s_root_never_rewrites_its_arrays(tiny_sysu, tiny_sysu_preprocessed, tmp_path):
    theirs = str(tmp_path / "theirs")
    shutil.copytree(tiny_sysu_preprocessed, theirs)  # arrays at 32 x 16, no demo.json
    before = {name: os.stat(os.path.join(theirs, name)).st_mtime_ns for name in os.listdir(theirs)}
    args = train_mine.parse_args(["--dataset", "demo", "--data_path", theirs])  # the demo's 64 x 32
    with pytest.raises(UserError, match="holds arrays of 32x16 images, not the run's 64x32.*pre_process_sysu.py"):
        train_mine.prepare_demo_data(args, train_mine.setup_logger(enabled=False))
    assert {name: os.stat(os.path.join(theirs, name)).st_mtime_ns for name in os.listdir(theirs)} == before
    # at its own size it is used as it is; a root without arrays gets them written
    train_mine.prepare_demo_data(train_mine.parse_args(["--dataset", "demo", "--data_path", theirs, "--img_h", "32",
                                                        "--img_w", "16"]), train_mine.setup_logger(enabled=False))
    assert {name: os.stat(os.path.join(theirs, name)).st_mtime_ns for name in os.listdir(theirs)} == before
    bare = str(tmp_path / "bare")
    shutil.copytree(tiny_sysu, bare)
    train_mine.prepare_demo_data(train_mine.parse_args(["--dataset", "demo", "--data_path", bare, "--img_h", "32",
                                                        "--img_w", "16"]), train_mine.setup_logger(enabled=False))
    assert np.load(os.path.join(bare, "train_rgb_resized_img.npy")).shape[1:3] == (32, 16)


# ---------------------------------------------------------------------------------------------- stops

def test_sigterm_stops_with_one_line_in_the_log_and_the_run_resumes(tiny_sysu_preprocessed, tmp_path):
    argv = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *with_flag(FAST, "--gpu", "0"),
            "--epochs", "30", "--no_pictures", *outputs(tmp_path, "stopped")]
    proc = start_train(argv, tmp_path)
    checkpoint = tmp_path / "save" / "stopped_last.pth"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    stderr = proc.stderr.read()
    assert stderr.strip().splitlines()[-1] == "stopped by SIGTERM" and "Traceback" not in stderr
    log_text = (tmp_path / "log" / "stopped" / "log.txt").read_text()
    assert "stopped by SIGTERM: the run's files are intact; continue with --resume" in log_text
    if not torch.cuda.is_available():  # --gpu 0 on a machine without CUDA: said in the log, not only on the console
        assert "--gpu 0 asked for, but CUDA is not available: running on the CPU" in log_text
    epoch = load_ckpt(tmp_path, "stopped")["epoch"]
    run_train(["--resume", str(checkpoint), "--epochs", str(epoch + 2)], cwd=tmp_path)
    assert results_of(tmp_path, "stopped")["last"]["epoch"] == epoch + 1
