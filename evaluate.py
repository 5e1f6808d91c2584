"""The test-time pipeline shared by training (periodic evaluation, pseudo-label rounds) and --test-only:
feature extraction over uint8 image arrays, and the SYSU-MM01 / RegDB evaluation of a model.

Test images are decoded once into a TestSet. For SYSU every visible test image of the mode's cameras is a
gallery candidate: its features are extracted once per evaluation and each gallery trial picks its rows, so
ten trials cost one extraction.
"""
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_loader import load_images, normalize_images
from data_manager import (SYSU_IR_CAMS, process_gallery_sysu, process_query_sysu, process_test_regdb,
                          read_sysu_ids, sysu_gallery_cams, sysu_image_list)
from eval_metrics import eval_regdb, eval_sysu
from model import INFRARED, VISIBLE

RANKS = (1, 5, 10, 20)


@torch.inference_mode()
def extract_features(model, images, modal, batch_size=64, device="cpu", amp_dtype=None, indices=None,
                     return_parts=False, desc=None):
    """Features of images[indices] (all images if indices is None) seen by the `modal` stream, eval mode.

    Args:
        images: (N, H, W, 3) uint8 array (may be memory-mapped), already at the model's input size.
        modal: VISIBLE (0) or INFRARED (1).
    Returns:
        (M, D) float32 CPU tensor of L2-normalised global features; with return_parts=True also the part
        features (M, num_parts, part_dim) and the part logits averaged over parts (M, class_num).
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    rows = np.arange(len(images)) if indices is None else np.asarray(indices)
    feats, part_feats, mean_logits = [], [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=desc is None, leave=False):
        batch_rows = rows[start:start + batch_size]
        x = normalize_images(torch.from_numpy(np.ascontiguousarray(images[batch_rows])).to(device))
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(**{"x_rgb" if modal == VISIBLE else "x_ir": x}, return_parts=return_parts)
        if return_parts:
            feats.append(out.feat.float().cpu())
            part_feats.append(out.part_feats.float().cpu())
            mean_logits.append(out.part_logits.float().mean(1).cpu())
        else:
            feats.append(out.float().cpu())
    model.train(was_training)
    feats = F.normalize(torch.cat(feats), dim=1) if feats else torch.empty(0)
    if return_parts:
        return feats, torch.cat(part_feats), torch.cat(mean_logits)
    return feats


@dataclass
class TestSet:
    """Decoded test images and the protocol's bookkeeping. SYSU: query = infrared images; gallery_rows[t]
    are the rows of the candidate images forming gallery trial t. RegDB: visible and thermal test lists."""
    dataset: str
    query_img: np.ndarray
    query_pids: np.ndarray
    gallery_img: np.ndarray
    gallery_pids: np.ndarray
    query_cams: np.ndarray = None
    gallery_cams: np.ndarray = None
    gallery_rows: dict = field(default_factory=dict)


def build_test_set(dataset, data_path, img_h, img_w, mode="all", trial=1, trials=range(10), workers=0):
    """Decode the test images of a protocol once. SYSU: mode all|indoor and the gallery trials to prepare
    (random.seed(t) draws); RegDB: the `trial` split (visible = gallery candidates, thermal = queries)."""
    if dataset == "regdb":
        vis_paths, vis_labels = process_test_regdb(data_path, trial, "visible")
        ir_paths, ir_labels = process_test_regdb(data_path, trial, "thermal")
        return TestSet("regdb", load_images(ir_paths, img_w, img_h, workers, desc="RegDB thermal test"), ir_labels,
                       load_images(vis_paths, img_w, img_h, workers, desc="RegDB visible test"), vis_labels)
    q_paths, q_pids, q_cams = process_query_sysu(data_path, mode)
    cand_paths, cand_pids, cand_cams = sysu_image_list(data_path, read_sysu_ids(data_path, "test"),
                                                       sysu_gallery_cams(mode))
    row_of = {path: row for row, path in enumerate(cand_paths)}
    gallery_rows = {t: np.array([row_of[p] for p in process_gallery_sysu(data_path, mode, t)[0]], dtype=np.int64)
                    for t in trials}
    assert set(np.unique(q_cams)) <= set(SYSU_IR_CAMS)
    return TestSet("sysu", load_images(q_paths, img_w, img_h, workers, desc="SYSU query"), q_pids,
                   load_images(cand_paths, img_w, img_h, workers, desc="SYSU gallery"), cand_pids,
                   q_cams, cand_cams, gallery_rows)


def figures(cmc, mAP, mINP):
    """The reported figures, in percent."""
    out = {f"rank{r}": 100.0 * float(cmc[min(r, len(cmc)) - 1]) for r in RANKS}
    out.update(mAP=100.0 * mAP, mINP=100.0 * mINP)
    return out


def mean_figures(per_trial):
    keys = [key for key in per_trial[0] if key != "trial"]
    return {key: float(np.mean([row[key] for row in per_trial])) for key in keys}


def evaluate(model, test_set, trials=None, batch_size=64, device="cpu", amp_dtype=None):
    """Evaluate a model on a TestSet. Distance = -cosine of L2-normalised features.

    SYSU: the mean over `trials` (default: all prepared) of each trial's figures, plus 'trials' (each
    trial's figures). RegDB: visible -> thermal as the headline, 'thermal_to_visible' beside it.
    All figures in percent.
    """
    extract = lambda images, modal: extract_features(model, images, modal, batch_size, device, amp_dtype)  # noqa: E731
    if test_set.dataset == "regdb":
        vis = extract(test_set.gallery_img, VISIBLE)
        ir = extract(test_set.query_img, INFRARED)
        v2t = figures(*eval_regdb(-(vis @ ir.t()).numpy(), test_set.gallery_pids, test_set.query_pids))
        t2v = figures(*eval_regdb(-(ir @ vis.t()).numpy(), test_set.query_pids, test_set.gallery_pids))
        return dict(v2t, trials=[dict(v2t, trial=0)], thermal_to_visible=t2v)
    query = extract(test_set.query_img, INFRARED)
    gallery = extract(test_set.gallery_img, VISIBLE)
    per_trial = []
    for trial in (sorted(test_set.gallery_rows) if trials is None else trials):
        rows = test_set.gallery_rows[trial]
        distmat = -(query @ gallery[rows].t()).numpy()
        result = eval_sysu(distmat, test_set.query_pids, test_set.gallery_pids[rows], test_set.query_cams,
                           test_set.gallery_cams[rows])
        per_trial.append(dict(figures(*result), trial=int(trial)))
    return dict(mean_figures(per_trial), trials=per_trial)
