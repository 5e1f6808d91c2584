"""torchrun / DistributedDataParallel on the CPU (gloo, 2 processes): the global batch is the one-process batch,
the gradient equals the one-process gradient, every process ends with the same state, and a 2-process checkpoint
resumes in one process."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import train_mine
from data_loader import TrainBatches, make_train_loader
from evaluate import extract_features
from model import VISIBLE, ModelOutput
from pseudo_label import ClassCenters, PseudoLabelPool
from train_helpers import FAST, load_ckpt, outputs, read_csv, results_of, run_train
from utils import UserError, broadcast_buffers, setup_logger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, NUM_PARTS, PART_DIM = 6, 2, 4


class PoolNet(nn.Module):
    """A stand-in for embed_net without batch statistics: each row's output depends on that row alone, as
    BatchNorm in training mode would not (it normalises over the process's share), so the 2-process gradient must
    equal the 1-process gradient up to float rounding. Parts: the mean colour of 2 x 2 cells of each stripe."""

    def __init__(self):
        super().__init__()
        self.stem = nn.ModuleList([nn.Linear(12, 12), nn.Linear(12, 12)])  # a layer per modality
        self.register_buffer("steps", torch.zeros(()))  # a buffer, as BatchNorm's running statistics
        self.part = nn.Parameter(torch.randn(NUM_PARTS, PART_DIM, 12) * 0.3)
        self.classifier = nn.Parameter(torch.randn(NUM_PARTS, NUM_CLASSES, PART_DIM) * 0.3)

    def forward(self, x_rgb, x_ir):
        cells = [F.adaptive_avg_pool2d(x, (2 * NUM_PARTS, 2)).unflatten(2, (NUM_PARTS, 2)).permute(0, 2, 1, 3, 4)
                 .flatten(2) for x in (x_rgb, x_ir)]  # (B, parts, 12)
        stems = torch.cat([stem(c) for stem, c in zip(self.stem, cells)])
        part_feats = F.relu(torch.einsum("bpc,pdc->bpd", stems, self.part))
        return ModelOutput(part_feats.flatten(1), part_feats, torch.einsum("bpd,pkd->bpk", part_feats, self.classifier))


def one_step(process, num_processes, init_file, out_path):
    """One training step of train_one_epoch on the process's share of one batch (the whole batch in one
    process), written to out_path by process 0: weights, centers and losses after the step."""
    if num_processes > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=process, world_size=num_processes)
    rng = np.random.default_rng(0)
    data = {f"{m}_img": rng.integers(0, 256, (60, 16, 8, 3), dtype=np.uint8) for m in ("rgb", "ir")}
    labels = np.repeat(np.arange(NUM_CLASSES), 10)
    labeled, unlabeled = np.arange(0, 60, 3), np.setdiff1d(np.arange(60), np.arange(0, 60, 3))
    batches = TrainBatches(data, (labeled, labels[labeled]), (labeled, labels[labeled]), 4, 2, 1, seed=0, epoch=7,
                           rgb_unlabeled=unlabeled, ir_unlabeled=unlabeled, unlabeled_ids=2, unlabeled_pos=2,
                           shard=(process, num_processes))
    torch.manual_seed(0)
    model = PoolNet()
    trained = DistributedDataParallel(model) if num_processes > 1 else model
    centers = ClassCenters(NUM_CLASSES, NUM_PARTS, PART_DIM)
    centers.global_centers.uniform_(0, 1, generator=torch.Generator().manual_seed(1))  # a DCE with real targets
    args = train_mine.parse_args(["--pad", "2", "--center_start", "0", "--log_every", "100"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    stats = train_mine.train_one_epoch(trained, make_train_loader(batches), optimizer, centers, 7, args,
                                       torch.device("cpu"), None, torch.amp.GradScaler("cpu", enabled=False),
                                       setup_logger(enabled=process == 0), use_dce=True)
    result = {"model": model.state_dict(), "centers": centers.state_dict(), "stats": stats}
    if num_processes > 1:  # a process that drifted apart is caught: in its weights, or in its buffers
        pools = {m: PseudoLabelPool() for m in ("rgb", "ir")}
        result["caught"] = []
        for drifting in (model.part[0, 0], model.steps):
            with torch.no_grad():
                drifting.add_(process)  # only process 1 moves
            try:
                train_mine.check_processes_agree(model, centers, pools, 7)
                result["caught"].append(False)
            except UserError:
                result["caught"].append(True)
            with torch.no_grad():
                drifting.sub_(process)
        with torch.no_grad():
            model.steps.add_(process)
        broadcast_buffers(model)  # what the training loop does after every epoch: rank 0's buffers everywhere
        result["steps_after_broadcast"] = float(model.steps)
        dist.destroy_process_group()
    torch.save(result, f"{out_path}.{process}")


def test_two_processes_take_the_one_process_step(tmp_path):
    one_step(0, 1, None, str(tmp_path / "one"))
    mp.spawn(one_step, args=(2, str(tmp_path / "init"), str(tmp_path / "two")), nprocs=2)
    one = torch.load(tmp_path / "one.0", weights_only=True)
    for process in (0, 1):
        two = torch.load(tmp_path / f"two.{process}", weights_only=True)
        assert two["caught"] == [True, True]  # the fingerprint check stops both processes when one differs
        assert two["steps_after_broadcast"] == 0.0  # process 0's buffer, on process 1 too
        for key, value in one["model"].items():
            assert torch.allclose(two["model"][key], value, atol=1e-6), key  # the same step: same gradient, update
        for key, value in one["centers"].items():
            assert torch.allclose(two["centers"][key], value, atol=1e-6), key
        for name in ("loss", "loss_id", "loss_tri", "loss_dce", "dce_group_size"):
            assert two["stats"][name] == pytest.approx(one["stats"][name], rel=1e-5), name
    assert one["stats"]["loss_dce"] > 0 and one["stats"]["loss_tri"] >= 0
    torch.manual_seed(0)  # the initial weights of the step
    assert not torch.equal(one["model"]["part"], PoolNet().part)  # the step moved the weights


class BatchMeanNet(nn.Module):
    """A feature that depends on the other rows of its batch (its value plus the batch mean): sharded extraction
    equals the one-process extraction only if every batch holds the same rows, and the gather puts them back."""

    def forward(self, x_rgb=None, x_ir=None):
        x = x_rgb.flatten(1)[:, :4]
        return x + x.mean(0, keepdim=True)


def sharded_extraction(process, num_processes, init_file, out_path, num_rows=23):
    if num_processes > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=process, world_size=num_processes)
    images = np.random.default_rng(0).integers(0, 256, (30, 4, 2, 3), dtype=np.uint8)
    rows = np.random.default_rng(1).permutation(30)[:num_rows]  # in batches of 5: 23 rows, 4 full and one of 3
    feats = extract_features(BatchMeanNet(), images, VISIBLE, batch_size=5, indices=rows, shard=True)
    if num_processes > 1:
        dist.destroy_process_group()
    torch.save(feats, f"{out_path}.{process}")


@pytest.mark.parametrize("num_processes, num_rows", [(2, 23), (3, 23), (3, 7)])  # 7 rows: a process gets no batch
def test_sharded_extraction_is_the_one_process_extraction_to_the_bit(tmp_path, num_processes, num_rows):
    sharded_extraction(0, 1, None, str(tmp_path / "one"), num_rows)
    mp.spawn(sharded_extraction, args=(num_processes, str(tmp_path / "init"), str(tmp_path / "many"), num_rows),
             nprocs=num_processes)
    one = torch.load(tmp_path / "one.0", weights_only=True)
    for process in range(num_processes):
        assert torch.equal(torch.load(tmp_path / f"many.{process}", weights_only=True), one)


def torchrun(args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.join(REPO, "train_mine.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_two_process_run_writes_one_result_reproduces_it_and_resumes_in_one_process(tiny_sysu_preprocessed,
                                                                                       tmp_path):
    torchrun(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--epochs", "3", *FAST, "--no_pictures",
              *outputs(tmp_path, "ddp")], cwd=tmp_path)
    assert sorted(os.listdir(tmp_path / "log")) == ["ddp"]  # rank 0 alone writes
    results = results_of(tmp_path, "ddp")
    assert results["run"]["world_size"] == 2 and results["last"]["epoch"] == 2
    assert results["pseudo_label"]["pool_size"] > 0
    log_text = (tmp_path / "log" / "ddp" / "log.txt").read_text()
    assert log_text.count("command: ") == 1 and '"world_size": 2' in log_text  # one process's log
    assert load_ckpt(tmp_path, "ddp")["epoch"] == 2 and not any(k.startswith("module.")
                                                               for k in load_ckpt(tmp_path, "ddp")["model"])
    # the real model, batch norm included: the processes agreed on weights and buffers every epoch (the run would
    # have stopped), and the saved checkpoint is the model of the reported figures, to the digit
    torchrun(["--test-only", "--resume", str(tmp_path / "save" / "ddp_last.pth"), "--test_trials", "2"], cwd=tmp_path)
    run_train(["--test-only", "--resume", str(tmp_path / "save" / "ddp_last.pth"), "--test_trials", "2",
               "--no_pictures"], cwd=tmp_path)  # and in one process: every batch of the extraction is the same
    for tested in (results_of(tmp_path, "ddp_test"), results_of(tmp_path, "ddp_test-2")):
        for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "trials"):
            assert tested["last"][key] == results["last"][key], key
    # the 2-process checkpoint continues in one process; the record keeps both segments
    run_train(["--resume", str(tmp_path / "save" / "ddp_last.pth"), "--epochs", "4"], cwd=tmp_path)
    resumed = results_of(tmp_path, "ddp")
    assert resumed["run"]["world_size"] == 1 and resumed["last"]["epoch"] == 3
    assert [(s["first_epoch"], s["last_epoch"], s["world_size"]) for s in resumed["run"]["segments"]] == \
        [(0, 2, 2), (3, 3, 1)]
    assert resumed["run"]["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in resumed["run"]["segments"]))
    assert [int(row["epoch"]) for row in read_csv(tmp_path / "log" / "ddp" / "metrics.csv")] == [0, 1, 2, 3]


def test_torchrun_refuses_bad_flags_once_before_writing_anything(tiny_sysu_preprocessed, tmp_path):
    proc = torchrun(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST, "--sync_bn",
                     *outputs(tmp_path, "refused")], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --sync_bn needs CUDA (SyncBatchNorm); on the CPU each process normalises with its "
                      "share"]  # printed by rank 0 only
    assert not (tmp_path / "log").exists() and not (tmp_path / "save").exists()


def test_batches_that_do_not_split_over_the_processes_are_refused(tmp_path, monkeypatch):
    # checked when the arguments are parsed, from torchrun's WORLD_SIZE, before any process joins the group
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="do not split over 3 processes"):
        train_mine.parse_args([])  # 8 x 4 = 32 images per modality
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert train_mine.parse_args([]).batch_size == 8
