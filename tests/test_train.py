"""train_mine.py: its pure parts (schedule, argument precedence, loss terms, the batch's row split) in-process,
and the script end to end on tiny datasets in the real SYSU-MM01 and RegDB layouts, run as a user runs it."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import train_mine
from data_loader import IMAGENET_MEAN, IMAGENET_STD, TrainBatches, make_train_loader
from data_manager import load_train_data
from evaluate import extract_features
from loss import dynamic_center_ce, hetero_center_triplet
from model import INFRARED, VISIBLE, ModelOutput, embed_net
from pseudo_label import ClassCenters, PseudoLabelPool, ema_update
from train_helpers import (FAST, assert_one_line_error, load_ckpt, outputs, read_csv, results_of, run_train,
                           with_flag)
from utils import UserError, save_checkpoint, setup_logger

RESULT_KEYS = {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "trials"}


# ---------------------------------------------------------------------------------------------- schedule

def test_lr_schedule_at_the_paper_boundaries():
    args = train_mine.parse_args([])
    factors = {epoch: train_mine.lr_factor(epoch, args.warmup_epochs, args.lr_steps, args.lr_factors)
               for epoch in (0, 9, 10, 29, 30, 39, 40, 60)}
    assert factors == pytest.approx({0: 0.1, 9: 1.0, 10: 1.0, 29: 1.0, 30: 0.1, 39: 0.1, 40: 0.05, 60: 0.05})


def test_round_and_eval_epochs_with_the_paper_flags():
    args = train_mine.parse_args([])
    rounds = [e for e in range(args.epochs) if train_mine.is_pseudo_label_epoch(e, args)]
    assert rounds == list(range(6, 30))
    evals = [e for e in range(args.epochs) if train_mine.is_eval_epoch(e, args)]
    assert evals == list(range(10, 61, 2))
    assert not any(train_mine.is_pseudo_label_epoch(e, train_mine.parse_args(["--no_pseudo"])) for e in range(61))


def test_batches_per_epoch_is_the_released_zip_of_two_samplers():
    assert train_mine.batches_per_epoch((32, 10), 4, 4) == 3  # N = 32 divisible by P x K = 16: 32 // 16 + 1
    assert train_mine.batches_per_epoch((10, 33), 4, 4) == 3  # the larger pool; not divisible
    assert train_mine.batches_per_epoch((15, 15), 4, 4) == 1
    # zipped with the unlabeled loader (int(N_u / 16) + 1 batches, N_u the larger unlabeled set): the shorter ends it
    assert train_mine.batches_per_epoch((100, 90), 4, 4, (300, 280), 16) == 100 // 16 + 1 == 7  # labeled shorter
    assert train_mine.batches_per_epoch((300, 290), 4, 4, (50, 64), 16) == 64 // 16 + 1 == 5  # unlabeled shorter
    assert train_mine.batches_per_epoch((300, 290), 8, 4, (0, 0), 16) == 10  # no unlabeled images: labeled alone
    assert train_mine.batches_per_epoch((300, 290), 8, 4, (50, 64), 0) == 10  # none per batch: labeled alone


# ---------------------------------------------------------------------------------------------- arguments

def saved_run(tmp_path, *argv, name="run"):
    """The last checkpoint of a run started with argv, holding only its arguments (all that parse_args reads)."""
    args = train_mine.parse_args([*argv, "--model_path", str(tmp_path), "--run_name", name])
    path = str(tmp_path / f"{name}_last.pth")
    save_checkpoint(path, {"args": vars(args)})
    return path


def test_argument_precedence_demo_defaults_checkpoint_command_line(tmp_path):
    demo = train_mine.parse_args(["--dataset", "demo"])
    assert demo.arch == train_mine.DEMO_DEFAULTS["arch"] and demo.epochs == train_mine.DEMO_DEFAULTS["epochs"]
    assert demo.lr_steps == train_mine.DEMO_DEFAULTS["lr_steps"]
    assert train_mine.parse_args(["--dataset", "demo", "--epochs", "5"]).epochs == 5  # typed beats demo default
    # the checkpoint's values beat the demo's defaults; typed flags beat the checkpoint's
    path = saved_run(tmp_path, "--dataset", "demo", "--epochs", "30", "--arch", "resnet34", "--lr", "0.02")
    resumed = train_mine.parse_args(["--resume", path])
    assert (resumed.dataset, resumed.epochs, resumed.arch, resumed.lr) == ("demo", 30, "resnet34", 0.02)
    assert resumed.img_h == train_mine.DEMO_DEFAULTS["img_h"]  # untouched demo default
    assert train_mine.parse_args(["--resume", path, "--epochs", "40"]).epochs == 40
    # a paper run resumed keeps the paper's defaults, not the demo's
    paper = train_mine.parse_args(["--resume", saved_run(tmp_path, "--dataset", "sysu", "--epochs", "3", name="paper")])
    assert (paper.arch, paper.epochs, paper.img_h) == ("resnet50", 3, 288)


def test_resume_refuses_another_network_or_dataset(tmp_path):
    path = saved_run(tmp_path, "--dataset", "demo", "--arch", "resnet34")
    assert train_mine.parse_args(["--resume", path, "--arch", "resnet34"]).arch == "resnet34"  # same value: fine
    with pytest.raises(UserError, match="--arch resnet50 differs from the resumed run's resnet34"):
        train_mine.parse_args(["--resume", path, "--arch", "resnet50"])
    for flag, value in (("--dataset", "sysu"), ("--label_ratio", "0.5"), ("--seed", "3"), ("--img_h", "32")):
        with pytest.raises(UserError, match=f"{flag} .* differs from the resumed run's"):  # data, split, network
            train_mine.parse_args(["--resume", path, flag, value])
    assert train_mine.parse_args(["--resume", path, "--lr", "0.5"]).lr == 0.5  # the optimisation may change
    # a copy of the checkpoint is not the run's own: it continues only as a new run, under a new name
    copy = str(tmp_path / "elsewhere.pth")
    shutil.copy(path, copy)
    with pytest.raises(UserError, match="not the last checkpoint of run run .* add --run_name"):
        train_mine.parse_args(["--resume", copy])
    assert train_mine.parse_args(["--resume", copy, "--run_name", "fork"]).run_name == "fork"
    with pytest.raises(UserError, match="stays in its folder"):
        train_mine.parse_args(["--resume", path, "--model_path", str(tmp_path / "other")])


def test_flags_are_checked_where_declared_and_both_spellings_work():
    assert train_mine.parse_args(["--batch_size", "3"]).batch_size == 3 and train_mine.parse_args(["--batch-size", "5"]).batch_size == 5
    for bad, fragment in ((["--epochs", "0"], "--epochs"), (["--conf_thresh", "1.5"], "--conf_thresh"),
                          (["--label_ratio", "0"], "--label_ratio"), (["--lr_steps", "3,x"], "--lr_steps"),
                          (["--lr_steps", "30"], "differ in length"), (["--test_only"], "needs --resume"),
                          (["--pl_start", "6", "--pl_end", "5"], "no pseudo-label round")):
        with pytest.raises(UserError, match=fragment):
            train_mine.parse_args(bad)


# ---------------------------------------------------------------------------------------------- loss terms

def test_loss_terms_by_hand():
    gen = torch.Generator().manual_seed(0)
    num_parts, part_dim, num_classes = 3, 2, 4
    part_feats = torch.rand(8, num_parts, part_dim, generator=gen)
    part_logits = torch.randn(8, num_parts, num_classes, generator=gen)
    labeled = ModelOutput(part_feats.flatten(1), part_feats, part_logits)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modals = torch.tensor([VISIBLE] * 4 + [INFRARED] * 4)
    centers = torch.rand(num_classes, num_parts * part_dim, generator=gen)
    unlabeled = torch.rand(5, num_parts * part_dim, generator=gen)
    args = train_mine.parse_args([])

    # ID: the sum over parts of each part classifier's mean CE
    loss_id = sum(torch.nn.functional.cross_entropy(part_logits[:, p], labels) for p in range(num_parts))
    tri_global = hetero_center_triplet(labeled.feat, labels, modals, 0.3)
    tri_parts = sum(hetero_center_triplet(part_feats[:, p], labels, modals, 0.3) for p in range(num_parts))
    dce = dynamic_center_ce(unlabeled, centers, 0.1)
    terms = train_mine.loss_terms(labeled, labels, modals, unlabeled, centers, args)
    assert list(terms) == ["loss", "loss_id", "loss_tri", "loss_dce", "dce_group_size"]
    assert terms["loss_id"].item() == pytest.approx(loss_id.item(), rel=1e-5)
    assert terms["loss_tri"].item() == pytest.approx((tri_global + 2 * tri_parts).item(), rel=1e-5)
    assert terms["loss_dce"].item() == pytest.approx(dce.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((loss_id + tri_global + 2 * tri_parts + 2 * dce).item(), rel=1e-5)
    assert tri_parts.item() > 0 and dce.item() > 0  # so the weights above are really checked

    no_parts = train_mine.loss_terms(labeled, labels, modals, None, centers,
                                     train_mine.parse_args(["--w_part_tri", "0", "--w_dce", "0.5"]))
    assert list(no_parts) == ["loss", "loss_id", "loss_tri"]  # no unlabeled rows: no DCE term at all
    assert no_parts["loss_tri"].item() == pytest.approx(tri_global.item(), rel=1e-5)
    assert no_parts["loss"].item() == pytest.approx((loss_id + tri_global).item(), rel=1e-5)
    before_triplet = train_mine.loss_terms(labeled, labels, modals, unlabeled, centers, args, use_triplet=False)
    assert list(before_triplet) == ["loss", "loss_id", "loss_dce", "dce_group_size"]
    assert before_triplet["loss"].item() == pytest.approx((loss_id + 2 * dce).item(), rel=1e-5)


def test_row_split_puts_labeled_and_unlabeled_rows_where_the_losses_expect():
    # model rows: 3 labeled visible, 2 unlabeled visible, then 3 labeled infrared, 4 unlabeled infrared
    rows = torch.tensor([10, 11, 12, 90, 91, 20, 21, 22, 80, 81, 82, 83])
    labeled, unlabeled = train_mine.labeled_and_unlabeled_rows(3, 5, 3, 7)
    assert rows[labeled].tolist() == [10, 11, 12, 20, 21, 22]
    assert rows[unlabeled].tolist() == [90, 91, 80, 81, 82, 83]
    labeled, unlabeled = train_mine.labeled_and_unlabeled_rows(2, 2, 2, 2)  # no unlabeled images
    assert labeled.tolist() == [0, 1, 2, 3] and unlabeled.tolist() == []


class EchoNet(nn.Module):
    """A stand-in model whose features are the index of the image they come from: the test images hold their
    index as the pixel value, so every output row can be traced back to its image through the augmentation."""

    def __init__(self, num_classes, num_parts=2, part_dim=3):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.classifier = nn.Parameter(torch.zeros(num_parts, num_classes, part_dim))
        self.num_parts, self.part_dim = num_parts, part_dim

    def forward(self, x_rgb=None, x_ir=None):
        x = torch.cat([x_rgb, x_ir])
        height, width = x.shape[2:]
        centre = x[:, 0, height // 2, width // 2] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # undo the normalisation
        index = (centre * 255).round()  # (B,) what the pixel held
        part_feats = (index[:, None, None] * self.scale).expand(-1, self.num_parts, self.part_dim)
        return ModelOutput(part_feats.flatten(1), part_feats, torch.einsum("bpd,pkd->bpk", part_feats, self.classifier))


def test_train_one_epoch_hands_each_loss_its_rows(monkeypatch):
    # visible images 0..59, infrared 100..159: each image's pixels hold its index
    index = {"rgb": np.arange(60), "ir": 100 + np.arange(60)}
    data = {f"{m}_img": np.broadcast_to(index[m].astype(np.uint8)[:, None, None, None], (60, 12, 6, 3)).copy()
            for m in index}
    labels = np.repeat(np.arange(6), 10)
    labeled = np.arange(0, 60, 5)  # 2 per identity; the rest unlabeled
    unlabeled = np.setdiff1d(np.arange(60), labeled)
    batches = TrainBatches(data, (labeled, labels[labeled]), (labeled, labels[labeled]), 3, 2, 2, seed=0, epoch=0,
                           rgb_unlabeled=unlabeled, ir_unlabeled=unlabeled, unlabeled_ids=5, unlabeled_pos=1)
    seen = []

    def spy(labeled_out, batch_labels, modals, unlabeled_feat, *rest):
        seen.append((labeled_out.feat[:, 0].detach(), batch_labels, modals, unlabeled_feat[:, 0].detach()))
        return real_loss_terms(labeled_out, batch_labels, modals, unlabeled_feat, *rest)

    real_loss_terms = train_mine.loss_terms
    monkeypatch.setattr(train_mine, "loss_terms", spy)
    args = train_mine.parse_args(["--pad", "2", "--center_start", "0", "--log_every", "100"])
    model = EchoNet(6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the features stay the image indices
    stats = train_mine.train_one_epoch(model, make_train_loader(batches), optimizer, ClassCenters(6, 2, 3), 0, args,
                                       torch.device("cpu"), None, torch.amp.GradScaler("cpu", enabled=False),
                                       setup_logger(), use_dce=True)
    assert set(stats) == {"loss", "loss_id", "loss_tri", "loss_dce", "dce_group_size", "data_wait"}
    assert len(seen) == 2
    for b, (feat, batch_labels, modals, unlabeled_feat) in enumerate(seen):
        plan = {key: torch.from_numpy(rows[b]) for key, rows in batches.plan.items()}
        # labeled rows: the visible labeled images, then the infrared ones, with their labels and modals
        assert feat.long().tolist() == plan["rgb"].tolist() + (100 + plan["ir"]).tolist()
        assert batch_labels.tolist() == plan["rgb_label"].tolist() + plan["ir_label"].tolist()
        assert modals.tolist() == [VISIBLE] * 6 + [INFRARED] * 6
        # the DCE gets the unlabeled images of both modalities, and nothing else
        assert unlabeled_feat.long().tolist() == plan["rgb_unl_idx"].tolist() + (100 + plan["ir_unl_idx"]).tolist()


def test_the_dce_of_a_batch_uses_the_centers_that_batch_updated(monkeypatch):
    index = {"rgb": np.arange(60), "ir": 100 + np.arange(60)}
    data = {f"{m}_img": np.broadcast_to(index[m].astype(np.uint8)[:, None, None, None], (60, 12, 6, 3)).copy()
            for m in index}
    labels = np.repeat(np.arange(6), 10)
    labeled, unlabeled = np.arange(0, 60, 5), np.setdiff1d(np.arange(60), np.arange(0, 60, 5))
    batches = TrainBatches(data, (labeled, labels[labeled]), (labeled, labels[labeled]), 3, 2, 2, seed=0, epoch=0,
                           rgb_unlabeled=unlabeled, ir_unlabeled=unlabeled, unlabeled_ids=2, unlabeled_pos=2)
    centers = ClassCenters(6, 2, 3)
    expected = centers.global_centers.clone()
    seen = []

    def spy(labeled_out, batch_labels, modals, unlabeled_feat, global_centers, *rest):
        seen.append((labeled_out.feat.detach().clone(), batch_labels.clone(), global_centers.clone()))
        return real_loss_terms(labeled_out, batch_labels, modals, unlabeled_feat, global_centers, *rest)

    real_loss_terms = train_mine.loss_terms
    monkeypatch.setattr(train_mine, "loss_terms", spy)
    args = train_mine.parse_args(["--pad", "2", "--center_start", "0", "--log_every", "100"])
    train_mine.train_one_epoch(EchoNet(6), make_train_loader(batches),
                               torch.optim.SGD(EchoNet(6).parameters(), lr=0.0), centers, 0, args, torch.device("cpu"),
                               None, torch.amp.GradScaler("cpu", enabled=False), setup_logger(), use_dce=True)
    for feat, batch_labels, centers_seen in seen:
        expected = ema_update(expected, feat, batch_labels, args.center_momentum)  # this batch's update first
        assert torch.allclose(centers_seen, expected)
    assert torch.allclose(centers.global_centers, expected) and expected.abs().sum() > 0


def test_rounds_and_evaluation_extract_in_fp32_whatever_the_training_precision(monkeypatch):
    amp_seen = []

    def fake_extract(model, images, modal, batch_size, device, amp_dtype, **kwargs):
        amp_seen.append(amp_dtype)
        rows = len(kwargs["indices"])
        return torch.zeros(rows, 4), torch.rand(rows, 2, 2), torch.randn(rows, 3)

    def fake_evaluate(model, test_set, trials, batch_size, device, amp_dtype, rerank, shard):
        amp_seen.append(amp_dtype)
        return {}

    monkeypatch.setattr(train_mine, "extract_features", fake_extract)
    monkeypatch.setattr(train_mine, "evaluate", fake_evaluate)
    args = train_mine.parse_args(["--amp", "bf16"])
    data = {"rgb_label": np.zeros(4, np.int64), "ir_label": np.zeros(4, np.int64), "rgb_img": None, "ir_img": None}
    split = {"rgb_unlabeled": np.arange(2, 4), "ir_unlabeled": np.arange(1, 4)}
    pools = {m: PseudoLabelPool() for m in train_mine.MODALITIES}
    stats, predicted = train_mine.pseudo_label_round(None, data, split, ClassCenters(3, 2, 2), pools, args, "cpu")
    train_mine.evaluate_model(None, None, args, "cpu")
    assert amp_seen == [None, None, None]  # two modalities' rounds and the evaluation: no autocast
    assert [len(predicted[m]) for m in train_mine.MODALITIES] == [2, 3]  # every unlabeled image gets a class
    assert "conf_mean" in stats and "conf_p90" in stats


class OracleParts(nn.Module):
    """A stand-in whose part features sit near the part center of each image's class and whose logits are peaked
    on that class (or flat): images hold their index as pixel value; the class of image i is classes[i]."""

    def __init__(self, part_centers, peaked, classes):
        super().__init__()
        self.part_centers, self.peaked = part_centers, peaked  # (C, P, D)
        self.classes = torch.as_tensor(classes)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x_rgb=None, x_ir=None, return_parts=False):
        x = x_rgb if x_rgb is not None else x_ir
        index = ((x[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).round().long()
        classes = self.classes[index]
        noise = 0.05 * torch.rand(len(x), *self.part_centers.shape[1:], generator=torch.Generator().manual_seed(0))
        part_feats = self.part_centers[classes] + noise
        logits = F.one_hot(classes, len(self.part_centers)).float() * (8.0 if self.peaked else 0.0)
        part_logits = logits[:, None].expand(-1, part_feats.shape[1], -1)
        return ModelOutput(F.normalize(part_feats.flatten(1), dim=1), part_feats, part_logits)


def indexed_images(num_images):
    """(num_images, 8, 4, 3) uint8 images whose pixels hold the image's index (< 256)."""
    return np.broadcast_to(np.arange(num_images, dtype=np.uint8)[:, None, None, None], (num_images, 8, 4, 3)).copy()


