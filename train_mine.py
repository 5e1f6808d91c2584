"""Train and evaluate CPL: semi-supervised visible-infrared person re-ID with cross-modality pseudo labels.

    python train_mine.py --dataset demo                        # synthetic data, CPU, a few minutes
    python train_mine.py --dataset sysu --gpu 0                # SYSU-MM01, all-search (--mode indoor)
    python train_mine.py --dataset regdb --trial 1 --gpu 0     # RegDB, one of the 10 trials
    python train_mine.py --resume save_model/sysu_all_resnet50_seed0_last.pth                 # continue a run
    python train_mine.py --test-only --resume save_model/sysu_all_resnet50_seed0_last.pth     # evaluate

The algorithm (design section 6): warm-up epochs on the labeled images; from --pl_start, batches of
labeled + pseudo-labeled identities plus unlabeled images trained with the dynamic center-based CE;
after each epoch in [--pl_start, --pl_end] a pseudo-label round; evaluation every --eval_every epochs.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import data_manager
from data_manager import protocol_of
from data_loader import (TrainBatches, group_classes, make_train_loader, plan_group_batches, random_augment_params,
                         train_augment)
from evaluate import build_test_set, evaluate, extract_features
from loss import dynamic_center_ce, hetero_center_triplet
from model import INFRARED, VISIBLE, ModelOutput, embed_net, embed_net_from_checkpoint
from demo_data import DEMO_SIZES, RENDERERS, demo_spec, prepare_demo_dataset
from pre_process_sysu import array_sizes, arrays_match, preprocess_sysu
from pseudo_label import ClassCenters, PseudoLabelPool, assign_pseudo_labels
from runs import RUN_ONLY_ARGS, RunFiles, claim_run, write_json, write_metrics_csv
from utils import (ArgumentParser, Stopped, UserError, broadcast_buffers, device_note, gather_rows, gather_uneven_rows,
                   init_distributed, load_checkpoint, load_state_strict, number, number_list, on_main_process, rank,
                   rng_states, run_cli, run_record, save_checkpoint, set_rng_states, set_seed, setup_logger,
                   world_size)
from visualize import write_pictures

MODALITIES = ("rgb", "ir")  # modality names, indexed by the modal numbers VISIBLE = 0 and INFRARED = 1
DEFAULT_DATA_PATHS = {"sysu": "data/SYSU-MM01/", "regdb": "data/RegDB/", "demo": "data/demo/{renderer}/seed{seed}/"}

# The demo trains resnet18 from random init on the CPU in under 5 minutes; each value is a flag, measured in the
# README. pad 2: the paper's 10 px at 288x144, scaled to 64x32 (10 px of a 32-px-wide image is a +-31% shift,
# and the classifier then barely learns). tri_start = pl_start 8 and the lr step at 8: from random init the
# triplet terms and the DCE collapse the features unless the identity classifier has learned first and the lr is
# lower (0.001, the paper's backbone lr) when they start. A fixed epoch length gives CPL and --no_pseudo the
# same number of steps.
DEMO_DEFAULTS = dict(arch="resnet18", pretrained="none", img_h=64, img_w=32, pad=2, epochs=20, warmup_epochs=2,
                     lr_steps=[8, 16], backbone_lr_mult=1.0, iters_per_epoch=20, tri_start=8, center_start=6,
                     pl_start=8, pl_end=16, eval_start=8, eval_every=4, workers=0, test_batch_size=128)

# Arguments a resumed run cannot change: they define its data, its labeled/unlabeled split or its network.
FIXED_ON_RESUME = ("dataset", "demo_renderer", "trial", "sysu_ids", "label_ratio", "split_file", "seed", "img_h",
                   "img_w", "arch", "num_parts", "part_dim")
# What --test-only may set: the test protocol and the outputs. The network, its input size and the data it was trained
# on come from the checkpoint (a typed value must equal the checkpoint's); any other flag is refused, not ignored.
TEST_ONLY_FLAGS = ("data_path", "mode", "gallery_mode", "rerank", "k1", "k2", "lambda_value", "test_trials",
                   "test_batch_size", "gpu", "workers", "log_path", "model_path", "run_name", "no_pictures", "seed",
                   "resume", "test_only", "log_every", "tf32")
TEST_ONLY_FIXED = ("dataset", "demo_renderer", "trial", "img_h", "img_w", "arch", "num_parts", "part_dim")


def get_args_parser():
    parser = ArgumentParser(description="CPL: semi-supervised visible-infrared person re-ID (train and evaluate)")
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="sysu", choices=["sysu", "regdb", "demo"])
    group.add_argument("--demo_renderer", default="stripes", choices=sorted(RENDERERS),
                       help="the demo's synthetic people (demo_data.py): stripes (what the recipe was tuned on), "
                            "temperature (rounded, textured, occluded; infrared unrelated to visible colour) or "
                            "luminance (the same people, infrared = visible grey level)")
    group.add_argument("--data_path", default=None,
                       help="dataset root; default data/SYSU-MM01/, data/RegDB/, data/demo/<renderer>/seed<seed>/ "
                            "(the demo builds its data there; any other SYSU-layout root is used as it is)")
    group.add_argument("--mode", default="all", choices=["all", "indoor"], help="SYSU search mode")
    group.add_argument("--sysu_ids", default="trainval", choices=["trainval", "train"],
                       help="SYSU training identities: train+val (395, the field's standard) or exp/train_id.txt "
                            "only (296, what the released CPL code trains)")
    group.add_argument("--trial", default=1, type=number(int, 1, 10), help="RegDB split 1..10")
    group.add_argument("--label_ratio", default=0.2, type=number(float, 0, 1, low_open=True),
                       help="labeled share per identity and modality (paper: 0.2)")
    group.add_argument("--split_file", default="",
                       help="train on this labeled/unlabeled split instead of drawing one: a run's split.json, or a "
                            "folder holding the released code's lists train_{visible,thermal}[_TRIAL]_{l,ul}.txt "
                            "(to compare with it on the very same labeled images)")
    group.add_argument("--img_h", default=288, type=number(int, 1), help="input height (the arrays' size)")
    group.add_argument("--img_w", default=144, type=number(int, 1), help="input width (the arrays' size)")
    group.add_argument("--pad", default=10, type=number(int, 0), help="zero padding before the random crop")
    group.add_argument("--workers", default=4, type=number(int, 0), help="data loading processes (0: main process)")

    group = parser.add_argument_group("model")
    group.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    group.add_argument("--pretrained", default="imagenet", help="imagenet | none | path to a state dict")
    group.add_argument("--num_parts", default=6, type=number(int, 1), help="horizontal stripes of the part branch")
    group.add_argument("--part_dim", default=256, type=number(int, 1), help="size of each part feature")

    group = parser.add_argument_group("optimisation")
    group.add_argument("--lr", default=0.01, type=number(float, 0), help="lr of the part convs and classifiers")
    group.add_argument("--backbone_lr_mult", default=0.1, type=number(float, 0),
                       help="backbone lr = lr x this (paper 0.1 with ImageNet weights; ~1 from random init)")
    group.add_argument("--weight_decay", default=5e-4, type=number(float, 0))
    group.add_argument("--momentum", default=0.9, type=number(float, 0, 1), help="SGD (Nesterov) momentum")
    group.add_argument("--epochs", default=61, type=number(int, 1))
    group.add_argument("--warmup_epochs", default=10, type=number(int, 1), help="linear lr warm-up: lr*(e+1)/warmup")
    group.add_argument("--lr_steps", default="30,40", type=number_list(int), help="epochs where the lr factor changes")
    group.add_argument("--lr_factors", default="0.1,0.05", type=number_list(float), help="lr factor from each step on")
    group.add_argument("--batch-size", "--batch_size", dest="batch_size", default=8, type=number(int, 1),
                       help="P: identities per batch before --pl_start (and with --no_pseudo)")
    group.add_argument("--pl_batch_size", default=4, type=number(int, 1), help="P from --pl_start on")
    group.add_argument("--num_pos", default=4, type=number(int, 1), help="K: images per identity per modality")
    group.add_argument("--iters_per_epoch", default=0, type=number(int, 0),
                       help="batches per epoch; 0: the released loop's, which zips the labeled+pseudo sampler "
                            "(int(larger pool / (P*K)) + 1 batches) with the unlabeled one (int(larger unlabeled set / "
                            "(unlabeled_ids*unlabeled_pos)) + 1) and stops with the shorter")
    group.add_argument("--sync_bn", default=None, action=argparse.BooleanOptionalAction,
                       help="under torchrun: SyncBatchNorm, batch statistics over the whole batch (CUDA only; "
                            "default on with several GPUs); off, each process normalises with its share's")
    group.add_argument("--tf32", default=True, action=argparse.BooleanOptionalAction,
                       help="TF32 convolutions on Ampere and newer GPUs, in training, rounds and evaluation (cuDNN's "
                            "default, as the released code); --no-tf32: full fp32 convolutions")
    group.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                       help="autocast of the training step on CUDA (none = fp32, as the released code; bf16 is the "
                            "fast path); pseudo-label rounds and evaluation always run in fp32")

    group = parser.add_argument_group("CPL method (paper values; each is one ablation flag)")
    group.add_argument("--margin", default=0.3, type=number(float, 0), help="hetero-center triplet margin")
    group.add_argument("--tri_start", default=0, type=number(int, 0),
                       help="first epoch with the triplet terms (paper: 0; from random init a later start lets the "
                            "classifier learn before the triplets shrink the features)")
    group.add_argument("--w_part_tri", default=2.0, type=number(float, 0), help="weight of the part triplets")
    group.add_argument("--w_dce", default=2.0, type=number(float, 0),
                       help="weight of the dynamic center-based CE (0: off, and no unlabeled images in batches)")
    group.add_argument("--ce_weight", default=0.1, type=number(float, 0), help="weight of CE inside the DCE")
    group.add_argument("--rce_weight", default=1.0, type=number(float, 0), help="weight of reverse CE inside the DCE")
    group.add_argument("--center_start", default=4, type=number(int, 0), help="first epoch that updates class centers")
    group.add_argument("--center_momentum", default=0.2, type=number(float, 0, 1), help="EMA weight of the old center")
    group.add_argument("--pl_start", default=6, type=number(int, 0), help="first epoch of semi-supervised batches + DCE")
    group.add_argument("--pl_end", default=29, type=number(int, 0), help="last epoch followed by a pseudo-label round")
    group.add_argument("--conf_thresh", default=0.8, type=number(float, 0, 1), help="accept if confidence > this")
    group.add_argument("--dist_thresh", default=0.6, type=number(float, 0, 1),
                       help="accept if the mean part Jaccard distance to the class center < this")
    group.add_argument("--forget", default=0.1, type=number(float, 0, 1), help="oldest share of the pool dropped per round")
    group.add_argument("--pl_scoring", default="sampled", choices=list(ROUND_SCORINGS),
                       help="what a round scores: sampled (default): as many uniform draws with replacement as the "
                            "released round makes (about 63%% of the images), under the training augmentation, as the "
                            "released round without its grouping by ground truth; all: every unlabeled image once, "
                            "test transform (the design's round); augmented: every image once, augmented; released: "
                            "the released code's draws, grouped by the hidden ground truth (2 identities x 8 images per "
                            "batch), augmented (a label leak, kept only to measure it)")
    group.add_argument("--pseudo_id_loss", default=True, action=argparse.BooleanOptionalAction,
                       help="pseudo-labelled images in the identity loss (paper: on); --no-pseudo_id_loss keeps them "
                            "in the triplets and class centers only")
    group.add_argument("--unlabeled_sampler", default="predicted", choices=["predicted", "random", "gt"],
                       help="unlabeled images of a batch: groups sharing the class predicted at the latest round "
                            "(random before the first); random: uniform; gt: grouped by the hidden ground truth, "
                            "the released code's label leak, only to measure it")
    group.add_argument("--unlabeled_ids", default=4, type=number(int, 0),
                       help="groups (classes) of unlabeled images per modality per batch (0: no unlabeled images)")
    group.add_argument("--unlabeled_pos", default=4, type=number(int, 1), help="unlabeled images per group")
    group.add_argument("--no_pseudo", action="store_true", help="labeled-only baseline: no pseudo labels, no DCE")

    group = parser.add_argument_group("evaluation and outputs")
    group.add_argument("--eval_start", default=10, type=number(int, 0))
    group.add_argument("--eval_every", default=2, type=number(int, 1))
    group.add_argument("--test_trials", default=10, type=number(int, 1), help="SYSU gallery draws of the final evaluation")
    group.add_argument("--test_batch_size", default=64, type=number(int, 1))
    group.add_argument("--gallery_mode", default="single", choices=["single", "multi"],
                       help="SYSU gallery: one image (single, the paper's) or 10 (multi) per identity and camera")
    group.add_argument("--rerank", action="store_true",
                       help="rank by k-reciprocal re-ranking (Zhong et al., CVPR 2017); the paper's figures do not")
    group.add_argument("--k1", default=20, type=number(int, 1), help="re-ranking: k-reciprocal neighbourhood")
    group.add_argument("--k2", default=6, type=number(int, 1), help="re-ranking: local query expansion (1: off)")
    group.add_argument("--lambda_value", default=0.3, type=number(float, 0, 1),
                       help="re-ranking: weight of the original distance")
    group.add_argument("--test-only", "--test_only", dest="test_only", action="store_true",
                       help="evaluate the checkpoint given by --resume and exit")
    group.add_argument("--resume", default="", help="checkpoint to continue from (or to evaluate)")
    group.add_argument("--run_name", default="", help="default: dataset_mode|trial_arch_seed")
    group.add_argument("--model_path", default="save_model/")
    group.add_argument("--log_path", default="log/")
    group.add_argument("--gpu", default="0", help="CUDA index, or 'cpu'")
    group.add_argument("--seed", default=0, type=number(int, 0))
    group.add_argument("--log_every", default=50, type=number(int, 1), help="iterations between progress lines")
    group.add_argument("--no_pictures", action="store_true",
                       help="skip tsne.png, ranked.png and curves.png at the end of a run (visualize.py)")
    return parser


def typed_flags(argv):
    """The flags present in argv, by destination name: a fresh parser with every default suppressed."""
    parser = get_args_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def default_args(dataset):
    """The defaults of a dataset: the paper's, with the demo's on top for the demo."""
    args = vars(get_args_parser().parse_args([]))
    return {**args, **DEMO_DEFAULTS} if dataset == "demo" else args


def parse_args(argv=None):
    """The run's arguments. Precedence, lowest first: the paper's defaults, the demo's defaults (--dataset demo),
    the arguments a resumed checkpoint was started with, the flags typed on this command line.

    A new run without --run_name gets its name when it starts (a free one, see runs.claim_run_name); a resumed run
    keeps its name, or forks under a typed --run_name."""
    argv = sys.argv[1:] if argv is None else list(argv)
    typed = typed_flags(argv)
    saved = {}
    if typed.get("resume"):
        saved = load_checkpoint(typed["resume"], required_keys=("args",))["args"]
        known = default_args("sysu")  # a checkpoint's arguments this version still has
        saved = {key: value for key, value in saved.items() if key in known}
        if typed.get("test_only"):
            check_test_only_flags(typed, saved)
        else:
            check_resume_keeps_the_run(typed, saved)
    args = argparse.Namespace(**{**default_args(typed.get("dataset", saved.get("dataset"))), **saved, **typed})
    args.data_path = args.data_path or DEFAULT_DATA_PATHS[args.dataset].format(seed=args.seed,
                                                                                renderer=args.demo_renderer)
    if not saved:  # a new run: named when it starts
        args.run_name = typed.get("run_name", "")
    validate_args(args)
    return args


def check_test_only_flags(typed, saved):
    """--test-only evaluates the checkpoint's network on the data it was trained for: the flags that would change
    either must equal the checkpoint's; a training flag would be silently ignored, so it is refused."""
    for key in TEST_ONLY_FIXED:
        if key in typed and typed[key] != saved.get(key, typed[key]):
            raise UserError(f"--{key} {typed[key]}: --test-only evaluates the checkpoint {typed['resume']}, whose "
                            f"{key} is {saved[key]}")
    ignored = sorted(key for key in typed if key not in TEST_ONLY_FLAGS + TEST_ONLY_FIXED)
    if ignored:
        raise UserError(f"{', '.join('--' + key for key in ignored)}: not used by --test-only (it sets the test "
                        f"protocol and outputs only)")


