"""The test-time pipeline shared by training (periodic evaluation, pseudo-label rounds) and --test-only:
feature extraction over uint8 image arrays, and the SYSU-MM01 / RegDB evaluation of a model.

Test images are decoded once into a TestSet. For SYSU-MM01 every visible test image of the mode's cameras is
a gallery candidate: candidate features are extracted once per evaluation and each gallery trial picks its
rows, so ten trials cost one extraction. Distance = -cosine of L2-normalised features (one matmul), or on
request the k-reciprocal re-ranked distance (rerank.py) between the query and each trial's gallery.
"""
import inspect
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_loader import augment_with_params, load_images, normalize_images
from data_manager import (check_sources, load_regdb_split, process_gallery_sysu, process_query_sysu, read_sysu_ids,
                          sysu_gallery_cams, sysu_image_list)
from eval_metrics import eval_regdb, eval_sysu
from model import INFRARED, VISIBLE
from rerank import k_reciprocal_distance
from utils import UserError, gather_uneven_rows, rank, world_size

RANKS = (1, 5, 10, 20)


@torch.inference_mode()
def extract_features(model, images, modal, batch_size=64, device="cpu", amp_dtype=None, indices=None,
                     return_parts=False, desc=None, shard=False, augment=None):
    """Features of images[indices] (all images if indices is None) through the `modal` stream, in eval mode.

    Args:
        model: takes model(x_rgb=x) or model(x_ir=x) with x (B, 3, H, W) float and, in eval mode, returns
            (B, D) features (with return_parts=True: a ModelOutput with feat, part_feats, part_logits).
        images: (N, H, W, 3) uint8 array (may be memory-mapped), already at the model's input size.
        modal: VISIBLE (0) or INFRARED (1).
        amp_dtype: None, or a dtype to autocast to (torch.float16 / torch.bfloat16) on `device`.
        shard: under torchrun, each process extracts every world_size-th batch and all get the whole result
            (every process must call it; pass the bare model, not its DistributedDataParallel wrapper).
        augment: None (the test transform: resize only), or (pad, offsets, flips) to apply the training
            augmentation (data_loader.augment_with_params) with per-row crop offsets (M, 2) and flips (M,) aligned
            with the rows extracted, so the result does not depend on batching or sharding.
    Returns:
        (M, D) float32 CPU tensor of L2-normalised features; with return_parts=True also the part features
        (M, num_parts, part_dim) and the part logits averaged over parts (M, num_classes).
    The model's train/eval mode is restored afterwards.
    """
    if modal not in (VISIBLE, INFRARED):
        raise ValueError(f"modal must be VISIBLE ({VISIBLE}) or INFRARED ({INFRARED}), got {modal!r}")
    rows = np.arange(len(images)) if indices is None else np.asarray(indices)
    if shard and world_size() > 1:
        return extract_sharded(model, images, modal, batch_size, device, amp_dtype, rows, return_parts, desc, augment)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    stream = "x_rgb" if modal == VISIBLE else "x_ir"
    # only ask for parts when wanted, so any module with the plain feature interface works here
    extra = {"return_parts": True} if return_parts else {}
    feats, part_feats, mean_logits = [], [], []
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc=desc or "features", leave=False, disable=None):
            batch = torch.from_numpy(np.ascontiguousarray(images[rows[start:start + batch_size]])).to(device)
            if augment is None:
                x = normalize_images(batch)  # already channels_last
            else:
                pad, offsets, flips = augment
                span = slice(start, start + batch_size)
                x = augment_with_params(batch, pad, offsets[span].to(device), flips[span].to(device))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(**{stream: x}, **extra)
            if return_parts:
                feats.append(out.feat.float().cpu())
                part_feats.append(out.part_feats.float().cpu())
                mean_logits.append(out.part_logits.float().mean(1).cpu())
            else:
                feats.append(out.float().cpu())
    finally:
        model.train(was_training)
    # normalised again in float32: reduced-precision outputs are only approximately unit length
    feats = F.normalize(torch.cat(feats), dim=1) if feats else torch.empty(0, 0)
    if return_parts:
        return feats, torch.cat(part_feats), torch.cat(mean_logits)
    return feats