def test_a_round_accepts_confident_images_near_their_centers_and_nothing_from_a_flat_classifier():
    num_classes, num_images = 5, 40
    data = {f"{m}_img": indexed_images(num_images) for m in train_mine.MODALITIES}
    data.update({f"{m}_label": np.arange(num_images) % num_classes for m in train_mine.MODALITIES})
    split = {f"{m}_unlabeled": np.arange(10, num_images) for m in train_mine.MODALITIES}
    centers = ClassCenters(num_classes, 3, 4)
    centers.part_centers.uniform_(0.5, 1.0, generator=torch.Generator().manual_seed(1))
    args = train_mine.parse_args(["--pl_scoring", "all"])  # every image once, unaugmented: the stand-in reads pixels
    pools = {m: PseudoLabelPool() for m in train_mine.MODALITIES}
    model_classes = np.arange(num_images) % num_classes  # this model is right on every image
    stats, predicted = train_mine.pseudo_label_round(OracleParts(centers.part_centers[0], True, model_classes), data,
                                                     split, centers, pools, args, "cpu")
    assert stats["accepted_rgb"] == 30 and stats["conf_mean"] > 0.99  # every image: confident and near its center
    assert train_mine.pool_stats(data, pools)["pool_precision"] == 100.0
    assert torch.equal(predicted["rgb"], torch.from_numpy(model_classes[10:]))
    pools = {m: PseudoLabelPool() for m in train_mine.MODALITIES}
    stats, _ = train_mine.pseudo_label_round(OracleParts(centers.part_centers[0], False, model_classes), data, split,
                                             centers, pools, args, "cpu")
    assert stats["accepted_rgb"] == stats["accepted_ir"] == 0 and stats["conf_p90"] == pytest.approx(1 / num_classes)
    assert train_mine.pool_stats(data, pools)["pool_size"] == 0


