"""Losses of CPL and the repo's pairwise-distance helpers.

- Hetero-center triplet loss: Zhu et al., "Hetero-center loss for cross-modality person re-identification",
  Neurocomputing 2020; Liu et al., "Parameter sharing exploration and hetero-center triplet loss for
  visible-thermal person re-identification", IEEE TMM 2020.
- Dynamic center-based cross-entropy with reverse CE: Wu et al., CPL, Image and Vision Computing 161 (2025);
  the reverse CE term follows Wang et al., "Symmetric cross entropy for robust learning with noisy labels",
  ICCV 2019.
"""
import torch
import torch.nn.functional as F


def euclidean_dist(a, b):
    """Pairwise Euclidean distances.

    The squared distance is clamped (min 1e-12) before the square root: a row compared with itself (a center
    with itself) gives 0, where the gradient of sqrt is infinite and the backward pass would return NaN.

    Args:
        a: (n, d). b: (m, d).
    Returns:
        (n, m) distances.
    """
    squared = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2 * a @ b.t()  # (n, m)
    return squared.clamp(min=1e-12).sqrt()


def weighted_jaccard_dist(a, b):
    """Pairwise weighted Jaccard (Ruzicka) distance of non-negative vectors, 1 - sum(min) / sum(max).

    Args:
        a: (n, d) non-negative. b: (m, d) non-negative.
    Returns:
        (n, m) distances. Two all-zero vectors are at distance 0.
    """
    l1 = torch.cdist(a, b, p=1)  # (n, m)
    return weighted_jaccard_from_l1(l1, a.sum(1, keepdim=True) + b.sum(1).unsqueeze(0))


def weighted_jaccard_from_l1(l1, total):
    """The weighted Jaccard distance from the L1 distance and the sum of both vectors' entries.

    Because min(x, y) = (x + y - |x - y|) / 2 and max(x, y) = (x + y + |x - y|) / 2,
    1 - sum(min) / sum(max) = 2 * ||a - b||_1 / (sum a + sum b + ||a - b||_1): one L1 distance per pair, so
    pairwise distances come from one cdist and the pseudo-label rule's paired ones from one subtraction.
    """
    return 2 * l1 / (total + l1).clamp(min=1e-12)


def hetero_center_triplet(feats, labels, modals, margin=0.3):
    """Hetero-center triplet loss over the (identity, modality) centers of a batch.

    Each center is the mean of its identity's features in one modality; its positive is the same identity's
    center in the other modality, its negative the nearest center of another identity. Centers are found
    from the labels and modalities themselves (index_add), not from the batch order, so any order and any
    P x K (even unequal counts) work. An identity present in one modality only has no positive: d_ap = 0,
    as in the released code, whose max over same-identity centers then finds the center itself.

    Args:
        feats: (B, D) features. labels: (B,) int64 identities >= 0. modals: (B,) int64, VISIBLE 0 / INFRARED 1.
        margin: the triplet margin.
    Returns:
        mean over the G centers of relu(margin + d_ap - d_an), a scalar (0 when the batch has one identity).
    """
    groups, group_of_row = torch.unique(labels * 2 + modals, return_inverse=True)  # (G,), (B,)
    num_groups = len(groups)
    sums = torch.zeros(num_groups, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums = sums.index_add(0, group_of_row, feats)  # (G, D)
    counts = torch.bincount(group_of_row, minlength=num_groups).unsqueeze(1).to(feats.dtype)  # (G, 1)
    centers = sums / counts  # (G, D)
    center_ids, center_modals = groups // 2, groups % 2  # (G,), (G,)
    dist = euclidean_dist(centers, centers)  # (G, G)
    same_id = center_ids.unsqueeze(0) == center_ids.unsqueeze(1)  # (G, G)
    positive = same_id & (center_modals.unsqueeze(0) != center_modals.unsqueeze(1))  # (G, G)
    d_ap = torch.where(positive, dist, torch.zeros_like(dist)).max(dim=1).values  # (G,)
    d_an = torch.where(same_id, torch.full_like(dist, float("inf")), dist).min(dim=1).values  # (G,)
    # d_an is inf when the batch holds one identity: relu(-inf) = 0 with zero gradient; masked all the same,
    # and divided by the count on the device, so the loss costs no host sync
    has_negative = torch.isfinite(d_an)
    per_center = torch.where(has_negative, F.relu(margin + d_ap - d_an), torch.zeros_like(d_an))
    return per_center.sum() / has_negative.sum().clamp(min=1)


def dynamic_center_ce(feats, centers, ce_weight=0.1, rce_weight=1.0, return_group_size=False):
    """Dynamic center-based CE with reverse CE, on the unlabeled rows of a batch (CPL; design section 5).

    y_hat_i = argmin_k d_J(f_i, c_k) (weighted Jaccard); n_i = number of batch rows sharing y_hat_i;
    z_ik = <f_i, c_k> / n_i; L_CE = -mean_i log softmax(z_i)[y_hat_i];
    L_RCE = -mean_i sum_k softmax(z_i)_k * log softmax(onehot(y_hat_i))_k, the log-softmax OF the one-hot
    vector as the paper writes it (it equals log(e + C - 1) - mean_i softmax(z_i)[y_hat_i]).
    The centers are constants here (detached): they move only by their EMA.

    Args:
        feats: (N, D) non-negative global features of the unlabeled rows.
        centers: (C, D) modality-shared global class centers.
        ce_weight: weight of L_CE (the paper's 0.1).
        rce_weight: weight of L_RCE (the paper's 1).
        return_group_size: also return the mean of n_i (how the batch's structure shapes the loss).
    Returns:
        ce_weight * L_CE + rce_weight * L_RCE, a scalar (0, still attached to feats, when N = 0); with return_group_size, the
        pair (loss, mean n_i as a 0-d tensor).
    """
    if feats.shape[0] == 0:
        zero = feats.sum() * 0
        return (zero, zero.detach()) if return_group_size else zero
    centers = centers.detach().to(feats.dtype)
    with torch.no_grad():
        pseudo = weighted_jaccard_dist(feats.detach(), centers).argmin(dim=1)  # (N,)
        count = torch.bincount(pseudo, minlength=centers.shape[0])[pseudo].to(feats.dtype)  # (N,) n_i
    logits = feats @ centers.t() / count.unsqueeze(1)  # (N, C) z
    log_probs = F.log_softmax(logits, dim=1)  # (N, C)
    loss_ce = F.nll_loss(log_probs, pseudo)
    onehot = F.one_hot(pseudo, centers.shape[0]).to(feats.dtype)  # (N, C)
    loss_rce = -(log_probs.exp() * F.log_softmax(onehot, dim=1)).sum(1).mean()
    loss = ce_weight * loss_ce + rce_weight * loss_rce
    return (loss, count.mean()) if return_group_size else loss