def extract_sharded(model, images, modal, batch_size, device, amp_dtype, rows, return_parts, desc, augment=None):
    """extract_features over a share of the batches per process (batch b of the one-process extraction goes to
    process b mod world_size), gathered back in order. Every batch holds the very rows it holds in one process, so
    on a deterministic backend the features, and the figures, do not depend on the number of processes."""
    num_processes = world_size()
    positions = np.arange(len(rows))
    batches = [positions[start:start + batch_size] for start in range(0, len(rows), batch_size)]
    mine = np.concatenate(batches[rank()::num_processes] or [positions[:0]])  # positions into rows
    # a process without a batch (fewer batches than processes) extracts one row and keeps none of it: its empty
    # share must have the feature shapes of the others' for the gather
    extracted_positions = mine if len(mine) else positions[:1]
    if augment is not None:
        augment = (augment[0], augment[1][extracted_positions], augment[2][extracted_positions])
    extracted = extract_features(model, images, modal, batch_size, device, amp_dtype, rows[extracted_positions],
                                 return_parts, desc, augment=augment)
    if len(mine) == 0:
        extracted = tuple(t[:0] for t in extracted) if return_parts else extracted[:0]
    owner = np.concatenate([np.full(len(batch), b % num_processes) for b, batch in enumerate(batches)] or [[]])
    merged = []
    for tensor in (extracted if return_parts else (extracted,)):
        whole = torch.empty(len(rows), *tensor.shape[1:])
        for process, part in enumerate(gather_uneven_rows(tensor.to(device))):
            whole[torch.from_numpy(np.flatnonzero(owner == process))] = part.cpu()
        merged.append(whole)
    return tuple(merged) if return_parts else merged[0]


@dataclass
class TestSet:
    """Decoded test images of one protocol, decoded once and reused by every evaluation.

    SYSU-MM01: query = every infrared test image; gallery = every visible test image of the mode's cameras
    (the candidates); gallery_rows[t] = the candidate rows forming gallery trial t, drawn as gallery_mode
    says ('single': one image per identity and camera; 'multi': ten, see data_manager.process_gallery_sysu).
    RegDB: query = the visible test list, gallery = the thermal test list of split `trial` (visible ->
    thermal is the headline direction; thermal -> visible swaps them); gallery_rows is empty.
    Images are (N, H, W, 3) uint8; pids and cams int64 (N,).
    """
    dataset: str
    query_img: np.ndarray
    query_pids: np.ndarray
    gallery_img: np.ndarray
    gallery_pids: np.ndarray
    query_cams: np.ndarray = None
    gallery_cams: np.ndarray = None
    gallery_rows: dict = field(default_factory=dict)
    trial: int = None
    gallery_mode: str = "single"


def build_test_set(dataset, data_path, img_h, img_w, mode="all", trial=1, trials=range(10), workers=0,
                   gallery_mode="single"):
    """Decode the test images of a protocol once.

    dataset 'sysu' (the demo uses it too): `mode` all|indoor, the gallery trials to prepare (trial t is
    the field's random.seed(t) draw) and `gallery_mode` single|multi (one or ten images per identity and
    visible camera). dataset 'regdb': the test split of `trial` (1..10).
    Raises UserError when the lists are empty or no query identity is in the gallery.
    """
    if dataset == "regdb":  # pre_process_regdb.py decoded the test images of every trial already
        arrays = load_regdb_split(data_path, "test", trial)
        check_sources(data_path, "regdb")
        if arrays["rgb_img"].shape[1:3] != (img_h, img_w):
            raise UserError(f"RegDB arrays in {data_path} are {arrays['rgb_img'].shape[1:3]}, not {(img_h, img_w)}: "
                            f"re-run python pre_process_regdb.py --img_h {img_h} --img_w {img_w}")
        check_identities(arrays["rgb_label"], arrays["ir_label"], f"RegDB trial {trial} in {data_path}")
        return TestSet("regdb", arrays["rgb_img"], arrays["rgb_label"], arrays["ir_img"], arrays["ir_label"],
                       trial=int(trial))
    if dataset != "sysu":
        raise UserError(f"unknown test protocol {dataset!r}: use sysu or regdb")
    q_paths, q_pids, q_cams = process_query_sysu(data_path, mode)
    cand_paths, cand_pids, cand_cams = sysu_image_list(data_path, read_sysu_ids(data_path, "test"),
                                                       sysu_gallery_cams(mode))
    check_identities(q_pids, cand_pids, f"SYSU-MM01 test set ({mode}) in {data_path}")
    row_of = {path: row for row, path in enumerate(cand_paths)}
    gallery_rows = {int(t): np.array([row_of[path] for path in
                                      process_gallery_sysu(data_path, mode, t, gallery_mode)[0]], dtype=np.int64)
                    for t in trials}
    return TestSet("sysu", load_images(q_paths, img_w, img_h, workers, desc="SYSU query"), q_pids,
                   load_images(cand_paths, img_w, img_h, workers, desc="SYSU gallery candidates"), cand_pids,
                   q_cams, cand_cams, gallery_rows, gallery_mode=gallery_mode)