def test_a_round_feeds_the_model_s_classes_to_the_next_batches_never_the_hidden_labels():
    """After a round, the identity batches hold pool images with their pseudo labels, and the unlabeled images are
    grouped by the class the model predicted. The model's classes are a partition of the images unrelated to the
    hidden labels, so a round or a sampler that reads the ground truth (or a pool that never reaches the batches)
    fails here."""
    num_classes, num_images = 5, 100
    hidden = np.arange(num_images) % num_classes
    model_classes = (np.arange(num_images) // num_classes) % num_classes  # unrelated to `hidden`
    data = {f"{m}_img": indexed_images(num_images) for m in train_mine.MODALITIES}
    data.update({f"{m}_label": hidden for m in train_mine.MODALITIES})
    split = {f"{m}_labeled": np.arange(0, 25) for m in train_mine.MODALITIES}  # 5 labeled images per class
    split.update({f"{m}_unlabeled": np.arange(25, num_images) for m in train_mine.MODALITIES})
    centers = ClassCenters(num_classes, 3, 4)
    centers.part_centers.uniform_(0.5, 1.0, generator=torch.Generator().manual_seed(1))
    args = train_mine.parse_args(["--pl_start", "0", "--pl_batch_size", "2", "--num_pos", "4", "--unlabeled_ids",
                                  "2", "--unlabeled_pos", "3", "--iters_per_epoch", "30", "--pl_scoring", "all"])
    pools = {m: PseudoLabelPool() for m in train_mine.MODALITIES}
    model = OracleParts(centers.part_centers[0], True, model_classes)
    _, predicted = train_mine.pseudo_label_round(model, data, split, centers, pools, args, "cpu")
    for modality, pool in pools.items():  # every unlabeled image, with the model's class
        assert len(pool) == 75 - int(0.1 * 75)
        assert np.array_equal(pool.labels.numpy(), model_classes[pool.indices.numpy()])
        assert np.array_equal(predicted[modality].numpy(), model_classes[25:])
    batches, use_dce = train_mine.epoch_batches(1, args, data, split, pools, predicted, setup_logger(enabled=False))
    assert use_dce
    pool_rows, mixed_groups = 0, 0
    for b in range(len(batches)):
        batch = batches[b]
        for modality in train_mine.MODALITIES:
            rows = batch[modality][:, 0, 0, 0].numpy().astype(np.int64)  # the images of the identity batch
            from_pool = rows >= 25
            assert np.array_equal(batch[f"{modality}_pseudo"].numpy(), from_pool)
            labels = batch[f"{modality}_label"].numpy()
            assert np.array_equal(labels[from_pool], model_classes[rows[from_pool]])  # pseudo labels, not hidden
            assert np.array_equal(labels[~from_pool], hidden[rows[~from_pool]])
            pool_rows += from_pool.sum()
            groups = batch[f"{modality}_unl_idx"].numpy().reshape(2, 3)  # 2 groups of 3 unlabeled images
            assert (model_classes[groups] == model_classes[groups][:, :1]).all()  # grouped by the model's class
            mixed_groups += int((hidden[groups] != hidden[groups][:, :1]).any())
    assert pool_rows > 30 * 2 * 8 / 2  # pool images fill most rows (60 pool vs 25 labeled per modality)
    assert mixed_groups > 30  # a group of one model class spans several hidden labels


def test_the_predicted_sampler_never_reads_hidden_labels_and_gt_does():
    rng = np.random.default_rng(0)
    data = {f"{m}_label": rng.integers(0, 5, 40) for m in train_mine.MODALITIES}
    split = {f"{m}_unlabeled": np.arange(10, 40) for m in train_mine.MODALITIES}
    predicted = {m: torch.from_numpy(rng.integers(0, 5, 30)) for m in train_mine.MODALITIES}
    shuffled = {key: rng.permutation(value) for key, value in data.items()}  # other hidden labels
    for labels in (data, shuffled):  # the same groups whatever the hidden labels are
        groups = train_mine.unlabeled_groups("predicted", labels, split, predicted)
        assert all(np.array_equal(g, predicted[m].numpy()) for g, m in zip(groups, train_mine.MODALITIES))
    assert train_mine.unlabeled_groups("predicted", data, split, None) is None  # before the first round: uniform
    assert train_mine.unlabeled_groups("random", data, split, predicted) is None
    gt = train_mine.unlabeled_groups("gt", data, split, None)
    assert all(np.array_equal(g, data[f"{m}_label"][10:]) for g, m in zip(gt, train_mine.MODALITIES))


# ---------------------------------------------------------------------------------------------- learning

def separable_data(num_ids, per_id, img_h, img_w, seed):
    """Identities as flat colours of distinct hue, plus pixel noise: trivially separable images."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (num_ids, 3))
    data = {}
    for modality in train_mine.MODALITIES:
        base = np.repeat(colours, per_id, axis=0)[:, None, None, :]  # (N, 1, 1, 3)
        noise = rng.normal(0, 12, (num_ids * per_id, img_h, img_w, 3))
        data[f"{modality}_img"] = np.clip(base + noise, 0, 255).astype(np.uint8)
        data[f"{modality}_label"] = np.repeat(np.arange(num_ids), per_id)
    return data


def test_a_short_labeled_run_learns_the_classes():
    """A regression that freezes the classifier, or keeps the lr at zero, fails here rather than in a figure."""
    torch.manual_seed(0)
    num_ids, per_id = 4, 12
    data = separable_data(num_ids, per_id, 32, 16, seed=0)
    train_rows = np.flatnonzero(np.arange(num_ids * per_id) % per_id < 8)  # 8 per identity; the rest held out
    held_out = np.setdiff1d(np.arange(num_ids * per_id), train_rows)
    pool = (train_rows, data["rgb_label"][train_rows])
    # from random init the triplet terms shrink the features before the classifier learns (README, demo):
    # the classifier alone, as a run's first epochs before --tri_start
    args = train_mine.parse_args(["--arch", "resnet18", "--pretrained", "none", "--part_dim", "32",
                                  "--backbone_lr_mult", "1", "--log_every", "100", "--tri_start", "1"])
    model = embed_net(num_ids, arch="resnet18", pretrained="none", part_dim=32)
    optimizer = train_mine.make_optimizer(model, args)
    train_mine.set_lr(optimizer, args.lr, 1.0)
    batches = TrainBatches(data, pool, pool, num_ids, 4, 30, seed=0, epoch=0)
    stats = train_mine.train_one_epoch(model, make_train_loader(batches), optimizer, ClassCenters(num_ids, 6, 32), 0,
                                       args, torch.device("cpu"), None, torch.amp.GradScaler("cpu", enabled=False),
                                       setup_logger(), use_dce=False)
    chance = 6 * np.log(num_ids)  # the summed part CE of uniform predictions
    assert stats["loss_id"] < 0.8 * chance
    _, _, mean_logits = extract_features(model, data["ir_img"], INFRARED, indices=held_out, return_parts=True)
    probs = mean_logits.softmax(1)
    assert (probs.argmax(1).numpy() == data["ir_label"][held_out]).mean() >= 0.75
    assert probs.max(1).values.mean() > 0.5  # confident, not just right: chance is 1 / 4


# ---------------------------------------------------------------------------------------------- end to end

def test_end_to_end_writes_every_output(sysu_run, tiny_sysu_preprocessed):
    run_dir = sysu_run / "log" / "e2e"
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) == {"dataset", "mode", "args", "last", "best", "phase", "pseudo_label", "split", "run"}
    assert results["run"]["torch"] == torch.__version__ and results["run"]["world_size"] == 1
    assert results["run"]["wall_time_s"] > results["run"]["train_time_s"] > 0
    [segment] = results["run"]["segments"]  # one process trained epochs 0-2 in one go
    assert (segment["first_epoch"], segment["last_epoch"], segment["world_size"]) == (0, 2, 1)
    assert segment["wall_time_s"] == results["run"]["wall_time_s"] and segment["git_commit"] == results["run"]["git_commit"]
    # the phase gain: the full evaluation ending the identity-only stage (--pl_start 1: after epoch 0), then last - it
    phase = results["phase"]
    assert phase["epoch"] == 0 and set(phase["gain"]) == {"rank1", "mAP", "mINP"}
    for key, gain in phase["gain"].items():
        assert gain == pytest.approx(results["last"][key] - phase["at_pl_start"][key])
    assert results["split"]["source"] == "drawn" and results["split"]["seed"] == 0 and len(results["split"]["sha1"]) == 12
    assert results["dataset"] == "sysu" and results["mode"] == "all" and results["args"]["epochs"] == 3
    assert RESULT_KEYS <= set(results["last"]) and RESULT_KEYS | {"epoch"} <= set(results["best"])
    last = results["last"]
    assert [t["trial"] for t in last["trials"]] == [0, 1] and last["epoch"] == 2
    for key in ("rank1", "mAP", "mINP"):
        assert last[key] == pytest.approx(np.mean([t[key] for t in last["trials"]]))
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert "loss_dce" in rows[0] and rows[0]["loss_dce"] == "" and rows[1]["loss_dce"] != ""  # DCE from pl_start
    # the best epoch is the first with the highest rank-1 among the periodic evaluations (--eval_start 1); epoch 0's
    # figures end the identity-only stage, for the phase gain, and are no candidate
    assert rows[0]["rank1"] != ""
    evaluated = [(float(row["rank1"]), -int(row["epoch"])) for row in rows if int(row["epoch"]) >= 1]
    assert results["best"]["epoch"] == -max(evaluated)[1]

    # the default round scores the released number of uniform draws (--pl_scoring sampled); with thresholds that
    # accept everything, each round accepts exactly the distinct images it drew, and the pool is what adding them
    # and forgetting the oldest int(0.1 x pool) gives, round after round
    split = json.loads((run_dir / "split.json").read_text())
    num_unlabeled = {m: len(split[f"{m}_unlabeled"]) for m in ("rgb", "ir")}
    assert not set(split["rgb_labeled"]) & set(split["rgb_unlabeled"])
    args = train_mine.parse_args(["--dataset", "sysu", *FAST])
    assert args.pl_scoring == "sampled"
    pools = {m: PseudoLabelPool() for m in ("rgb", "ir")}
    for row in rows[1:]:
        for modal, modality in enumerate(("rgb", "ir")):
            positions, _ = train_mine.round_draws("sampled", np.zeros(num_unlabeled[modality]),
                                                  max(num_unlabeled.values()), args, int(row["epoch"]), modal)
            drawn = np.unique(positions)
            assert 0 < len(drawn) < num_unlabeled[modality]  # some images, not all
            assert int(row[f"accepted_{modality}"]) == len(drawn)
            pools[modality].update(torch.from_numpy(drawn), torch.zeros(len(drawn), dtype=torch.long), 0.1)
        assert float(row["conf_mean"]) <= float(row["conf_p90"]) + 1e-9 and 0 < float(row["conf_mean"]) <= 1
        assert float(row["dce_group_size"]) >= 1
    pool_size = sum(len(pool) for pool in pools.values())
    assert results["pseudo_label"]["pool_size"] == pool_size
    assert results["pseudo_label"]["unlabeled"] == sum(num_unlabeled.values())
    assert results["pseudo_label"]["share"] == pytest.approx(100 * pool_size / sum(num_unlabeled.values()))
    assert results["split"]["rgb_unlabeled"] == num_unlabeled["rgb"]
    ckpt = load_ckpt(sysu_run, "e2e")
    assert ckpt["epoch"] == 2
    # the precision is the share of pool labels equal to the hidden ground truth of the arrays
    data = load_train_data(tiny_sysu_preprocessed, "sysu")
    correct = sum(int((torch.from_numpy(data[f"{m}_label"])[ckpt["pools"][m]["indices"]] ==
                       ckpt["pools"][m]["labels"]).sum()) for m in ("rgb", "ir"))
    assert results["pseudo_label"]["precision"] == pytest.approx(100 * correct / pool_size)
    log_text = (run_dir / "log.txt").read_text()
    assert "dataset statistics" in log_text and "Rank-1" in log_text
    for picture in ("tsne.png", "ranked.png", "curves.png"):  # drawn at the end of every run (visualize.py)
        assert Image.open(run_dir / picture).size[0] > 0
    assert (sysu_run / "save" / "e2e_best.pth").exists()


def test_checkpoint_evaluator_reproduces_the_final_figures(sysu_run, tiny_sysu_preprocessed):
    # --test-only needs the checkpoint and the test images only: not the training arrays
    test_only_root = str(sysu_run / "test_images_only")
    shutil.copytree(tiny_sysu_preprocessed, test_only_root,
                    ignore=shutil.ignore_patterns("train_*_resized_*.npy"))
    run_train(["--test-only", "--resume", str(sysu_run / "save" / "e2e_last.pth"), "--data_path", test_only_root,
               "--test_trials", "2"], cwd=sysu_run)
    tested = results_of(sysu_run, "e2e_test")
    assert (sysu_run / "log" / "e2e_test" / "ranked.png").exists()
    final = results_of(sysu_run, "e2e")["last"]
    assert tested["last"]["epoch"] == 2 and tested["best"] is None
    for key in ("rank1", "rank5", "mAP", "mINP"):  # the last checkpoint is the model of the final figures
        assert tested["last"][key] == pytest.approx(final[key], abs=1e-6)
    assert tested["pseudo_label"]["pool_size"] == results_of(sysu_run, "e2e")["pseudo_label"]["pool_size"]
    # the field's other evaluation options reach the evaluator and are recorded
    run_train(["--test-only", "--resume", str(sysu_run / "save" / "e2e_last.pth"), "--data_path", test_only_root,
               "--test_trials", "2", "--gallery_mode", "multi", "--rerank", "--k1", "5", "--k2", "2",
               "--run_name", "e2e_multi_rerank", "--no_pictures"], cwd=sysu_run)
    other = results_of(sysu_run, "e2e_multi_rerank_test")
    assert other["args"]["gallery_mode"] == "multi" and other["args"]["rerank"] and other["args"]["k1"] == 5
    assert other["last"]["mAP"] != pytest.approx(tested["last"]["mAP"], abs=1e-6)  # another protocol, another figure


def test_resumed_run_equals_uninterrupted(sysu_run, tiny_sysu_preprocessed, tmp_path):
    common = ["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST]
    run_train([*common, "--epochs", "2", *outputs(tmp_path, "cut")], cwd=tmp_path)
    run_train(["--resume", str(tmp_path / "save" / "cut_last.pth"), "--epochs", "3"], cwd=tmp_path)
    full, resumed = load_ckpt(sysu_run, "e2e"), load_ckpt(tmp_path, "cut")
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


def test_sysu_train_ids_and_the_gt_sampler_need_no_second_preprocessing(tiny_sysu_preprocessed, tmp_path):
    run_train(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--epochs", "2",
               *with_flag(FAST, "--batch-size", "5"), "--sysu_ids", "train", "--unlabeled_sampler", "gt", "--no_pictures", *outputs(tmp_path, "train_ids")],
              cwd=tmp_path)
    ckpt = load_ckpt(tmp_path, "train_ids")
    num_train_ids = len(open(os.path.join(tiny_sysu_preprocessed, "exp", "train_id.txt")).read().split(","))
    assert ckpt["model"]["classifier_weight"].shape[1] == num_train_ids == 5  # the val identity left out
    log_text = (tmp_path / "log" / "train_ids" / "log.txt").read_text()
    assert "hidden ground truth" in log_text  # the leak is announced
    results = results_of(tmp_path, "train_ids")
    assert results["args"]["unlabeled_sampler"] == "gt" and results["args"]["sysu_ids"] == "train"


def test_no_pseudo_baseline_runs_without_pseudo_labels(tiny_sysu_preprocessed, tmp_path):
    run_train(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--epochs", "2", "--no_pseudo", *FAST,
               *outputs(tmp_path, "base")], cwd=tmp_path)
    results = results_of(tmp_path, "base")
    assert results["pseudo_label"]["pool_size"] == 0 and results["pseudo_label"]["precision"] is None
    rows = read_csv(tmp_path / "log" / "base" / "metrics.csv")
    assert "loss_dce" not in rows[0] and "accepted_rgb" not in rows[0]


def test_regdb_end_to_end_reports_both_directions(tiny_regdb_preprocessed, tmp_path):
    fast = with_flag(FAST, "--batch-size", "4")  # 4 training identities per RegDB trial here
    run_train(["--dataset", "regdb", "--trial", "2", "--data_path", tiny_regdb_preprocessed, "--epochs", "2", *fast,
               *outputs(tmp_path, "regdb")], cwd=tmp_path)
    results = results_of(tmp_path, "regdb")
    assert results["dataset"] == "regdb" and results["mode"] == "trial2"
    for figures in (results["last"], results["best"]):
        assert set(figures["thermal_to_visible"]) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}
        assert figures["trials"] == [dict({k: figures[k] for k in figures
                                           if k not in ("trials", "thermal_to_visible", "epoch")}, trial=2)]
    split = json.loads((tmp_path / "log" / "regdb" / "split.json").read_text())
    assert len(split["rgb_labeled"]) == 4 * 2 and len(split["ir_labeled"]) == 4 * 2  # the first 2 of 10 per id
    run_train(["--test-only", "--resume", str(tmp_path / "save" / "regdb_last.pth")], cwd=tmp_path)
    tested = results_of(tmp_path, "regdb_test")
    assert tested["mode"] == "trial2"
    for key in ("rank1", "mAP"):
        assert tested["last"][key] == pytest.approx(results["last"][key], abs=1e-6)
        assert tested["last"]["thermal_to_visible"][key] == pytest.approx(
            results["last"]["thermal_to_visible"][key], abs=1e-6)


# ---------------------------------------------------------------------------------------------- bad input

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
    run_train(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, *FAST, "--epochs", "1", "--no_pictures",
               *outputs(tmp_path, "nan")], cwd=tmp_path)
    good = load_ckpt(tmp_path, "nan")
    proc = run_train(["--resume", str(tmp_path / "save" / "nan_last.pth"), "--epochs", "3", "--lr", "1e30"],
                     cwd=tmp_path, check=False)
    assert_one_line_error(proc, "non-finite loss at epoch 1", "the last good checkpoint is", "nan_last.pth")
    assert load_ckpt(tmp_path, "nan")["epoch"] == good["epoch"] == 0
    # a fork has no checkpoint of its own yet: the message names none (not another run's file)
    proc = run_train(["--resume", str(tmp_path / "save" / "nan_last.pth"), "--epochs", "3", "--lr", "1e30",
                      "--run_name", "nan_fork"], cwd=tmp_path, check=False)
    assert_one_line_error(proc, "non-finite loss at epoch 1")
    assert "last good checkpoint" not in proc.stderr


def test_the_round_scorings_step_from_this_repo_s_round_to_the_released_one():
    args = train_mine.parse_args(["--pad", "3"])
    hidden = np.repeat(np.arange(10), 8)  # 80 unlabeled images of 10 identities
    other_hidden = np.random.default_rng(5).permutation(hidden)
    positions, augment = train_mine.round_draws("all", hidden, 80, args, epoch=7, modal=0)
    assert np.array_equal(positions, np.arange(80)) and augment is None  # every image once, test transform
    positions, (pad, offsets, flips) = train_mine.round_draws("augmented", hidden, 80, args, epoch=7, modal=0)
    assert np.array_equal(positions, np.arange(80)) and pad == 3 and len(offsets) == len(flips) == 80
    assert offsets.min() >= 0 and offsets.max() <= 6 and 0 < flips.sum() < 80  # pad 3: crops at 0..6, some flipped
    released, _ = train_mine.round_draws("released", hidden, 80, args, epoch=7, modal=0)
    sampled, _ = train_mine.round_draws("sampled", hidden, 80, args, epoch=7, modal=0)
    assert len(released) == len(sampled) == (80 // 16 + 1) * 16  # the released round's number of draws
    # the released draws come in runs of 8 images of one hidden identity (the leak); the sampled ones read no label
    assert (hidden[released].reshape(-1, 8) == hidden[released].reshape(-1, 8)[:, :1]).all()
    assert np.array_equal(sampled, train_mine.round_draws("sampled", other_hidden, 80, args, epoch=7, modal=0)[0])
    assert not (hidden[sampled].reshape(-1, 8) == hidden[sampled].reshape(-1, 8)[:, :1]).all()
    assert 0.45 < len(np.unique(sampled)) / 80 < 0.85  # about 1 - 1/e of the images, some twice