def check_resume_keeps_the_run(typed, saved):
    """A resumed run keeps what defines it, and continues in its own files: --resume must name the run's own
    last checkpoint, or a typed --run_name forks a new run from it (a copy, a _best.pth, a moved file)."""
    for key in FIXED_ON_RESUME:
        if key in typed and typed[key] != saved[key]:
            raise UserError(f"--{key} {typed[key]} differs from the resumed run's {saved[key]}: a run keeps its "
                            f"data, split and network (start a new run instead)")
    if typed.get("run_name", saved["run_name"]) != saved["run_name"]:
        return  # a fork: a new run, named and placed as typed
    own_checkpoint = RunFiles(saved["log_path"], saved["model_path"], saved["run_name"]).checkpoint("last")
    if os.path.abspath(typed["resume"]) != os.path.abspath(own_checkpoint):
        raise UserError(f"{typed['resume']} is not the last checkpoint of run {saved['run_name']} ({own_checkpoint}):"
                        f" to continue from it as a new run, add --run_name NEW_NAME")
    for key in ("model_path", "log_path"):
        if key in typed and os.path.abspath(typed[key]) != os.path.abspath(saved[key]):
            raise UserError(f"--{key} {typed[key]}: a resumed run stays in its folder {saved[key]} "
                            f"(or forks under --run_name NEW_NAME)")


