"""data_loader: decoding, the batched train transform against torchvision's per-image pipeline, and the
epoch's P x K identity batches with random unlabeled images."""
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from benchmarks.bench_data import per_image_train_transform
from data_loader import (IMAGENET_MEAN, IMAGENET_STD, TrainBatches, augment_with_params, load_images,
                         make_train_loader, normalize_images, plan_identity_batches, read_image, train_augment)
from utils import UserError


# ---------------------------------------------------------------------------------------------- decoding

def test_read_image_is_pil_rgb_lanczos_and_load_images_keeps_order(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 20), dtype=np.uint8), mode="L").save(path)  # grey -> RGB
        paths.append(path)
    expected = np.stack([np.asarray(Image.open(p).convert("RGB").resize((12, 24), Image.LANCZOS)) for p in paths])
    assert read_image(paths[3], 12, 24).shape == (24, 12, 3)
    assert np.array_equal(read_image(paths[3], 12, 24), expected[3])
    for workers in (0, 3):
        images = load_images(paths, 12, 24, workers=workers, desc="test")
        assert images.dtype == np.uint8 and np.array_equal(images, expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_is_a_user_error_naming_the_file(tmp_path, workers):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 16)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(UserError, match="broken.jpg") as err:
        load_images([str(good), str(bad), str(good)], 8, 16, workers=workers)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="missing.jpg"):
        read_image(str(tmp_path / "missing.jpg"), 8, 16)


# ---------------------------------------------------------------------------------------------- transforms

