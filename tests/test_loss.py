"""loss.py: each distance and loss against values computed by hand, and the gradients they must (not) give."""
import math

import pytest
import torch

from loss import (dynamic_center_ce, euclidean_dist, hetero_center_triplet, weighted_jaccard_dist,
                  weighted_jaccard_from_l1)

SQRT2, SQRT5 = math.sqrt(2), math.sqrt(5)


# ---------------------------------------------------------------------------------------------- distances

def test_euclidean_dist_by_hand_and_against_cdist():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]])
    # rows of a vs b: |(3,4)| = 5, |(1,1)| = sqrt 2, 0 (clamped to sqrt(1e-12) = 1e-6); |(2,3)| = sqrt 13, 0, sqrt 2
    expected = torch.tensor([[5.0, SQRT2, 0.0], [math.sqrt(13), 0.0, SQRT2]])
    assert torch.allclose(euclidean_dist(a, b), expected, atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=gen), torch.randn(4, 5, generator=gen)
    assert torch.allclose(euclidean_dist(x, y), torch.cdist(x, y), atol=1e-5)


def test_euclidean_backward_is_finite_with_duplicate_rows():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    euclidean_dist(x, x).sum().backward()  # the diagonal and the duplicate pair are zero distances
    assert torch.isfinite(x.grad).all()