def default_run_name(args):
    """dataset_mode|trialN_arch_seedN[_nopseudo], plus the method flags that differ from the defaults (two at
    most, spelled out; more as a short hash), so that an ablation gets a name of its own."""
    where = args.mode if args.dataset != "regdb" else f"trial{args.trial}"
    name = f"{args.dataset}_{where}_{args.arch}_seed{args.seed}" + ("_nopseudo" if args.no_pseudo else "")
    defaults = default_args(args.dataset)
    named = set(RUN_ONLY_ARGS) | {"dataset", "mode", "arch", "no_pseudo", "split_file"}
    changed = {key: value for key, value in sorted(vars(args).items())
               if key not in named and key in defaults and value != defaults[key]}
    if args.split_file:  # a path: named by a digest, as it may hold any character
        name += "_split-" + hashlib.sha1(os.path.abspath(args.split_file).encode()).hexdigest()[:6]
    if len(changed) > 2:
        digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:6]
        return f"{name}_cfg-{digest}"
    for key, value in changed.items():
        value = "-".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) \
            else str(value)
        name += f"_{key}-{value}"
    return name


def validate_args(args):
    """Checks that involve several flags (single flags are checked by their argparse type)."""
    if len(args.lr_steps) != len(args.lr_factors):
        raise UserError(f"--lr_steps {args.lr_steps} and --lr_factors {args.lr_factors} differ in length")
    if args.test_only and not args.resume:
        raise UserError("--test-only needs --resume CHECKPOINT")
    if args.sysu_ids == "train" and args.dataset == "regdb":
        raise UserError("--sysu_ids train selects SYSU-MM01 identities; RegDB's come from its trial lists")
    if args.gallery_mode == "multi" and args.dataset == "regdb":
        raise UserError("--gallery_mode multi is a SYSU-MM01 protocol; RegDB has one gallery per trial")
    if args.pl_end < args.pl_start and not args.no_pseudo:
        raise UserError(f"--pl_end {args.pl_end} < --pl_start {args.pl_start}: no pseudo-label round would run "
                        f"(use --no_pseudo for the labeled-only baseline)")
    if args.sync_bn and (str(args.gpu).lower() == "cpu" or not torch.cuda.is_available()):
        raise UserError("--sync_bn needs CUDA (SyncBatchNorm); on the CPU each process normalises with its share")
    if args.split_file and not os.path.exists(args.split_file):
        raise UserError(f"--split_file {args.split_file}: no such file or folder")
    check_divisible_batches(args, launched_processes())


def launched_processes():
    """The number of processes torchrun started (WORLD_SIZE), known before the process group is joined: so that a
    refused flag stops every process before any of them creates a file."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# ----------------------------------------------------------------------------------------------------------
# schedule: pure functions of the epoch


def lr_factor(epoch, warmup_epochs, lr_steps, lr_factors):
    """Linear warm-up (epoch+1)/warmup, then 1, then each lr_factors[i] from epoch lr_steps[i] on."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    factor = 1.0
    for step, step_factor in zip(lr_steps, lr_factors):
        if epoch >= step:
            factor = step_factor
    return factor


def is_semi_supervised(epoch, args):
    return not args.no_pseudo and epoch >= args.pl_start


def is_pseudo_label_epoch(epoch, args):
    return is_semi_supervised(epoch, args) and epoch <= args.pl_end


def is_eval_epoch(epoch, args):
    return epoch == args.epochs - 1 or (epoch >= args.eval_start and (epoch - args.eval_start) % args.eval_every == 0)