def check_identities(q_pids, g_pids, what):
    if len(q_pids) == 0 or len(g_pids) == 0:
        raise UserError(f"{what}: no query or no gallery images")
    if not np.isin(q_pids, g_pids).any():
        raise UserError(f"{what}: no query identity appears in the gallery")


def figures(cmc, mAP, mINP):
    """The reported figures, in percent."""
    out = {f"rank{r}": 100.0 * float(cmc[r - 1]) for r in RANKS}
    out.update(mAP=100.0 * mAP, mINP=100.0 * mINP)
    return out


def mean_figures(per_trial):
    keys = [key for key in per_trial[0] if key != "trial"]
    return {key: float(np.mean([row[key] for row in per_trial])) for key in keys}


def cosine_distance(query, gallery):
    """-cosine of L2-normalised (n, D) and (m, D) features -> (n, m) numpy float32, smaller = closer."""
    return (-(query @ gallery.t())).numpy()


RERANK_PARAMETERS = tuple(inspect.signature(k_reciprocal_distance).parameters)[2:]  # after query, gallery


def ranking_distance(query, gallery, rerank=None, device="cpu"):
    """The distance the metrics rank by: -cosine, or with rerank = dict(k1=, k2=, lambda_value=) the
    k-reciprocal re-ranked distance, computed on `device`. (n, m) numpy float32, smaller = closer."""
    if rerank is None:
        return cosine_distance(query, gallery)
    return k_reciprocal_distance(query.to(device), gallery.to(device), **rerank).cpu().numpy()


def evaluate(model, test_set, trials=None, batch_size=64, device="cpu", amp_dtype=None, rerank=None, shard=False):
    """Evaluate a model on a TestSet; all figures in percent.

    SYSU-MM01: 'rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP' = the mean over `trials` (None: every
    prepared trial) of each trial's figures; 'trials' = [each trial's figures with its 'trial' number].
    RegDB: the same keys for visible -> thermal (the headline), 'thermal_to_visible' with that direction's
    figures, and 'trials' = [the visible -> thermal figures with the split's 'trial' number].
    rerank: None (-cosine), or dict(k1=, k2=, lambda_value=) to rank by the k-reciprocal re-ranked distance
    (each SYSU trial: the queries against that trial's gallery; RegDB: each direction on its own).
    shard: extract the features in shares over the torchrun processes (see extract_features); every process
    then computes the same figures.
    """
    unknown = set(rerank or {}) - set(RERANK_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown re-ranking parameters {sorted(unknown)}: use {', '.join(RERANK_PARAMETERS)}")

    def distance(query_feats, gallery_feats):
        return ranking_distance(query_feats, gallery_feats, rerank, device)

    def extract(images, modal, desc):
        return extract_features(model, images, modal, batch_size, device, amp_dtype, desc=desc, shard=shard)

    query = extract(test_set.query_img, VISIBLE if test_set.dataset == "regdb" else INFRARED, "query features")
    gallery = extract(test_set.gallery_img, INFRARED if test_set.dataset == "regdb" else VISIBLE,
                      "gallery features")
    if test_set.dataset == "regdb":
        v2t = figures(*eval_regdb(distance(query, gallery), test_set.query_pids, test_set.gallery_pids))
        t2v = figures(*eval_regdb(distance(gallery, query), test_set.gallery_pids, test_set.query_pids))
        return dict(v2t, thermal_to_visible=t2v, trials=[dict(v2t, trial=test_set.trial)])
    trials = sorted(test_set.gallery_rows) if trials is None else list(trials)
    missing = [t for t in trials if t not in test_set.gallery_rows]
    if missing or not trials:
        raise ValueError(f"gallery trials {missing or trials} were not prepared by build_test_set "
                         f"(prepared: {sorted(test_set.gallery_rows)})")
    per_trial = []
    for trial in trials:
        rows = test_set.gallery_rows[trial]
        result = eval_sysu(distance(query, gallery[rows]), test_set.query_pids, test_set.gallery_pids[rows],
                           test_set.query_cams, test_set.gallery_cams[rows])
        per_trial.append(dict(figures(*result), trial=int(trial)))
    return dict(mean_figures(per_trial), trials=per_trial)
