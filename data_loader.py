"""Images and batches: decoding, the train/test transforms on uint8 tensors, and the epoch's batches
(P identities x K images per modality from a labeled pool, plus unlabeled images, grouped or uniform).

Workers hand over uint8 images only; augmentation (pad, random crop, flip) and normalisation run batched on
the training device (train_augment), with results equal to torchvision's per-image pipeline given the same
random parameters (tests/test_data_loader.py).
"""
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from utils import UserError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_image(path, img_w, img_h):
    """Decode one image as RGB and resize it to (img_w, img_h) with Lanczos -> (img_h, img_w, 3) uint8."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((img_w, img_h), Image.LANCZOS), dtype=np.uint8)
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: not an image file PIL can identify") from None
    except (OSError, ValueError) as err:  # truncated file, unreadable path, ...
        raise UserError(f"cannot read image {path}: {first_line(err)}") from None


def load_images(paths, img_w, img_h, workers=0, desc=None):
    """Decode and resize a list of images -> (N, img_h, img_w, 3) uint8, with a progress bar titled desc.
    workers > 0: that many threads (PIL decodes and resizes without the GIL); 0: in this thread."""
    out = np.empty((len(paths), img_h, img_w, 3), dtype=np.uint8)

    def decode(i):
        out[i] = read_image(paths[i], img_w, img_h)

    # no bar without desc, nor when stderr is not a terminal (logs and pipes get no carriage-return lines)
    progress = dict(total=len(paths), desc=desc, disable=True if desc is None else None, leave=False)
    if workers <= 0:
        for i in tqdm(range(len(paths)), **progress):
            decode(i)
        return out
    pool = ThreadPoolExecutor(workers)
    try:
        for _ in tqdm(pool.map(decode, range(len(paths))), **progress):
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # on an unreadable file, stop now rather than decode the rest
    return out


# ---------------------------------------------------------------------------------------------- transforms

def normalize_images(images):
    """(B, H, W, 3) uint8 tensor -> (B, 3, H, W) float32, ImageNet-normalised (ToTensor + Normalize).

    x * 1/(255 std) - mean/std as one in-place addcmul on the float copy, with the per-channel
    constants tiled along a pixel row so that the broadcast runs over a contiguous W*3 axis (a size-3 axis does
    not vectorise; this is ~4x faster than the NCHW form on the CPU). The result is logically NCHW and stored
    NHWC (torch.channels_last), the layout the GPU path trains in, so no transposition pass is spent either.
    Equal to the torchvision pair within float32 rounding (< 1e-6).
    """
    batch, height, width, channels = images.shape
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)
    std = torch.tensor(IMAGENET_STD, device=images.device)
    scale_row = (1.0 / (255.0 * std)).repeat(width)  # (W*3,)
    bias_row = (-mean / std).repeat(width)  # (W*3,)
    out = images.reshape(batch * height, width * channels).to(torch.float32, copy=True)  # (B*H, W*3)
    torch.addcmul(bias_row, out, scale_row, out=out)  # in place: one float buffer per batch
    return out.view(batch, height, width, channels).permute(0, 3, 1, 2)


def random_augment_params(batch_size, pad, generator=None, device="cpu"):
    """Crop offsets (top, left) in [0, 2*pad] and flip flags for a batch, drawn on the generator's device."""
    offsets = torch.randint(0, 2 * pad + 1, (batch_size, 2), generator=generator, device=device)
    flips = torch.rand(batch_size, generator=generator, device=device) < 0.5
    return offsets, flips


def augment_with_params(images, pad, offsets, flips):
    """Zero-pad by `pad`, crop (H, W) at offsets (top, left), flip where flips, normalise.
    images (B, H, W, 3) uint8 -> (B, 3, H, W) float32 (stored channels_last, see normalize_images).

    Each row of a crop is one contiguous run of W pixels of the padded image, so all crops are B*H rows picked
    from a strided view by one index_select (whole rows, not single elements). A flipped crop is the crop at
    left' = 2*pad - left of the mirrored image, so the mirrored batch is padded alongside the plain one and
    the row index picks the source: no boolean indexing, hence no host sync on the GPU.
    """
    batch, height, width, channels = images.shape
    padded_h, padded_w = height + 2 * pad, width + 2 * pad
    sources = images.new_zeros(2, batch, padded_h, padded_w, channels)  # [plain, mirrored]
    sources[0, :, pad:pad + height, pad:pad + width] = images
    sources[1, :, pad:pad + height, pad:pad + width] = images.flip(2)
    pixel_runs = sources.view(-1).unfold(0, width * channels, channels)  # run k: the W pixels from pixel k on
    device = images.device
    left = torch.where(flips, 2 * pad - offsets[:, 1], offsets[:, 1])  # (B,)
    first_pixel_of_image = (flips.long() * batch + torch.arange(batch, device=device)) * padded_h * padded_w
    first_pixel_of_row = (offsets[:, :1] + torch.arange(height, device=device)) * padded_w + left[:, None]  # (B, H)
    runs = first_pixel_of_image[:, None] + first_pixel_of_row  # (B, H)
    crops = pixel_runs.index_select(0, runs.flatten()).view(batch, height, width, channels)
    return normalize_images(crops)