def batches_per_epoch(pool_sizes, num_ids, num_pos, unlabeled_sizes=(0, 0), unlabeled_per_batch=0):
    """The released loop's epoch length. It zips two loaders and stops with the shorter: the labeled one, of
    int(N / (P x K)) + 1 batches with N the larger labeled + pseudo-labeled pool of the two modalities (one batch more
    than fits when N divides evenly), and the unlabeled one, of int(N_u / U) + 1 batches with N_u the larger
    unlabeled set and U its images per modality and batch (4 x 4), zipped in every epoch, the warm-up included.
    Without unlabeled images (none in the split, or U = 0) the labeled loader alone sets the length."""
    labeled = max(pool_sizes) // (num_ids * num_pos) + 1
    if unlabeled_per_batch == 0 or max(unlabeled_sizes) == 0:
        return labeled
    return min(labeled, max(unlabeled_sizes) // unlabeled_per_batch + 1)


def epoch_seed(seed, epoch, stream):
    """An int seed for one random stream of one epoch, distinct for every (seed, epoch, stream)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------------
# one epoch of training


def make_optimizer(model, args):
    """SGD with the paper's two lr groups; each group's lr is args.lr x its lr_mult x the epoch's factor."""
    return torch.optim.SGD(
        [{"params": model.backbone_parameters(), "lr_mult": args.backbone_lr_mult},
         {"params": model.head_parameters(), "lr_mult": 1.0}],
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=True)


def set_lr(optimizer, base_lr, factor):
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group["lr_mult"] * factor


def labeled_and_unlabeled_rows(num_rgb_labeled, num_rgb, num_ir_labeled, num_ir, device="cpu"):
    """Where the labeled and the unlabeled images sit among the model's output rows.

    The model returns [visible rows; infrared rows], and each modality's batch holds its labeled images first,
    then its unlabeled ones. Returns (labeled_rows, unlabeled_rows): index tensors selecting
    [labeled visible; labeled infrared] (the order of the batch's labels) and [unlabeled visible; unlabeled infrared].
    """
    rgb_rows, ir_rows = torch.arange(num_rgb), num_rgb + torch.arange(num_ir)
    labeled = torch.cat([rgb_rows[:num_rgb_labeled], ir_rows[:num_ir_labeled]])
    unlabeled = torch.cat([rgb_rows[num_rgb_labeled:], ir_rows[num_ir_labeled:]])
    return labeled.to(device), unlabeled.to(device)


def loss_terms(labeled, labels, modals, unlabeled_feat, global_centers, args, use_triplet=True, id_rows=None):
    """The CPL objective of one batch (design section 5).

    Args:
        labeled: ModelOutput of the labeled and pseudo-labeled rows; labels, modals: (B,) their classes and modals.
        unlabeled_feat: (U, num_parts * part_dim) global features of the unlabeled rows, or None: no DCE term.
        global_centers: (C, num_parts * part_dim) class centers the DCE compares with.
        use_triplet: False before --tri_start: no triplet term.
        id_rows: (B,) bool, the rows the identity loss sees (--no-pseudo_id_loss: the labeled ones); None: all.
    Returns:
        {"loss": the weighted total, "loss_id"[, "loss_tri"][, "loss_dce", "dce_group_size"]}: scalar tensors;
        dce_group_size, the mean in-batch count n_i of the unlabeled rows' DCE classes, is a statistic, not a loss.
    """
    feat, part_feats, part_logits = (t.float() for t in labeled)
    num_parts = part_feats.shape[1]
    id_logits, id_labels = (part_logits, labels) if id_rows is None else (part_logits[id_rows], labels[id_rows])
    # the sum over parts of each part's CE = the mean over the B*P (row, part) pairs times P (0 without rows)
    loss_id = F.cross_entropy(id_logits.flatten(0, 1), id_labels.repeat_interleave(num_parts), reduction="sum")
    terms = {"loss_id": loss_id / max(len(id_labels), 1)}
    weights = {"loss_id": 1.0}
    if use_triplet:
        loss_tri = hetero_center_triplet(feat, labels, modals, args.margin)
        if args.w_part_tri > 0:
            loss_tri = loss_tri + args.w_part_tri * sum(
                hetero_center_triplet(part_feats[:, p], labels, modals, args.margin) for p in range(num_parts))
        terms["loss_tri"], weights["loss_tri"] = loss_tri, 1.0
    statistics = {}
    if unlabeled_feat is not None:
        terms["loss_dce"], statistics["dce_group_size"] = dynamic_center_ce(
            unlabeled_feat.float(), global_centers, args.ce_weight, args.rce_weight, return_group_size=True)
        weights["loss_dce"] = args.w_dce
    return {"loss": sum(weights[name] * value for name, value in terms.items()), **terms, **statistics}


def share_rows(num_labeled, num_unlabeled):
    """The rows of this process's share among a modality's [labeled; unlabeled] batch rows (all of them in one
    process); each process holds a contiguous share of each part (data_loader.TrainBatches)."""
    process, num_processes = rank(), world_size()
    labeled, unlabeled = num_labeled // num_processes, num_unlabeled // num_processes
    return torch.cat([process * labeled + torch.arange(labeled),
                      num_labeled + process * unlabeled + torch.arange(unlabeled)])


def whole_batch(out, block_sizes):
    """The model's outputs for the whole batch, rows in one process's order, from every process's share (whose
    rows are blocks of block_sizes: visible labeled, visible unlabeled, infrared labeled, infrared unlabeled).

    Every process then computes the same loss L on the whole batch. The gather passes gradients back summed over
    the processes, so the rows of process p receive world_size x dL/d(rows); DistributedDataParallel averages the
    parameter gradients over the world_size processes, which leaves exactly the one-process gradient dL/dtheta.
    """
    if world_size() == 1:
        return out
    bounds = np.cumsum((0, *block_sizes))
    return ModelOutput(*(torch.cat([gathered[:, start:end].flatten(0, 1) for start, end in zip(bounds[:-1], bounds[1:])])
                         for gathered in map(gather_rows, out)))


def train_one_epoch(model, loader, optimizer, centers, epoch, args, device, amp_dtype, scaler, logger, use_dce):
    """Train over one epoch of batches; returns the epoch's mean of each loss term and the data-wait share.
    use_dce: the batches carry unlabeled images, and the DCE term is trained on them. Under torchrun each
    process holds a share of every batch and the losses see the whole batch (whole_batch)."""
    model.train()
    update_centers = epoch >= args.center_start
    use_triplet = epoch >= args.tri_start
    augment_rng = torch.Generator(device=device).manual_seed(epoch_seed(args.seed, epoch, stream=1))
    num_processes = world_size()
    step_losses = []  # per-step loss vectors, kept on the device: no host sync per step
    data_wait, epoch_start = 0.0, time.perf_counter()
    tic = epoch_start
    for it, batch in enumerate(loader):
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        data_wait += time.perf_counter() - tic
        images, shares = {}, {}
        for modality in MODALITIES:  # this process's [labeled; unlabeled] images of each modality
            unlabeled = batch[f"{modality}_unl"] if use_dce else batch[modality][:0]
            images[modality] = torch.cat([batch[modality], unlabeled])
            shares[modality] = (len(batch[modality]), len(unlabeled))
        whole = {modality: (num_processes * labeled, num_processes * unlabeled)
                 for modality, (labeled, unlabeled) in shares.items()}
        x = {modality: train_augment(images[modality], args.pad, augment_rng, share_rows(*whole[modality]),
                                     sum(whole[modality])) for modality in MODALITIES}  # the whole batch's draws
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x_rgb=x["rgb"], x_ir=x["ir"])
        out = whole_batch(out, (*shares["rgb"], *shares["ir"]))
        labeled_rows, unlabeled_rows = labeled_and_unlabeled_rows(whole["rgb"][0], sum(whole["rgb"]), whole["ir"][0],
                                                                  sum(whole["ir"]), device)
        labeled = ModelOutput(*(t[labeled_rows] for t in out))
        labels = torch.cat([batch["rgb_label"], batch["ir_label"]])  # the whole batch's
        modals = torch.cat([torch.full((whole["rgb"][0],), VISIBLE), torch.full((whole["ir"][0],), INFRARED)])
        modals = modals.to(device)
        if update_centers:  # before the loss: the batch's DCE compares with the centers it updated (released order)
            centers.update(labeled.feat.float(), labeled.part_feats.float(), labels, modals, args.center_momentum)
        id_rows = None if args.pseudo_id_loss else ~torch.cat([batch["rgb_pseudo"], batch["ir_pseudo"]])
        terms = loss_terms(labeled, labels, modals, out.feat[unlabeled_rows] if use_dce else None,
                           centers.global_centers, args, use_triplet, id_rows)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        step_losses.append(torch.stack([value.detach().float() for value in terms.values()]))
        if (it + 1) % args.log_every == 0 or it + 1 == len(loader):
            losses = torch.stack(step_losses)
            check_finite(losses, epoch, args)
            logger.info(f"epoch {epoch} [{it + 1}/{len(loader)}] " +
                        " ".join(f"{name} {value:.4f}" for name, value in zip(terms, losses.mean(0).tolist())))
        tic = time.perf_counter()
    stats = dict(zip(terms, torch.stack(step_losses).mean(0).tolist()))
    stats["data_wait"] = data_wait / max(time.perf_counter() - epoch_start, 1e-9)  # share of the epoch
    return stats


def last_good_checkpoint(args):
    """'; the last good checkpoint is PATH' when the run has one (not another run's file of the same name)."""
    last = RunFiles(args.log_path, args.model_path, args.run_name).checkpoint("last")
    return f"; the last good checkpoint is {last}" if os.path.isfile(last) else ""


def check_finite(step_losses, epoch, args):
    finite = torch.isfinite(step_losses).all(dim=1)
    if not bool(finite.all()):
        first_bad = int((~finite).nonzero()[0])
        raise UserError(f"non-finite loss at epoch {epoch}, iteration {first_bad}: stopped{last_good_checkpoint(args)}")


# ----------------------------------------------------------------------------------------------------------
# pseudo labels


def labeled_and_pseudo(data, split, pseudo_pools, modality):
    """(indices, labels, is_pseudo) the identity sampler draws from: the modality's labeled images, then its
    pseudo-labeled ones with their pseudo labels."""
    labeled_idx = split[f"{modality}_labeled"]
    pool = pseudo_pools[modality]
    indices = np.concatenate([labeled_idx, pool.indices.numpy()])
    labels = np.concatenate([data[f"{modality}_label"][labeled_idx], pool.labels.numpy()])
    is_pseudo = np.arange(len(indices)) >= len(labeled_idx)
    return indices, labels, is_pseudo