def torchvision_train_pipeline(height, width, pad):
    """The AGW baseline's per-image training transform."""
    return T.Compose([T.ToPILImage(), T.Pad(pad), T.RandomCrop((height, width)), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def replay_torchvision_draws(num_images, height, width, pad, seed):
    """The crop offsets and flips the pipeline above draws from torch's global RNG after manual_seed(seed):
    per image RandomCrop.get_params (top, then left), then RandomHorizontalFlip's torch.rand(1) < 0.5."""
    torch.manual_seed(seed)
    offsets, flips = [], []
    for _ in range(num_images):
        top = torch.randint(0, height + 2 * pad - height + 1, size=(1,)).item()
        left = torch.randint(0, width + 2 * pad - width + 1, size=(1,)).item()
        offsets.append((top, left))
        flips.append(bool(torch.rand(1) < 0.5))
    return torch.tensor(offsets), torch.tensor(flips)


def test_batched_augmentation_equals_torchvision_per_image_pipeline():
    height, width, pad, num_images = 24, 12, 10, 24
    images = torch.randint(0, 256, (num_images, height, width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    pipeline = torchvision_train_pipeline(height, width, pad)
    torch.manual_seed(5)
    reference = torch.stack([pipeline(image.numpy()) for image in images])
    offsets, flips = replay_torchvision_draws(num_images, height, width, pad, seed=5)
    assert flips.any() and not flips.all() and (offsets == 0).any() and (offsets == 2 * pad).any()  # edges covered
    batched = augment_with_params(images, pad, offsets, flips)
    assert batched.shape == (num_images, 3, height, width) and batched.dtype == torch.float32
    assert batched.is_contiguous(memory_format=torch.channels_last)  # the layout the GPU path trains in
    assert (batched - reference).abs().max().item() <= 1e-6


def test_benchmark_baseline_is_the_same_transform():
    # per_image_train_transform is bench_data.py's baseline: it must compute what the batched path computes
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 20, 10, 3), dtype=torch.uint8, generator=gen)
    offsets = torch.tensor([[0, 0], [20, 20], [3, 17], [10, 10], [20, 0], [5, 9]])
    flips = torch.tensor([False, True, True, False, True, False])
    batched = augment_with_params(images, 10, offsets, flips)
    for i in range(6):
        reference = per_image_train_transform(images[i].numpy(), 10, int(offsets[i, 0]), int(offsets[i, 1]),
                                              bool(flips[i]))
        assert torch.allclose(batched[i], reference, atol=1e-6)


def test_train_augment_outputs_are_random_crops_and_flips_of_the_padded_images():
    # every output must be one of the (2*pad+1)^2 crops, flipped or not, that torchvision's pipeline can give;
    # found by trying them all, so this checks train_augment without reusing how it draws its parameters
    height, width, pad, num_images = 8, 6, 3, 64
    images = torch.randint(0, 256, (num_images, height, width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    out = train_augment(images, pad, torch.Generator().manual_seed(3))
    assert out.shape == (num_images, 3, height, width) and out.dtype == torch.float32
    found = []
    for image, augmented in zip(images, out):
        matches = [(top, left, flip) for top in range(2 * pad + 1) for left in range(2 * pad + 1)
                   for flip in (False, True)
                   if torch.allclose(per_image_train_transform(image.numpy(), pad, top, left, flip), augmented,
                                     atol=1e-6)]
        assert matches, "an output that no crop/flip of its image gives"
        found.append(matches[0])
    tops, lefts, flips = zip(*found)
    # the draws vary: both flips, many offsets, the edges of the range reached (64 draws of 7 values)
    assert 0 < sum(flips) < num_images and len(set(tops)) >= 5 and len(set(lefts)) >= 5
    assert {0, 2 * pad} <= set(tops) | set(lefts)
    assert torch.equal(out, train_augment(images, pad, torch.Generator().manual_seed(3)))  # reproducible
    assert not torch.equal(out, train_augment(images, pad, torch.Generator().manual_seed(4)))
    assert images.dtype == torch.uint8 and images.shape == (num_images, height, width, 3)  # input untouched


def test_normalize_images_is_to_tensor_plus_normalize():
    images = torch.randint(0, 256, (3, 8, 4, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([reference(image.numpy()) for image in images])
    assert (normalize_images(images) - expected).abs().max().item() <= 1e-6


# ---------------------------------------------------------------------------------------------- batches

def indexed_data(num_rgb, num_ir):
    """Arrays whose image i holds the value i (mod 256) in every pixel, so a batch shows which rows it read."""
    def images(n):
        return np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 1, 3)).copy()
    return {"rgb_img": images(num_rgb), "ir_img": images(num_ir)}


def test_identity_batches_pair_p_identities_times_k_images_in_both_modalities():
    num_ids, num_pos, num_batches = 4, 3, 40
    data = indexed_data(200, 100)
    # pools hold a subset of rows (labeled + pseudo-labeled) with pool labels; ids 10, 11 only in infrared
    rgb_rows = np.arange(0, 200, 4)  # 50 rows, 5 per identity 0..9
    rgb_pool = (rgb_rows, np.repeat(np.arange(10), 5))
    ir_rows = np.arange(0, 72) + 20
    ir_pool = (ir_rows, np.repeat(np.arange(12), 6))
    batches = TrainBatches(data, rgb_pool, ir_pool, num_ids, num_pos, num_batches, seed=1, epoch=2)
    assert len(batches) == num_batches
    seen_rows = set()
    for b in range(num_batches):
        batch = batches[b]
        assert set(batch) == {"rgb", "rgb_label", "ir", "ir_label"}
        assert batch["rgb"].shape == (12, 2, 1, 3) and batch["rgb"].dtype == torch.uint8
        assert batch["rgb_label"].dtype == torch.int64 and torch.equal(batch["rgb_label"], batch["ir_label"])
        ids = batch["rgb_label"].view(num_ids, num_pos)
        assert (ids == ids[:, :1]).all()  # identity-major, K each
        assert len(set(ids[:, 0].tolist())) == num_ids and ids.max() < 10  # distinct, in both pools
        for modality, (rows, labels) in (("rgb", rgb_pool), ("ir", ir_pool)):
            values = batch[modality][:, 0, 0, 0].numpy()  # the rows read (all < 256 here)
            position = np.searchsorted(rows, values)
            assert np.array_equal(rows[position], values)  # only pool rows
            assert np.array_equal(labels[position], batch[f"{modality}_label"].numpy())  # with the pool's label
        seen_rows.update(batch["rgb"][:, 0, 0, 0].tolist())
    assert seen_rows == set(rgb_rows.tolist())  # every pool entry of every identity gets drawn


def test_epoch_plan_depends_only_on_seed_and_epoch():
    data = indexed_data(60, 60)
    pool = (np.arange(60), np.repeat(np.arange(6), 10))
    unlabeled = np.arange(30, 60)

    def epoch_batches(seed, epoch):
        batches = TrainBatches(data, pool, pool, 3, 2, 5, seed, epoch, unlabeled, unlabeled, 2, 2)
        return [batches[b] for b in range(len(batches))]

    first = epoch_batches(0, 7)
    again = epoch_batches(0, 7)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(first, again) for k in x)
    for other in (epoch_batches(0, 8), epoch_batches(1, 7)):
        assert any(not torch.equal(x["rgb"], y["rgb"]) for x, y in zip(first, other))
    # a DataLoader (here with worker processes) hands out exactly these batches, in order
    loaded = list(make_train_loader(TrainBatches(data, pool, pool, 3, 2, 5, 0, 7, unlabeled, unlabeled, 2, 2), workers=2))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(first, loaded) for k in x) and len(loaded) == 5


def test_unlabeled_images_are_random_distinct_and_come_without_labels():
    data = indexed_data(120, 120)
    pool = (np.arange(0, 40), np.repeat(np.arange(8), 5))
    rgb_unlabeled, ir_unlabeled = np.arange(40, 120), np.arange(60, 100)
    batches = TrainBatches(data, pool, pool, 2, 2, 200, 3, 0, rgb_unlabeled, ir_unlabeled, 3, 2)
    counts = np.zeros(120, dtype=np.int64)
    for b in range(len(batches)):
        batch = batches[b]
        assert set(batch) == {"rgb", "rgb_label", "ir", "ir_label", "rgb_unl", "rgb_unl_idx", "ir_unl", "ir_unl_idx"}
        for modality, unlabeled in (("rgb", rgb_unlabeled), ("ir", ir_unlabeled)):
            idx = batch[f"{modality}_unl_idx"].numpy()
            assert len(idx) == 6 and len(set(idx.tolist())) == 6 and np.isin(idx, unlabeled).all()
            assert np.array_equal(batch[f"{modality}_unl"][:, 0, 0, 0].numpy(), idx)  # the images of those rows
        counts[batch["rgb_unl_idx"].numpy()] += 1
    # uniform: 200 batches x 6 draws over 80 images = 15 each on average
    assert counts[:40].sum() == 0 and counts[40:].min() >= 3 and counts[40:].max() <= 32
    # fewer unlabeled images than asked: all of them, each once
    few = TrainBatches(data, pool, pool, 2, 2, 3, 3, 0, np.array([7, 9]), np.array([5]), 3, 2)
    assert sorted(few[0]["rgb_unl_idx"].tolist()) == [7, 9] and few[2]["ir_unl_idx"].tolist() == [5]


def test_grouped_unlabeled_images_share_a_class_per_group_drawn_per_modality():
    data = indexed_data(120, 120)
    pool = (np.arange(0, 40), np.repeat(np.arange(8), 5))
    rgb_unlabeled, ir_unlabeled = np.arange(40, 120), np.arange(50, 110)
    # a class per unlabeled image (e.g. predicted at a round); class 10 visible only; -1: no class (never drawn)
    rgb_groups = np.arange(80) % 11
    ir_groups = np.where(np.arange(60) % 7 == 6, -1, np.arange(60) % 10)
    batches = TrainBatches(data, pool, pool, 2, 2, 50, 3, 0, rgb_unlabeled, ir_unlabeled, unlabeled_ids=3,
                           unlabeled_pos=4, unlabeled_groups=(rgb_groups, ir_groups))
    group_of = {"rgb": dict(zip(rgb_unlabeled, rgb_groups)), "ir": dict(zip(ir_unlabeled, ir_groups))}
    same_classes, seen = [], {"rgb": set(), "ir": set()}
    for b in range(len(batches)):
        batch = batches[b]
        classes = {}
        for modality, unlabeled in (("rgb", rgb_unlabeled), ("ir", ir_unlabeled)):
            idx = batch[f"{modality}_unl_idx"].numpy()
            assert len(idx) == 12 and np.isin(idx, unlabeled).all()
            assert np.array_equal(batch[f"{modality}_unl"][:, 0, 0, 0].numpy(), idx)
            classes[modality] = np.array([group_of[modality][i] for i in idx]).reshape(3, 4)
            assert (classes[modality] == classes[modality][:, :1]).all()  # 3 groups of 4 sharing a class
            assert len(set(classes[modality][:, 0])) == 3 and (classes[modality] >= 0).all()
            seen[modality].update(classes[modality][:, 0].tolist())
        same_classes.append(set(classes["rgb"][:, 0]) == set(classes["ir"][:, 0]))
        assert set(batch) == {"rgb", "rgb_label", "ir", "ir_label", "rgb_unl", "rgb_unl_idx", "ir_unl", "ir_unl_idx"}
    # drawn independently per modality, as the released IdentitySampler(mode=False): a modality's own classes (10 is
    # visible-only), and the two modalities' groups are other classes in almost every batch (rarely the same 3 of ~10)
    assert seen["rgb"] == set(range(11)) and seen["ir"] == set(range(10))
    assert sum(same_classes) <= 3


def test_too_few_common_identities_is_a_user_error():
    with pytest.raises(UserError, match="identities"):
        plan_identity_batches(np.array([0, 1, 1]), np.array([1, 2]), 2, 2, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rgb_unlabeled"):
        TrainBatches(indexed_data(4, 4), (np.arange(4), np.arange(4)), (np.arange(4), np.arange(4)), 2, 1, 1, 0, 0,
                     unlabeled_ids=2, unlabeled_pos=1)
