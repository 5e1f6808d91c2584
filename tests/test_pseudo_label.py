"""Class centers, the assignment rule and the pool, on small tensors with hand-checked values."""
import torch

from pseudo_label import ClassCenters, PseudoLabelPool, assign_pseudo_labels, ema_update


def sequential_ema(centers, feats, labels, momentum):
    centers = centers.clone()
    for feat, label in zip(feats, labels):
        centers[label] = momentum * centers[label] + (1 - momentum) * feat
    return centers


def test_ema_update_equals_the_sequential_update():
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(7, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (40,), generator=gen)
    labels[:3] = 2  # a class seen several times in a row
    feats = torch.rand(40, 5, generator=gen, dtype=torch.float64)
    for momentum in (0.0, 0.2, 0.9):
        expected = sequential_ema(centers, feats, labels, momentum)
        assert torch.allclose(ema_update(centers, feats, labels, momentum), expected, atol=1e-12)


def test_ema_update_by_hand():
    # class 0 sees 1 then 3 from 0: 0.2*0 + 0.8*1 = 0.8, then 0.2*0.8 + 0.8*3 = 2.56; class 1 untouched
    centers = torch.tensor([[0.0], [5.0]])
    out = ema_update(centers, torch.tensor([[1.0], [3.0]]), torch.tensor([0, 0]), 0.2)
    assert torch.allclose(out, torch.tensor([[2.56], [5.0]]))


def test_class_centers_update_by_modality_and_shared_global():
    centers = ClassCenters(num_classes=3, num_parts=2, part_dim=2)
    part_feats = torch.tensor([[[1.0, 0], [0, 1]], [[2.0, 0], [0, 2]]])  # (2 rows, 2 parts, 2 dims)
    feats = part_feats.flatten(1)
    labels, modals = torch.tensor([1, 1]), torch.tensor([0, 1])
    centers.update(feats, part_feats, labels, modals, momentum=0.2)
    assert torch.allclose(centers.part_centers[0, 1], 0.8 * part_feats[0])
    assert torch.allclose(centers.part_centers[1, 1], 0.8 * part_feats[1])
    assert centers.part_centers[:, [0, 2]].abs().sum() == 0
    # the global center is shared by both modalities: 0.2*(0.8*f0) + 0.8*f1
    assert torch.allclose(centers.global_centers[1], 0.16 * feats[0] + 0.8 * feats[1])
    state = centers.state_dict()
    assert set(state) == {"part_centers", "global_centers"}


def test_assign_pseudo_labels_applies_both_thresholds():
    part_centers = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # 2 classes, 1 part, 2 dims
    part_feats = torch.tensor([[[1.0, 0.0]],     # confident, on its center -> accepted as 0
                               [[0.0, 1.0]],     # not confident -> rejected
                               [[0.0, 1.0]]])    # confident class 0 but far from center 0 -> rejected
    mean_logits = torch.tensor([[5.0, 0.0], [0.1, 0.0], [5.0, 0.0]])
    accept, labels, conf, dist = assign_pseudo_labels(part_feats, mean_logits, part_centers, 0.8, 0.6)
    assert accept.tolist() == [True, False, False]
    assert labels.tolist() == [0, 0, 0]
    assert torch.allclose(conf[0], torch.softmax(torch.tensor([5.0, 0.0]), 0)[0])
    # weighted Jaccard: identical -> 0; (0,1) vs (1,0): 1 - 0/2 = 1
    assert torch.allclose(dist, torch.tensor([0.0, 1.0, 1.0]))


def test_assign_distance_is_mean_over_parts():
    part_centers = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])  # 1 class, 2 parts
    part_feats = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    # part 0: 0; part 1: 1 - min-sum/max-sum = 1 - 1/2 = 0.5; mean 0.25
    _, _, _, dist = assign_pseudo_labels(part_feats, torch.zeros(1, 1), part_centers, 0.5, 0.6)
    assert torch.allclose(dist, torch.tensor([0.25]))


def test_assign_is_independent_of_chunking_and_matches_a_per_row_rule():
    gen = torch.Generator().manual_seed(0)
    part_centers = torch.rand(7, 3, 5, generator=gen)
    predicted = torch.randint(0, 7, (23,), generator=gen)
    # rows near their class center with peaked logits, plus noise, so the thresholds pass some and not others
    part_feats = part_centers[predicted] + 0.3 * torch.rand(23, 3, 5, generator=gen)
    mean_logits = 3 * torch.randn(23, 7, generator=gen) + 3 * torch.nn.functional.one_hot(predicted, 7)
    whole = assign_pseudo_labels(part_feats, mean_logits, part_centers, 0.5, 0.3, chunk_rows=100)
    for chunk_rows in (1, 4, 10):
        chunked = assign_pseudo_labels(part_feats, mean_logits, part_centers, 0.5, 0.3, chunk_rows=chunk_rows)
        for a, b in zip(whole, chunked):
            assert torch.equal(a, b)
    accept, labels, conf, dist = whole
    for row in range(23):
        probs = torch.softmax(mean_logits[row], 0)
        assert labels[row] == probs.argmax() and torch.isclose(conf[row], probs.max())
        center = part_centers[labels[row]]
        per_part = 1 - torch.minimum(part_feats[row], center).sum(1) / torch.maximum(part_feats[row], center).sum(1)
        assert torch.isclose(dist[row], per_part.mean(), atol=1e-6)
        assert accept[row] == ((probs.max() > 0.5) & (per_part.mean() < 0.3))
    assert 0 < accept.sum() < 23  # the thresholds split this sample, so both branches are checked


def test_pool_three_rounds_in_the_released_order():
    """Add the new images, then forget the oldest floor(0.1 x size), worked by hand."""
    pool = PseudoLabelPool()
    # round 1: 10 accepted -> 10, forget int(0.1 * 10) = 1 (index 0)
    assert pool.update(torch.arange(10), torch.arange(10) % 3, forget=0.1) == 10
    assert pool.indices.tolist() == list(range(1, 10))
    # round 2: 5 and 3 are members (they keep their labels), 0 was forgotten and comes back with a new label,
    # 20 and 21 are new: 9 + 3 = 12, forget int(1.2) = 1 (index 1)
    assert pool.update(torch.tensor([5, 0, 20, 3, 21]), torch.tensor([2, 2, 1, 0, 1]), forget=0.1) == 3
    assert pool.indices.tolist() == list(range(2, 10)) + [0, 20, 21]
    assert pool.labels.tolist() == [i % 3 for i in range(2, 10)] + [2, 1, 1]
    # round 3: nothing new, 11 members: forget int(1.1) = 1 (index 2); an empty round still forgets
    assert pool.update(torch.tensor([9]), torch.tensor([0]), forget=0.1) == 0
    assert pool.indices.tolist() == list(range(3, 10)) + [0, 20, 21]
    assert pool.labels[pool.indices.tolist().index(9)] == 9 % 3


def test_pool_precision_and_state_round_trip():
    pool = PseudoLabelPool()
    pool.update(torch.tensor([0, 2, 3]), torch.tensor([1, 1, 0]), forget=0.1)
    true_labels = torch.tensor([1, 9, 0, 0])
    assert abs(pool.precision(true_labels) - 2 / 3) < 1e-6
    other = PseudoLabelPool()
    other.load_state_dict(pool.state_dict())
    assert other.indices.tolist() == [0, 2, 3] and other.labels.tolist() == [1, 1, 0]