def pseudo_label_round(model, data, split, centers, pseudo_pools, args, device, epoch=0, previous=None):
    """Assign pseudo labels to the unlabeled images (eval mode, fp32: the 0.8 / 0.6 decisions must not move with the
    training precision) and update the pools. What a round scores is --pl_scoring's (round_draws): by default the
    released round's number of uniform draws under the training augmentation.

    Returns the round's statistics (accepted images, the mean and 90th percentile of the scored images' top
    confidence: what shows whether --conf_thresh is within reach) and, per modality, the class predicted for
    every unlabeled image (-1 for one never scored), accepted or not, which groups the unlabeled images of the
    next batches. previous: the predictions of the last round, kept for the images this round does not score.
    """
    stats, predicted, confidences = {}, {}, []
    num_drawn = max(len(split[f"{modality}_unlabeled"]) for modality in MODALITIES)
    for modal, modality in enumerate(MODALITIES):
        unlabeled_idx = split[f"{modality}_unlabeled"]
        predicted[modality] = torch.empty(0, dtype=torch.long)
        if len(unlabeled_idx) == 0:
            continue
        positions, augment = round_draws(args.pl_scoring, data[f"{modality}_label"][unlabeled_idx], num_drawn, args,
                                         epoch, modal)  # positions into unlabeled_idx, in scoring order
        _, part_feats, mean_logits = extract_features(
            model, data[f"{modality}_img"], modal, args.test_batch_size, device, None,
            indices=unlabeled_idx[positions], return_parts=True, desc=f"pseudo labels ({modality})", shard=True,
            augment=augment)
        accept, labels, conf, _ = assign_pseudo_labels(part_feats.to(device), mean_logits.to(device),
                                                       centers.part_centers[modal], args.conf_thresh, args.dist_thresh)
        accept, labels = accept.cpu().numpy(), labels.cpu()
        # one label per image and round: an image drawn twice keeps its first accepted label (the released record
        # skips a line it labelled already)
        accepted, first = np.unique(positions[accept], return_index=True)
        pseudo_pools[modality].update(torch.from_numpy(unlabeled_idx[accepted]), labels[accept][first], args.forget)
        previous_classes = previous[modality] if previous else torch.full((len(unlabeled_idx),), -1)
        predicted[modality] = previous_classes.clone()
        predicted[modality][torch.from_numpy(positions)] = labels  # an image drawn twice: its last draw's class
        stats[f"accepted_{modality}"] = len(accepted)
        confidences.append(conf.cpu())
    if confidences:
        conf = torch.cat(confidences)
        stats.update(conf_mean=float(conf.mean()), conf_p90=float(conf.quantile(0.9)))
    return stats, predicted


RELEASED_ROUND_IDS, RELEASED_ROUND_POS = 2, 8  # the released round's batches: 2 identities x 8 images per modality