def train_augment(images, pad=10, generator=None, rows=None, batch_size=None):
    """The training transform on a uint8 batch on any device -> (B, 3, H, W) float32.

    Under torchrun a process holds some rows of the whole batch: the parameters are drawn for the whole batch
    (batch_size rows) and those of `rows` are applied, so each image is augmented as one process would.
    """
    device = generator.device if generator is not None else images.device
    offsets, flips = random_augment_params(batch_size or len(images), pad, generator, device)
    if rows is not None:
        offsets, flips = offsets[rows], flips[rows]
    return augment_with_params(images, pad, offsets.to(images.device), flips.to(images.device))


# ---------------------------------------------------------------------------------------------- batches

def draw_identities(candidates, num_ids, num_batches, rng):
    """num_ids distinct identities per batch, drawn uniformly from candidates: (num_batches, num_ids) int64."""
    # argsort of random keys = a random permutation per row
    picks = np.argsort(rng.random((num_batches, len(candidates))), axis=1)[:, :num_ids]
    return np.asarray(candidates)[picks]


def draw_members(pool_labels, batch_ids, rng):
    """For each entry of batch_ids, a position into the pool holding that label, uniformly with replacement among
    the pool's members of the label (every label of batch_ids must be in the pool): same shape as batch_ids."""
    order = np.argsort(pool_labels, kind="stable")
    sorted_labels = pool_labels[order]
    first = np.searchsorted(sorted_labels, batch_ids, side="left")
    count = np.searchsorted(sorted_labels, batch_ids, side="right") - first
    draw = (rng.random(batch_ids.shape) * count).astype(np.int64)  # uniform in [0, count)
    return order[first + draw]


def plan_identity_batches(pool_labels_rgb, pool_labels_ir, num_ids, num_pos, num_batches, rng):
    """Positions into the rgb and ir pools for num_batches batches of num_ids identities x num_pos images.

    Identities are drawn without replacement within a batch from those present in both pools, the same ones in
    both modalities (the released IdentitySampler, mode=True); images of an identity with replacement (the AGW
    sampler). Rows are identity-major and aligned across modalities.
    Returns two (num_batches, num_ids * num_pos) int64 arrays.
    """
    common = np.intersect1d(pool_labels_rgb, pool_labels_ir)
    if len(common) < num_ids:
        raise UserError(f"only {len(common)} identities have labeled images in both modalities; "
                        f"a batch needs {num_ids} (lower --batch-size / --pl_batch_size)")
    batch_ids = np.repeat(draw_identities(common, num_ids, num_batches, rng), num_pos, axis=1)
    return draw_members(pool_labels_rgb, batch_ids, rng), draw_members(pool_labels_ir, batch_ids, rng)


def plan_group_batches(group_labels, num_ids, num_pos, num_batches, rng):
    """Positions into one modality's unlabeled images for num_batches batches of num_ids groups x num_pos images,
    each group sharing a class of group_labels (a class per image; -1: the image has none and is never drawn).
    Classes are drawn without replacement within a batch, images with replacement. Each modality is planned on its
    own (the released IdentitySampler, mode=False, draws batch_idx_v and batch_idx_t separately): the visible and
    the infrared groups of a batch are different classes. Returns a (num_batches, num_ids * num_pos) int64 array.
    """
    group_labels = np.asarray(group_labels)
    classes = np.unique(group_labels[group_labels >= 0])
    if len(classes) < num_ids:
        raise ValueError(f"{len(classes)} classes hold unlabeled images; the groups need {num_ids}")
    batch_ids = np.repeat(draw_identities(classes, num_ids, num_batches, rng), num_pos, axis=1)
    return draw_members(group_labels, batch_ids, rng)


def group_classes(group_labels):
    """The number of classes holding at least one image of group_labels (-1: no class)."""
    group_labels = np.asarray(group_labels)
    return len(np.unique(group_labels[group_labels >= 0]))


def plan_unlabeled_batches(unlabeled, num_unlabeled, num_batches, rng):
    """num_unlabeled indices per batch drawn uniformly without replacement from `unlabeled` (all of them if
    fewer), independently per batch -> (num_batches, min(num_unlabeled, len(unlabeled))) int64."""
    unlabeled = np.asarray(unlabeled, dtype=np.int64)
    take = min(num_unlabeled, len(unlabeled))
    # one draw per batch, not per sample: a (batches x unlabeled) matrix of random keys would not fit for SYSU
    draws = [rng.choice(unlabeled, take, replace=False) for _ in range(num_batches)]
    return np.array(draws, dtype=np.int64).reshape(num_batches, take)


WHOLE_BATCH_KEYS = ("_label", "_pseudo")  # per-row values every process receives for the whole batch