def test_weighted_jaccard_by_hand():
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    # [1,2,0] vs [2,1,1]: sum min = 1+1+0 = 2, sum max = 2+2+1 = 5 -> 1 - 2/5 = 0.6
    #   (L1 form: L1 = 3, sums 3 and 4: 2*3 / (3+4+3) = 0.6)
    # [1,2,0] vs zeros: sum min 0 -> 1; vs itself -> 0; vs [0,0,5] (disjoint support) -> 1
    # zeros vs zeros -> 0 (clamped denominator); zeros vs anything non-zero -> 1
    expected = torch.tensor([[0.6, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(weighted_jaccard_dist(a, b), expected, atol=1e-6)


def test_weighted_jaccard_l1_form_equals_min_max_form():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(7, 9, generator=gen), torch.rand(5, 9, generator=gen)
    a[0, :4] = 0  # some exact zeros, as after a ReLU
    direct = 1 - torch.minimum(a[:, None], b[None]).sum(2) / torch.maximum(a[:, None], b[None]).sum(2)
    assert weighted_jaccard_dist(a, b).shape == (7, 5)
    assert torch.allclose(weighted_jaccard_dist(a, b), direct, atol=1e-6)
    paired = weighted_jaccard_from_l1((a[:5] - b).abs().sum(1), a[:5].sum(1) + b.sum(1))
    assert torch.allclose(paired, direct[:5].diagonal(), atol=1e-6)


# ---------------------------------------------------------------------------------------------- hetero-center triplet

# Four (identity, modality) centers in 2-D, from K = 2 samples each (+-1 around the center):
#   id 0 visible (0,0), id 0 infrared (1,0), id 1 visible (0,2), id 1 infrared (3,2).
CENTER_FEATS = torch.tensor([[0.0, -1], [0, 1], [1, -1], [1, 1], [0, 1], [0, 3], [3, 1], [3, 3]])
CENTER_LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
CENTER_MODALS = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])


def test_hetero_center_triplet_by_hand():
    # d_ap: id 0: |(0,0)-(1,0)| = 1; id 1: |(0,2)-(3,2)| = 3.
    # d_an (nearest center of the other id):
    #   (0,0): min(|(0,2)| = 2, |(3,2)| = sqrt 13) = 2          -> margin + 1 - 2
    #   (1,0): min(|(-1,2)| = sqrt 5, |(2,2)| = 2 sqrt 2) = sqrt 5 -> margin + 1 - sqrt 5
    #   (0,2): min(2, |(1,-2)| = sqrt 5) = 2                     -> margin + 3 - 2
    #   (3,2): min(sqrt 13, 2 sqrt 2) = 2 sqrt 2                 -> margin + 3 - 2 sqrt 2
    # margin 2: 1, 3 - sqrt 5 = 0.764, 3, 5 - 2 sqrt 2 = 2.172, all positive: mean = (12 - sqrt 5 - 2 sqrt 2) / 4
    loss = hetero_center_triplet(CENTER_FEATS, CENTER_LABELS, CENTER_MODALS, margin=2.0)
    assert loss.item() == pytest.approx((12 - SQRT5 - 2 * SQRT2) / 4, abs=1e-5)
    # margin 0.3: 0.3 - 1 < 0, 1.3 - sqrt 5 < 0, 0.3 + 1 = 1.3, 3.3 - 2 sqrt 2 = 0.4716 -> mean (1.3 + 0.4716) / 4
    loss = hetero_center_triplet(CENTER_FEATS, CENTER_LABELS, CENTER_MODALS, margin=0.3)
    assert loss.item() == pytest.approx((1.3 + 3.3 - 2 * SQRT2) / 4, abs=1e-5)


def test_hetero_center_triplet_ignores_batch_order_and_label_values():
    expected = hetero_center_triplet(CENTER_FEATS, CENTER_LABELS, CENTER_MODALS, margin=2.0)
    for seed in range(3):
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
        permuted = hetero_center_triplet(CENTER_FEATS[perm], CENTER_LABELS[perm], CENTER_MODALS[perm], margin=2.0)
        assert permuted.item() == pytest.approx(expected.item(), abs=1e-6)
    relabelled = torch.where(CENTER_LABELS == 0, 17, 5)  # non-contiguous ids, in the other order
    assert hetero_center_triplet(CENTER_FEATS, relabelled, CENTER_MODALS, 2.0).item() == pytest.approx(expected.item())


def reference_hetero_center_triplet(feats, labels, modals, margin):
    """A per-center loop written straight from the definition, for random batches."""
    keys = sorted({(int(y), int(m)) for y, m in zip(labels, modals)})
    centers = {key: feats[(labels == key[0]) & (modals == key[1])].mean(0) for key in keys}
    losses = []
    for (y, m), center in centers.items():
        d_ap = (center - centers[(y, 1 - m)]).norm().item() if (y, 1 - m) in centers else 0.0
        d_an = min((center - other).norm().item() for (y2, _), other in centers.items() if y2 != y)
        losses.append(max(0.0, margin + d_ap - d_an))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("num_ids, rgb_per_id, ir_per_id", [(4, 3, 3), (3, 1, 1), (5, 2, 4)])
def test_hetero_center_triplet_matches_a_loop_for_any_p_by_k(num_ids, rgb_per_id, ir_per_id):
    gen = torch.Generator().manual_seed(num_ids)
    labels = torch.cat([torch.arange(num_ids).repeat_interleave(rgb_per_id),
                        torch.arange(num_ids).repeat_interleave(ir_per_id)])
    modals = torch.cat([torch.zeros(num_ids * rgb_per_id), torch.ones(num_ids * ir_per_id)]).long()
    feats = torch.randn(len(labels), 8, generator=gen) * 0.3 + labels.unsqueeze(1) * 0.1
    loss = hetero_center_triplet(feats, labels, modals, margin=0.3)
    assert loss.item() == pytest.approx(reference_hetero_center_triplet(feats, labels, modals, 0.3), abs=1e-5)


def test_hetero_center_triplet_far_apart_is_zero_and_overlapping_is_positive():
    far = CENTER_FEATS + torch.tensor([0.0, 100.0]) * CENTER_LABELS.unsqueeze(1)  # id 1 moved 100 up
    assert hetero_center_triplet(far, CENTER_LABELS, CENTER_MODALS).item() == 0
    # the two identities share their centers in each modality: d_an = 0 < d_ap + margin
    overlap = torch.tensor([[0.0, 0], [0, 0], [5, 0], [5, 0], [0, 0], [0, 0], [5, 0], [5, 0]], requires_grad=True)
    loss = hetero_center_triplet(overlap, CENTER_LABELS, CENTER_MODALS)
    assert loss.item() == pytest.approx(0.3 + 5.0, abs=1e-4)  # d_ap = 5, d_an = 0 (clamped) for every center
    loss.backward()
    assert torch.isfinite(overlap.grad).all()  # zero center distances do not give NaN


def test_hetero_center_triplet_edge_cases():
    # one identity: no negative anywhere -> 0, still a tensor in the graph
    feats = torch.randn(4, 3, requires_grad=True)
    loss = hetero_center_triplet(feats, torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    # an identity in one modality only: d_ap = 0 (as the released code) -> max(0, 0.3 + 0 - d_an)
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.1]])  # id 0 visible (0,0), infrared (1,0); id 1 visible
    labels, modals = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    # (0,0): 0.3 + 1 - 0.1 = 1.2; (1,0): 0.3 + 1 - |(1,-0.1)| = 1.3 - sqrt(1.01); (0,0.1): 0.3 + 0 - 0.1 = 0.2
    expected = (1.2 + 1.3 - math.sqrt(1.01) + 0.2) / 3
    assert hetero_center_triplet(feats, labels, modals).item() == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------------- dynamic center CE

