"""Cross-modality pseudo labels (CPL, Wu et al., IVC 2025, sections 3.3-3.4): class centers, confidence-based
assignment and the pseudo-label pool. Tensor functions only: no dataset, model or file I/O, so each piece is
tested on a handful of rows and runs on whatever device its inputs live on.
"""
import torch
import torch.nn as nn

from loss import weighted_jaccard_from_l1


def ema_update(centers, feats, labels, momentum):
    """Per-sample EMA c_k <- m * c_k + (1 - m) * x, applied to the rows in order, in one vectorised step.

    After n_k updates in batch order the center is m^n_k * c_k + sum_j (1 - m) * m^(n_k - 1 - j) * x_j, where
    j is the sample's position among the batch rows of class k; so one weighted sum per class gives the sequential
    result. Deterministic on every device (no atomic adds).

    Args:
        centers: (C, D) current centers (not modified).
        feats: (N, D) features, detached by the caller or here.
        labels: (N,) int64 class of each row.
        momentum: m, the weight of the old center (the paper's 0.2).
    Returns:
        (C, D) updated centers.
    """
    feats = feats.detach().to(centers.dtype)
    num_classes = centers.shape[0]
    counts = torch.bincount(labels, minlength=num_classes)  # (C,)
    order = torch.argsort(labels, stable=True)
    first_row_of_class = torch.cumsum(counts, 0) - counts  # (C,) where each class starts in sorted order
    position = torch.empty_like(labels)
    position[order] = torch.arange(len(labels), device=labels.device) - first_row_of_class[labels[order]]
    momentum = torch.as_tensor(momentum, dtype=centers.dtype, device=centers.device)
    weights = (1 - momentum) * momentum ** (counts[labels] - 1 - position)  # (N,)
    updated = centers * momentum ** counts.unsqueeze(1)  # classes absent from the batch keep m^0 = 1
    # the per-class weighted sums as one (C, N) x (N, D) product rather than an index_add: index_add's atomic adds
    # sum in a varying order on CUDA, and processes under torchrun must hold bit-identical centers
    sample_weights = torch.zeros(num_classes, len(labels), dtype=centers.dtype, device=centers.device)  # (C, N)
    sample_weights[labels, torch.arange(len(labels), device=labels.device)] = weights
    return updated + sample_weights @ feats


class ClassCenters(nn.Module):
    """Class centers held as buffers, so they ride in the model-like state_dict of a checkpoint.

    part_centers: (2, C, num_parts, part_dim): per modality (0 visible, 1 infrared), per class, per part.
    global_centers: (C, num_parts * part_dim): one modality-shared center per class.
    Centers start at zero; a class that has never been seen is at distance 1 (weighted Jaccard) from any
    non-zero feature, so it can never pass the distance test of the pseudo-label rule.
    """

    def __init__(self, num_classes, num_parts, part_dim):
        super().__init__()
        self.register_buffer("part_centers", torch.zeros(2, num_classes, num_parts, part_dim))
        self.register_buffer("global_centers", torch.zeros(num_classes, num_parts * part_dim))

    @torch.no_grad()
    def update(self, feats, part_feats, labels, modals, momentum):
        """EMA-update from labeled/pseudo-labeled rows: feats (N, P*D), part_feats (N, P, D), labels, modals (N,)."""
        for modal in (0, 1):
            rows = modals == modal
            if rows.any():
                flat = self.part_centers[modal].flatten(1)  # (C, P*D)
                flat = ema_update(flat, part_feats[rows].flatten(1), labels[rows], momentum)
                self.part_centers[modal] = flat.view_as(self.part_centers[modal])
        self.global_centers.copy_(ema_update(self.global_centers, feats, labels, momentum))


def assign_pseudo_labels(part_feats, mean_logits, part_centers, conf_thresh, dist_thresh, chunk_rows=2048):
    """The confidence-based assignment rule for unlabeled images of one modality.

    y_hat = argmax softmax(mean part logits), conf = its probability; d = mean over parts of the weighted
    Jaccard distance between the image's part feature and the same-modality part center of y_hat.
    Accept iff conf > conf_thresh and d < dist_thresh.

    Rows go in chunks so the gathered centers (rows x P x D) stay small (SYSU-MM01 gathers 166 MB at once);
    the rule is a negligible part of a round next to feature extraction (benchmarks/bench_pseudo_label.py
    prints both), so it is written plainly. Results do not depend on the chunk size.

    Args:
        part_feats: (N, P, D) non-negative part features.
        mean_logits: (N, C) part logits averaged over the P parts.
        part_centers: (C, P, D) part centers of the same modality.
    Returns:
        accept (N,) bool, labels (N,) int64, conf (N,), dist (N,).
    """
    conf, labels = mean_logits.float().softmax(dim=1).max(dim=1)
    centers = part_centers.float()
    dist = torch.empty(len(part_feats), device=part_feats.device)
    for start in range(0, len(part_feats), chunk_rows):
        rows = slice(start, start + chunk_rows)
        feats, own_centers = part_feats[rows].float(), centers[labels[rows]]  # (n, P, D) each
        l1 = (feats - own_centers).abs().sum(2)  # (n, P)
        dist[rows] = weighted_jaccard_from_l1(l1, feats.sum(2) + own_centers.sum(2)).mean(1)
    accept = (conf > conf_thresh) & (dist < dist_thresh)
    return accept, labels, conf, dist


class PseudoLabelPool:
    """Accepted (index, label) pairs of one modality, oldest first (like MoCo's queue, without a fixed size).

    A round appends the accepted pairs whose image is not in the pool yet, then forgets the oldest
    floor(forget x pool size): add, then forget, the released code's order. One label per image: a member keeps
    the label it joined with (the released code keys its history by (image, label), so an image can hold two).
    """

    def __init__(self):
        self.indices = torch.empty(0, dtype=torch.long)
        self.labels = torch.empty(0, dtype=torch.long)

    def __len__(self):
        return len(self.indices)

    def update(self, new_indices, new_labels, forget):
        """One round: new_indices (distinct) with their labels; returns the number of images added."""
        new_indices, new_labels = new_indices.cpu().long(), new_labels.cpu().long()
        unseen = ~torch.isin(new_indices, self.indices)
        self.indices = torch.cat([self.indices, new_indices[unseen]])
        self.labels = torch.cat([self.labels, new_labels[unseen]])
        num_forgotten = int(forget * len(self.indices))  # int(0.1 * n), as the released code
        self.indices, self.labels = self.indices[num_forgotten:], self.labels[num_forgotten:]
        return int(unseen.sum())

    def precision(self, true_labels):
        """Fraction of pool labels equal to the hidden ground truth (for the log only); nan for an empty pool."""
        if len(self) == 0:
            return float("nan")
        return float((torch.as_tensor(true_labels)[self.indices] == self.labels).float().mean())

    def state_dict(self):
        return {"indices": self.indices.clone(), "labels": self.labels.clone()}

    def load_state_dict(self, state):
        self.indices, self.labels = state["indices"].long(), state["labels"].long()