def round_draws(scoring, hidden_labels, num_drawn, args, epoch, modal):
    """What a round scores in one modality: (positions into its unlabeled images, in scoring order, with repeats
    where a draw repeats; None for the test transform, or the training augmentation's (pad, offsets, flips)).

    all: every image once, test transform (the design's round). augmented: every image once, under the training
    augmentation (pad, crop, flip; the model in eval mode), as the released round scores. sampled (the default): the
    released round's number of uniform draws with replacement, int(N_u / 16) + 1 batches of 16 with N_u the larger
    unlabeled set of the two modalities (about 1 - 1/e = 63% of the images scored, some twice), augmented: what
    makes the semi-supervised phase gain on the demo (README, "The semi-supervised phase"). released: those
    draws as the released code makes them, 2 identities x 8 images per batch grouped by the hidden ground truth (its
    IdentitySampler(..., 8, 2, mode=False) over the unlabeled labels: a label leak), augmented. The three are the
    steps from this repo's round to the released one, each a switch to measure."""
    count = len(hidden_labels)
    if scoring == "all":
        return np.arange(count), None
    rng = np.random.default_rng([args.seed, epoch, 2, modal])
    num_draws = (num_drawn // (RELEASED_ROUND_IDS * RELEASED_ROUND_POS) + 1) * RELEASED_ROUND_IDS * RELEASED_ROUND_POS
    if scoring == "augmented":
        positions = np.arange(count)
    elif scoring == "sampled":
        positions = rng.integers(0, count, num_draws)
    else:
        positions = plan_group_batches(hidden_labels, RELEASED_ROUND_IDS, RELEASED_ROUND_POS,
                                       num_draws // (RELEASED_ROUND_IDS * RELEASED_ROUND_POS), rng).ravel()
    generator = torch.Generator().manual_seed(epoch_seed(args.seed, epoch, stream=3 + modal))
    offsets, flips = random_augment_params(len(positions), args.pad, generator)
    return positions, (args.pad, offsets, flips)


ROUND_SCORINGS = ("all", "augmented", "sampled", "released")


def unlabeled_groups(sampler, data, split, predicted):
    """The class each unlabeled image is grouped by in the batches, as (rgb, ir) arrays aligned with the split's
    unlabeled indices, or None for uniform draws (--unlabeled_sampler random, or no round yet).
    predicted: {modality: class predicted at the latest round}, or None."""
    if sampler == "gt":  # the released code's label leak, kept only to measure it
        return tuple(data[f"{modality}_label"][split[f"{modality}_unlabeled"]] for modality in MODALITIES)
    if sampler == "predicted" and predicted is not None:
        return tuple(predicted[modality].numpy() for modality in MODALITIES)
    return None


def pool_stats(data, pseudo_pools):
    """Pool size and precision against the hidden ground truth: for the log only."""
    size = sum(len(pool) for pool in pseudo_pools.values())
    correct = sum(pool.precision(data[f"{modality}_label"]) * len(pool)
                  for modality, pool in pseudo_pools.items() if len(pool))
    return {"pool_size": size, "pool_rgb": len(pseudo_pools["rgb"]), "pool_ir": len(pseudo_pools["ir"]),
            "pool_precision": 100.0 * correct / size if size else None}  # None: JSON null, an empty CSV cell


# ----------------------------------------------------------------------------------------------------------
# outputs


RESUME_KEYS = ("model", "optimizer", "epoch", "args", "centers", "pools", "predicted", "split", "data", "history",
               "best", "best_model", "rng")
FIGURES = ("rank1", "mAP", "mINP")  # the figures a phase gain is reported for


def check_epochs_left(args, state, run):
    """A resume must have epochs to train, or at least the final evaluation a kill interrupted; a finished run
    is never rewritten."""
    done = state["epoch"] + 1
    if args.epochs < done:
        raise UserError(f"--epochs {args.epochs}: {args.resume} has trained {done} epochs already "
                        f"(evaluate it with --test-only)")
    if args.epochs == done and run.finished():
        raise UserError(f"run {run.name} is finished ({run.folder}): train longer with --epochs N > {done}, or "
                        f"evaluate it with --test-only")


def phase_start_epoch(args):
    """The epoch that ends the identity-only stage (--pl_start - 1), evaluated with the full protocol so that a run
    reports what its semi-supervised phase adds (CPL and --no_pseudo alike); None when there is no such stage."""
    return args.pl_start - 1 if 0 < args.pl_start < args.epochs else None


def phase_gain(at_start, last, epoch):
    """{'epoch', 'at_pl_start', 'gain'}: the figures at the end of the identity-only stage and last - those."""
    if at_start is None:
        return None
    return {"epoch": epoch, "at_pl_start": {key: at_start[key] for key in FIGURES},
            "gain": {key: last[key] - at_start[key] for key in FIGURES}}


def write_results(run_dir, args, last, best, pseudo_label, record, logger, phase=None, split=None):
    results = {"dataset": args.dataset, "mode": args.mode if args.dataset != "regdb" else f"trial{args.trial}",
               "args": vars(args), "last": last, "best": best, "phase": phase, "pseudo_label": pseudo_label,
               "split": split, "run": record}
    write_json(os.path.join(run_dir, "results.json"), results)
    logger.info(f"results written to {os.path.join(run_dir, 'results.json')}")


def write_run_pictures(model, test_set, history, run_dir, args, device, logger, label):
    """tsne.png, ranked.png and curves.png in the run's folder (seconds; --no_pictures skips them)."""
    if args.no_pictures:
        return
    paths = write_pictures(model, test_set, history, run_dir, device, seed=args.seed, batch_size=args.test_batch_size,
                           run_label=f"{args.run_name}, {label}", pl_start=None if args.test_only else args.pl_start)
    logger.info("pictures: " + ", ".join(paths.values()))


def log_dataset_table(logger, data, split, num_classes):
    logger.info("dataset statistics")
    logger.info("  subset     | ids | labeled | unlabeled")
    for modality in MODALITIES:
        logger.info(f"  train {modality:<4} | {len(np.unique(data[f'{modality}_label'])):3d} | "
                    f"{len(split[f'{modality}_labeled']):7d} | {len(split[f'{modality}_unlabeled']):9d}")
    logger.info(f"  classes: {num_classes}")


def format_results(name, figures):
    return (f"{name}: Rank-1 {figures['rank1']:.2f} | Rank-5 {figures['rank5']:.2f} | Rank-10 {figures['rank10']:.2f}"
            f" | Rank-20 {figures['rank20']:.2f} | mAP {figures['mAP']:.2f} | mINP {figures['mINP']:.2f}")


# ----------------------------------------------------------------------------------------------------------


def hold_run(args, resumed_state, typed_name, default_name):
    """The run's files, held (locked) by rank 0 until the process ends: a resumed run's own, or a new run's, whose
    name is claimed here (runs.claim_run: the typed name, or the first free one of default_name, -2, ...; atomic, so
    two runs started together never share a folder). Checks the folders are writable and removes a killed write's
    temporary files, before anything is written."""
    held = {}

    def claim():
        if resumed_state is not None and resumed_state["args"]["run_name"] == args.run_name:
            run = RunFiles(args.log_path, args.model_path, args.run_name)
            check_epochs_left(args, resumed_state, run)
            if not run.lock():
                raise UserError(f"run {run.name} is being trained by another process ({run.folder})")
        else:
            run = claim_run(args.log_path, args.model_path, typed_name, default_name)
        held["run"] = run
        run.prepare(checkpoints=not args.test_only)
        return run.name

    name = on_main_process(claim)
    return held.get("run") or RunFiles(args.log_path, args.model_path, name)


def start_run(run_dir, args, device, append_log=False):
    """The run's logger, autocast dtype and reproducibility record (code version, libraries, device, processes);
    everything printed goes to the console and run_dir/log.txt (appended to by a resumed run, else started anew).
    Under torchrun only rank 0 logs."""
    main_process = rank() == 0
    logger = setup_logger(os.path.join(run_dir, "log.txt") if main_process else None, append=append_log,
                          enabled=main_process)
    logger.info("command: " + " ".join(sys.argv))
    logger.info("args: " + json.dumps(vars(args), sort_keys=True))
    note = device_note(args.gpu, device)
    if note:
        logger.warning(note)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if device.type == "cuda" else None
    if args.amp != "none" and amp_dtype is None:
        logger.warning(f"--amp {args.amp} applies to CUDA only: training in fp32 on the {device.type}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = args.tf32
    record = dict(run_record(device), world_size=world_size(), sync_bn=uses_sync_bn(args, device))
    logger.info("run record: " + json.dumps(record))
    return logger, amp_dtype, record


def load_test_set(args):
    return build_test_set(protocol_of(args.dataset), args.data_path, args.img_h, args.img_w, mode=args.mode,
                          trial=args.trial, trials=range(args.test_trials), workers=args.workers,
                          gallery_mode=args.gallery_mode)


def evaluate_model(model, test_set, args, device, trials=None):
    """The run's test protocol (with --rerank if asked) on the given SYSU gallery trials (None: all prepared);
    under torchrun every process extracts a share and computes the figures (pass the bare model)."""
    rerank = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value) if args.rerank else None
    return evaluate(model, test_set, trials, args.test_batch_size, device, None, rerank, shard=True)


def build_model(args, num_classes, pretrained, device):
    model = embed_net(num_classes, arch=args.arch, pretrained=pretrained, num_parts=args.num_parts,
                      part_dim=args.part_dim).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def uses_sync_bn(args, device):
    """SyncBatchNorm under torchrun on GPUs unless --no-sync_bn; never in one process (nothing to synchronise)."""
    if world_size() == 1:
        return False
    return device.type == "cuda" if args.sync_bn is None else args.sync_bn


def distribute(model, args, device):
    """Under torchrun: DistributedDataParallel (with SyncBatchNorm if --sync_bn, the default on GPUs), else the
    model itself. DDP broadcasts rank 0's buffers (BN running statistics) at each forward; after each epoch the
    training loop broadcasts them once more (utils.broadcast_buffers), so that every process extracts, evaluates
    and saves one model."""
    if world_size() == 1:
        return model
    if uses_sync_bn(args, device):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # spurious for the 1x1 convolutions on channels_last inputs: the strides differ only along size-1 axes, the
    # memory layout is the bucket's (pytorch/pytorch#157862)
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def prepare_demo_data(args, logger):
    """The demo builds its dataset (renderer, seed) and preprocesses it at the run's image size, unless done. A root
    the demo did not build (no demo.json) is somebody's data: its arrays are written only where there are none, and
    arrays of another image size are refused, never overwritten."""
    if prepare_demo_dataset(args.data_path, seed=args.seed, renderer=args.demo_renderer,
                            **DEMO_SIZES[args.demo_renderer]):
        logger.info(f"built the demo dataset ({args.demo_renderer}, seed {args.seed}) in {args.data_path}")
    if arrays_match(args.data_path, args.img_h, args.img_w):
        return
    sizes = [size for size in array_sizes(args.data_path) if size is not None]
    if sizes and demo_spec(args.data_path) is None:
        raise UserError(f"{args.data_path} holds arrays of {sizes[0][0]}x{sizes[0][1]} images, not the run's "
                        f"{args.img_h}x{args.img_w} (or of other files): re-run python pre_process_sysu.py "
                        f"--data_path {args.data_path} --img_h {args.img_h} --img_w {args.img_w} to replace them")
    preprocess_sysu(args.data_path, args.img_h, args.img_w, workers=args.workers)


def load_training_data(args, logger):
    """The training arrays (the demo's rank 0 builds and preprocesses them first) and the number of classes."""
    if args.dataset == "demo":
        on_main_process(lambda: prepare_demo_data(args, logger))
    data = data_manager.load_train_data(args.data_path, protocol_of(args.dataset), args.trial, args.sysu_ids)
    if data["rgb_img"].shape[1:3] != (args.img_h, args.img_w):
        raise UserError(f"arrays in {args.data_path} are {data['rgb_img'].shape[1:3]}, not --img_h {args.img_h} "
                        f"--img_w {args.img_w}: re-run the pre_process script with these sizes")
    return data, int(max(data["rgb_label"].max(), data["ir_label"].max())) + 1


def run_split(args, data):
    """The labeled/unlabeled split (design section 3) and a record of where it came from: drawn from the seed, or
    read from --split_file (a run's split.json, or the released code's lists)."""
    if not args.split_file:
        split = data_manager.make_split(data["rgb_label"], data["rgb_cam"], data["ir_label"], data["ir_cam"],
                                        protocol_of(args.dataset), args.label_ratio, args.seed)
        return split, {"source": "drawn", "seed": args.seed, "label_ratio": args.label_ratio}
    split, kind = data_manager.read_split_file(args.split_file, data, args.data_path, protocol_of(args.dataset),
                                               args.trial, args.sysu_ids)
    return split, {"source": kind, "path": os.path.abspath(args.split_file)}


def split_record(source, split):
    """What results.json says of the split: its source, its sizes and a digest of its rows (two runs on one split
    show the same digest)."""
    digest = hashlib.sha1()
    for key in data_manager.SPLIT_KEYS:
        digest.update(np.asarray(split[key], dtype=np.int64).tobytes())
    return dict(source, **{key: len(split[key]) for key in data_manager.SPLIT_KEYS}, sha1=digest.hexdigest()[:12])


def epoch_batches(epoch, args, data, split, pseudo_pools, predicted, logger):
    """The epoch's batches (design section 6) and whether they carry unlabeled images for the DCE: P x K labeled
    and pseudo-labeled images per modality (P = --batch-size in the warm-up, --pl_batch_size from --pl_start),
    plus unlabeled images grouped by --unlabeled_sampler once the semi-supervised epochs start."""
    semi = is_semi_supervised(epoch, args)
    use_dce = (semi and args.w_dce > 0 and args.unlabeled_ids > 0
               and all(len(split[f"{modality}_unlabeled"]) for modality in MODALITIES))
    num_ids = args.pl_batch_size if semi else args.batch_size
    rgb_pool, ir_pool = (labeled_and_pseudo(data, split, pseudo_pools, modality) for modality in MODALITIES)
    num_batches = args.iters_per_epoch or batches_per_epoch(
        (len(rgb_pool[0]), len(ir_pool[0])), num_ids, args.num_pos,
        [len(split[f"{modality}_unlabeled"]) for modality in MODALITIES], args.unlabeled_ids * args.unlabeled_pos)
    groups = unlabeled_groups(args.unlabeled_sampler, data, split, predicted) if use_dce else None
    if groups is not None and min(map(group_classes, groups)) < args.unlabeled_ids:
        logger.info(f"epoch {epoch}: fewer than --unlabeled_ids {args.unlabeled_ids} classes hold unlabeled images "
                    f"of a modality; unlabeled images are drawn uniformly this epoch")
        groups = None
    batches = TrainBatches(data, rgb_pool, ir_pool, num_ids, args.num_pos, num_batches, args.seed, epoch,
                           rgb_unlabeled=split["rgb_unlabeled"], ir_unlabeled=split["ir_unlabeled"],
                           unlabeled_ids=args.unlabeled_ids if use_dce else 0, unlabeled_pos=args.unlabeled_pos,
                           unlabeled_groups=groups)
    return batches, use_dce


def check_batch_sizes(args, data, split):
    """Fail at start-up, not at --pl_start, when a batch asks for more identities than have labeled images in
    both modalities."""
    common = np.intersect1d(data["rgb_label"][split["rgb_labeled"]], data["ir_label"][split["ir_labeled"]])
    for flag, num_ids, used in (("--batch-size", args.batch_size, args.pl_start > 0 or args.no_pseudo),
                                ("--pl_batch_size", args.pl_batch_size, not args.no_pseudo)):
        if used and num_ids > len(common):
            raise UserError(f"{flag} {num_ids}: only {len(common)} identities have labeled images in both modalities")


def check_divisible_batches(args, num_processes):
    """Under torchrun every process takes an equal share of each batch: the batch sizes must divide."""
    sizes = {"--batch-size x --num_pos": args.batch_size * args.num_pos,
             "--pl_batch_size x --num_pos": args.pl_batch_size * args.num_pos,
             "--unlabeled_ids x --unlabeled_pos": args.unlabeled_ids * args.unlabeled_pos}
    for name, size in sizes.items():
        if size % num_processes:
            raise UserError(f"{name} = {size} images per modality do not split over {num_processes} processes")


def check_processes_agree(model, centers, pseudo_pools, epoch):
    """Under torchrun every process must hold the same weights, batch-norm buffers, centers and pools (each computes
    them from the whole batch, the buffers are broadcast after each epoch); a fingerprint of each is compared, and a
    difference stops the run rather than corrupt it."""
    if world_size() == 1:
        return
    values = [sum(float(p.detach().double().sum()) for p in model.parameters()),
              *(float(buffer.double().sum()) for buffer in model.buffers()),
              *(float(buffer.double().sum()) for buffer in centers.buffers()),
              *(float(pool.indices.double().sum() + 1e-3 * pool.labels.double().sum()) for pool in pseudo_pools.values())]
    fingerprint = torch.tensor(values, dtype=torch.float64, device=next(model.parameters()).device)
    if any(not torch.equal(fingerprint, other) for other in gather_uneven_rows(fingerprint)):
        raise UserError(f"epoch {epoch}: the processes' weights, buffers, centers or pools differ: stopped")


def data_signature(data):
    """What a resumed run checks its arrays against: image count and label sum per modality."""
    return {modality: [len(data[f"{modality}_label"]), int(data[f"{modality}_label"].sum())] for modality in MODALITIES}


def check_finite_weights(model, epoch, args):
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
    if not bool(finite):
        raise UserError(f"non-finite weights after epoch {epoch}: stopped{last_good_checkpoint(args)}")


def pool_record(data, split, pseudo_pools):
    """results.json's pseudo_label: pool size, its share of the unlabeled images and its precision (%)."""
    stats = pool_stats(data, pseudo_pools)
    num_unlabeled = sum(len(split[f"{modality}_unlabeled"]) for modality in MODALITIES)
    return {"pool_size": stats["pool_size"], "unlabeled": num_unlabeled, "precision": stats["pool_precision"],
            "share": 100.0 * stats["pool_size"] / num_unlabeled if num_unlabeled else None}


def train(args, device):
    started = time.time()
    main_process = rank() == 0
    state = load_checkpoint(args.resume, required_keys=RESUME_KEYS) if args.resume else None
    run = hold_run(args, state, args.run_name, default_run_name(args))
    resumes_own_run = state is not None and state["args"]["run_name"] == run.name
    args.run_name = run.name
    logger, amp_dtype, record = start_run(run.folder, args, device, append_log=resumes_own_run)
    try:
        train_run(args, device, run, state, logger, amp_dtype, record, started)
    except (Stopped, KeyboardInterrupt) as err:
        saved = os.path.isfile(run.checkpoint("last"))
        logger.warning(f"{err or 'interrupted'}: the run's files are intact; " +
                       (f"continue with --resume {run.checkpoint('last')}" if saved else "no epoch was saved"))
        raise
    finally:
        if main_process:
            run.discard_if_empty()


def train_run(args, device, run, state, logger, amp_dtype, record, started):
    main_process = rank() == 0
    run_dir = run.folder
    set_seed(args.seed)
    protocol = protocol_of(args.dataset)
    if args.unlabeled_sampler == "gt" and not args.no_pseudo:
        logger.warning("--unlabeled_sampler gt groups unlabeled images by their hidden ground truth (the released "
                       "code's label leak): use it only to measure the leak")
    if args.pl_scoring == "released" and not args.no_pseudo:
        logger.warning("--pl_scoring released draws the images a round scores by their hidden ground truth (the "
                       "released code's round): use it only to measure it")

    # ============ data ============
    data, num_classes = load_training_data(args, logger)
    split, split_source = run_split(args, data)
    test_set = load_test_set(args)

    # ============ model, class centers, pseudo-label pools, optimizer ============
    model = build_model(args, num_classes, "none" if state else args.pretrained, device)
    centers = ClassCenters(num_classes, args.num_parts, args.part_dim).to(device)
    pseudo_pools = {modality: PseudoLabelPool() for modality in MODALITIES}
    predicted = None  # the class of every unlabeled image at the latest round (groups unlabeled images)
    optimizer = make_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, history, best, best_model = 0, [], {"rank1": -1.0, "epoch": -1}, None
    at_pl_start, segments = None, []  # the full evaluation ending the identity-only stage; earlier segments' records

    # ============ resume ============
    if state is not None:
        if state["data"] != data_signature(data):
            raise UserError(f"{args.data_path} holds other training arrays than run {state['args']['run_name']} "
                            f"was trained on (images, label sum per modality: {data_signature(data)} vs "
                            f"{state['data']})")
        load_state_strict(model, state["model"], "model", args.resume)
        load_state_strict(centers, state["centers"], "class centers", args.resume)
        load_state_strict(optimizer, state["optimizer"], "optimizer", args.resume)
        for modality in MODALITIES:
            pseudo_pools[modality].load_state_dict(state["pools"][modality])
        predicted = state["predicted"] or None
        split = {key: value.numpy() for key, value in state["split"].items()}
        split_source = state.get("split_source", {"source": "drawn", "seed": args.seed, "label_ratio": args.label_ratio})
        start_epoch, history, best, best_model = state["epoch"] + 1, state["history"], state["best"], state["best_model"]
        at_pl_start, segments = state.get("at_pl_start"), state.get("segments", [])
        set_rng_states(state["rng"])
        logger.info(f"resumed from {args.resume} (epoch {state['epoch']})")
        if main_process:  # complete even if a kill came between the checkpoint and metrics.csv
            write_metrics_csv(os.path.join(run_dir, "metrics.csv"), history)
    for modality in MODALITIES:  # the invariant the whole method rests on
        assert not np.intersect1d(split[f"{modality}_labeled"], split[f"{modality}_unlabeled"]).size
    check_batch_sizes(args, data, split)
    if main_process:
        write_json(os.path.join(run_dir, "split.json"), {key: value.tolist() for key, value in split.items()})
    log_dataset_table(logger, data, split, num_classes)
    bare_model, model = model, distribute(model, args, device)  # the bare model extracts, evaluates and is saved
    segment = dict(first_epoch=start_epoch, last_epoch=None, **{key: record[key] for key in SEGMENT_KEYS})
    phase_epoch = phase_start_epoch(args)

    # ============ training: per epoch, train, then a pseudo-label round, then evaluate ============
    for epoch in range(start_epoch, args.epochs):
        start = time.time()
        factor = lr_factor(epoch, args.warmup_epochs, args.lr_steps, args.lr_factors)
        set_lr(optimizer, args.lr, factor)
        batches, use_dce = epoch_batches(epoch, args, data, split, pseudo_pools, predicted, logger)
        batches.shard = (rank(), world_size())
        row = {"epoch": epoch, "lr": args.lr * factor}
        row.update(train_one_epoch(model, make_train_loader(batches, args.workers), optimizer, centers, epoch, args,
                                   device, amp_dtype, scaler, logger, use_dce))
        broadcast_buffers(bare_model)  # one model on every process for the round, the evaluation and the checkpoint
        if is_pseudo_label_epoch(epoch, args):
            round_stats, predicted = pseudo_label_round(bare_model, data, split, centers, pseudo_pools, args, device,
                                                        epoch, predicted)
            row.update(round_stats)
        row.update(pool_stats(data, pseudo_pools))
        if epoch == phase_epoch or is_eval_epoch(epoch, args):
            figures = evaluate_model(bare_model, test_set, args, device,
                                     None if epoch == phase_epoch or protocol != "sysu" else [0])
            if epoch == phase_epoch:  # the end of the identity-only stage, full protocol
                at_pl_start = {key: figures[key] for key in FIGURES}
                logger.info(format_results(f"epoch {epoch}, end of the identity-only stage (all trials)", figures))
            figures = figures["trials"][0] if protocol == "sysu" else figures  # draw 0, as every periodic one
            row.update({key: figures[key] for key in FIGURES})
            logger.info(format_results(f"epoch {epoch}", figures))
            if is_eval_epoch(epoch, args) and figures["rank1"] > best["rank1"]:
                best = {"rank1": figures["rank1"], "mAP": figures["mAP"], "epoch": epoch}
                best_model = {key: value.detach().cpu().clone() for key, value in bare_model.state_dict().items()}
        row["time"] = time.time() - start
        history.append(row)
        logger.info(f"epoch {epoch} done in {row['time']:.0f}s: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k not in ("epoch", "time")))
        check_finite_weights(bare_model, epoch, args)
        check_processes_agree(bare_model, centers, pseudo_pools, epoch)
        segment.update(last_epoch=epoch, wall_time_s=time.time() - started)
        if main_process:  # one write per epoch holds the whole state, the best weights too: any kill resumes exactly
            save_checkpoint(run.checkpoint("last"), {
                "model": bare_model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "args": vars(args), "centers": centers.state_dict(),
                "pools": {m: pseudo_pools[m].state_dict() for m in MODALITIES}, "predicted": predicted or {},
                "split": {key: torch.from_numpy(value) for key, value in split.items()}, "split_source": split_source,
                "data": data_signature(data), "history": history, "best": best, "best_model": best_model,
                "at_pl_start": at_pl_start, "segments": segments + [segment], "rng": rng_states()})
            write_metrics_csv(os.path.join(run_dir, "metrics.csv"), history)

    # ============ final evaluation: last and best epoch, full protocol ============
    last = evaluate_model(bare_model, test_set, args, device)
    logger.info(format_results(f"last (epoch {args.epochs - 1})", last))
    phase = phase_gain(at_pl_start, last, phase_epoch)
    if phase is not None:
        logger.info(f"phase gain (epoch {phase_epoch}, end of the identity-only stage -> last): " +
                    ", ".join(f"{key} {phase['at_pl_start'][key]:.2f} -> {last[key]:.2f} ({phase['gain'][key]:+.2f})"
                              for key in FIGURES))
    if main_process:
        write_run_pictures(bare_model, test_set, history, run_dir, args, device, logger, f"epoch {args.epochs - 1}")
    best_figures = None
    if best_model is not None:
        bare_model.load_state_dict(best_model)
        best_figures = dict(evaluate_model(bare_model, test_set, args, device), epoch=best["epoch"])
        logger.info(format_results(f"best (epoch {best['epoch']}, chosen on test trial 0)", best_figures))
    if main_process:
        if best_model is not None:
            save_checkpoint(run.checkpoint("best"), {"model": best_model, "epoch": best["epoch"], "args": vars(args),
                                                     "history": history, "best": best})
        segment.update(wall_time_s=time.time() - started)
        segments = segments + [segment]
        record.update(wall_time_s=sum(s["wall_time_s"] for s in segments),
                      train_time_s=sum(row["time"] for row in history), segments=segments)
        write_results(run_dir, args, dict(last, epoch=args.epochs - 1), best_figures,
                      pool_record(data, split, pseudo_pools), record, logger, phase,
                      split_record(split_source, split))


SEGMENT_KEYS = ("world_size", "sync_bn", "git_commit", "git_dirty", "device")  # what a run's record keeps per segment


def evaluate_checkpoint(args, device):
    """--test-only: the full test protocol on a checkpoint. Needs the checkpoint and the test set only (the number
    of classes comes from the checkpoint's classifier); writes log/<run>_test/results.json (a free name)."""
    started = time.time()
    state = load_checkpoint(args.resume, required_keys=("model", "args", "epoch"))
    run = hold_run(args, None, "", args.run_name + "_test")
    try:
        logger, _, record = start_run(run.folder, args, device)
        test_set = load_test_set(args)
        model = embed_net_from_checkpoint(state, args.resume).to(device)
        figures = evaluate_model(model, test_set, args, device)
        logger.info(format_results(f"checkpoint {args.resume} (epoch {state['epoch']})", figures))
        if rank() == 0:
            write_run_pictures(model, test_set, state.get("history"), run.folder, args, device, logger,
                               f"epoch {state['epoch']}")
            trained = (state.get("history") or [{}])[-1]  # the pool as the run left it (precision needs training labels)
            record.update(wall_time_s=time.time() - started)
            write_results(run.folder, args, dict(figures, epoch=state["epoch"]), None,
                          {"pool_size": trained.get("pool_size"), "precision": trained.get("pool_precision")}, record,
                          logger)
    finally:
        if rank() == 0:
            run.discard_if_empty()


def main(argv=None):
    args = parse_args(argv)
    _, num_processes, device = init_distributed(args.gpu)
    try:
        return evaluate_checkpoint(args, device) if args.test_only else train(args, device)
    finally:
        if num_processes > 1:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