class TrainBatches(torch.utils.data.Dataset):
    """Item b is training batch b of one epoch; the whole epoch is planned up front from
    np.random.default_rng([seed, epoch]), so an epoch is reproducible (and resumable) whatever the workers.

    data: the dict of data_manager.load_train_data (rgb_img, ir_img are read).
    rgb_pool / ir_pool: (indices into the modality arrays, labels) of labeled + pseudo-labeled images, optionally
    with a third array flagging the pseudo-labeled ones (then handed out as 'rgb_pseudo', 'ir_pseudo').
    rgb_unlabeled / ir_unlabeled: indices of unlabeled images; each batch takes unlabeled_ids x unlabeled_pos of
    each modality. With unlabeled_groups = (rgb_groups, ir_groups), a class per unlabeled image (aligned with
    rgb_unlabeled / ir_unlabeled; -1 for none), they are unlabeled_ids groups x unlabeled_pos images sharing a
    class, drawn per modality independently (plan_group_batches); without, uniformly without replacement. Neither
    labels nor groups are handed out.
    Item: {'rgb': (P*K, H, W, 3) uint8, 'rgb_label': (P*K,) int64, 'ir', 'ir_label'} (the same P identities,
    identity-major, K each)[, 'rgb_pseudo', 'ir_pseudo': (P*K,) bool] and, with unlabeled images, 'rgb_unl' (U, H, W, 3) uint8, 'rgb_unl_idx' (U,)
    int64, 'ir_unl', 'ir_unl_idx'.
    shard = (process, num_processes): under torchrun every process plans the same epoch and its items hold the
    process's contiguous share of each image set (labels and pseudo flags stay those of the whole batch).
    """

    def __init__(self, data, rgb_pool, ir_pool, num_ids, num_pos, num_batches, seed, epoch,
                 rgb_unlabeled=None, ir_unlabeled=None, unlabeled_ids=0, unlabeled_pos=0, unlabeled_groups=None,
                 shard=(0, 1)):
        num_unlabeled = unlabeled_ids * unlabeled_pos
        if num_unlabeled > 0 and (rgb_unlabeled is None or ir_unlabeled is None):
            raise ValueError("unlabeled images in batches need rgb_unlabeled and ir_unlabeled")
        self.images = {"rgb": data["rgb_img"], "ir": data["ir_img"]}
        rng = np.random.default_rng([seed, epoch])
        rgb_pool_idx, rgb_pool_labels = np.asarray(rgb_pool[0]), np.asarray(rgb_pool[1])
        ir_pool_idx, ir_pool_labels = np.asarray(ir_pool[0]), np.asarray(ir_pool[1])
        pos_rgb, pos_ir = plan_identity_batches(rgb_pool_labels, ir_pool_labels, num_ids, num_pos, num_batches, rng)
        # plan: key -> (num_batches, rows per batch); *_idx keys name images handed out without labels
        self.plan = {"rgb": rgb_pool_idx[pos_rgb], "ir": ir_pool_idx[pos_ir],
                     "rgb_label": rgb_pool_labels[pos_rgb], "ir_label": ir_pool_labels[pos_ir]}
        for modality, pool, positions in (("rgb", rgb_pool, pos_rgb), ("ir", ir_pool, pos_ir)):
            if len(pool) > 2:
                self.plan[f"{modality}_pseudo"] = np.asarray(pool[2], dtype=bool)[positions]
        unlabeled = {"rgb": np.asarray(rgb_unlabeled), "ir": np.asarray(ir_unlabeled)}
        if num_unlabeled > 0 and unlabeled_groups is not None:
            for modality, groups in zip(("rgb", "ir"), unlabeled_groups):
                rows = plan_group_batches(groups, unlabeled_ids, unlabeled_pos, num_batches, rng)
                self.plan[f"{modality}_unl_idx"] = unlabeled[modality][rows]
        elif num_unlabeled > 0:
            for modality in ("rgb", "ir"):
                self.plan[f"{modality}_unl_idx"] = plan_unlabeled_batches(unlabeled[modality], num_unlabeled,
                                                                          num_batches, rng)
        self.num_batches = num_batches
        self.shard = shard

    def __len__(self):
        return self.num_batches

    def __getitem__(self, b):
        batch = {}
        process, num_processes = self.shard
        for key, rows in self.plan.items():
            rows = rows[b]
            if key.endswith(WHOLE_BATCH_KEYS):
                batch[key] = torch.from_numpy(rows)
                continue
            share = len(rows) // num_processes
            rows = rows[process * share:(process + 1) * share]
            modality = key.split("_")[0]
            images = torch.from_numpy(np.ascontiguousarray(self.images[modality][rows]))
            if key.endswith("_unl_idx"):
                batch[f"{modality}_unl"], batch[key] = images, torch.from_numpy(rows)
            else:
                batch[key] = images
        return batch


def default_sigterm(worker_id):
    """Workers leave SIGTERM to the main process (utils.run_cli turns it into a logged stop there); inherited, the
    main process's handler would end each worker with a traceback of its own."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def make_train_loader(batches, workers=0):
    """A DataLoader over TrainBatches: one item is one whole batch of uint8 images."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=False,
                                       worker_init_fn=default_sigterm if workers else None)