def test_dynamic_center_ce_by_hand():
    centers = torch.tensor([[4.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    feats = torch.tensor([[1.0, 0.5, 0], [0, 2, 0], [0, 0, 3]])
    # nearest center by weighted Jaccard, 2 L1 / (sum f + sum c + L1):
    #   f1 = (1, .5, 0): c0: L1 3.5, 7 / 9 = .778; c1: L1 1.5, 3 / 4 = .75; c2: L1 2.5, 5 / 5 = 1 -> y1 = 1
    #     (the largest inner product would pick c0: 4 > .5 -- the rule is Jaccard, not the logits)
    #   f2 = (0, 2, 0): c1: L1 1, 2 / 4 = .5; c0, c2: 1 -> y2 = 1;  f3 = (0, 0, 3): c2: 4 / 6 -> y3 = 2
    # n = (2, 2, 1); z = <f, c> / n: z1 = (4, .5, 0) / 2 = (2, .25, 0); z2 = (0, 2, 0) / 2 = (0, 1, 0); z3 = (0, 0, 3)
    e = math.e
    log_norms = [math.log(e ** 2 + e ** 0.25 + 1), math.log(1 + e + 1), math.log(2 + e ** 3)]
    z_true = [0.25, 1.0, 3.0]
    l_ce = sum(norm - z for norm, z in zip(log_norms, z_true)) / 3
    # log softmax of a one-hot over C = 3: 1 - log(e + 2) at the label, -log(e + 2) elsewhere, so
    # sum_k p_k log softmax(onehot)_k = p_y - log(e + 2) and L_RCE = log(e + 2) - mean p_y
    p_true = [math.exp(z - norm) for norm, z in zip(log_norms, z_true)]
    l_rce = math.log(e + 2) - sum(p_true) / 3
    assert dynamic_center_ce(feats, centers, ce_weight=0.1).item() == pytest.approx(0.1 * l_ce + l_rce, abs=1e-6)
    assert dynamic_center_ce(feats, centers, ce_weight=0.0).item() == pytest.approx(l_rce, abs=1e-6)
    assert dynamic_center_ce(feats, centers, ce_weight=1.0).item() == pytest.approx(l_ce + l_rce, abs=1e-6)
    assert dynamic_center_ce(feats, centers, ce_weight=1.0, rce_weight=0.0).item() == pytest.approx(l_ce, abs=1e-6)
    assert dynamic_center_ce(feats, centers, ce_weight=0.1, rce_weight=0.5).item() == pytest.approx(
        0.1 * l_ce + 0.5 * l_rce, abs=1e-6)


def test_dynamic_center_ce_gradients_reach_features_only():
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(6, 5, generator=gen).requires_grad_(True)
    centers = torch.rand(3, 5, generator=gen).requires_grad_(True)  # as if a parameter: must stay untouched
    loss = dynamic_center_ce(feats, centers)
    loss.backward()
    assert torch.isfinite(loss) and feats.grad is not None and feats.grad.abs().sum() > 0
    assert centers.grad is None


def test_dynamic_center_ce_without_unlabeled_rows_is_zero():
    feats = torch.zeros(0, 5, requires_grad=True)
    loss = dynamic_center_ce(feats, torch.rand(3, 5))
    assert loss.item() == 0 and loss.requires_grad
