"""k-reciprocal re-ranking (Z. Zhong, L. Zheng, D. Cao, S. Li, "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), vectorised in torch on the features' device.

The distance is the one the re_ranking function found in person re-id repositories computes (the Python port
of the authors' MATLAB code), over the N = num_q + num_g query and gallery images together:
1. original distance d: squared Euclidean between the concatenated features, each row divided by its largest
   entry (that code divides every column by its max, then transposes);
2. k-reciprocal set R(i, k): j is among the k + 1 nearest of i (i itself included) and i among those of j;
3. expansion: every c in R(i, k1) adds R(c, round(k1 / 2)) when more than 2/3 of it lies in R(i, k1);
4. V[i] = exp(-d[i]) on the expanded set, normalised to sum 1, zero elsewhere;
5. local query expansion (k2 > 1): V[i] becomes the mean of V over the k2 nearest of i (i included);
6. Jaccard distance of V rows: 1 - m / (2 - m), m = sum_k min(V[q, k], V[g, k]) (the rows sum to 1, so this
   is 1 - sum min / sum max);
7. final = (1 - lambda) Jaccard + lambda d, the query x gallery block.

Differences, all of precision: V is float32 (the field's port keeps V and the Jaccard sums in float16, which
moved distances by up to 5e-3, 2e-4 on average, on 600 x 600 random features against float64) and the
min-sums accumulate in float64; exactly equal distances are ordered by torch.topk, not np.argsort.

How it is vectorised: one matrix product gives the distances and one topk every neighbour list; after that
everything works on those (N, k) lists and on the non-zeros of V, never on (N, N) masks. Reciprocity is a
gather (is i in the list of its neighbour?); the expansion test a batched searchsorted of each candidate's
half-size set in the sorted reciprocal set; V is a list of (row, column, value) entries; the query expansion
gathers whole rows of entries and sums duplicates; the Jaccard min-sums are an inverted-index join (each
query entry (q, k) meets the gallery entries of column k), in chunks of pairs sized by a memory budget.
Memory: the (N, N) float32 distance (0.23 GB at SYSU-MM01's N = 7,606 multi-shot), the (num_q, num_g) float64
min-sums, the chunks of the join (MEMORY_BUDGET_BYTES) and lists linear in N.
"""
import numpy as np
import torch


# pairs of the Jaccard join per chunk, at about 64 bytes each (indices, values, the float64 sums' inputs)
MEMORY_BUDGET_BYTES = 256 * 2 ** 20
BYTES_PER_PAIR = 64


def k_reciprocal_distance(query, gallery, k1=20, k2=6, lambda_value=0.3):
    """Re-ranked distance between query and gallery features.

    Args:
        query: (num_q, D) float tensor, L2-normalised features.
        gallery: (num_g, D) float tensor on the same device.
        k1: size of the k-reciprocal neighbourhood (paper: 20); k2: neighbours of the local query expansion
            (paper: 6; 1 turns it off); lambda_value: weight of the original distance (paper: 0.3).
    Returns:
        (num_q, num_g) float32 tensor on the features' device, smaller = closer.
    Raises:
        ValueError: on inconsistent shapes or devices, or parameters out of range.
    """
    check_inputs(query, gallery, k1, k2, lambda_value)
    num_q = len(query)
    dist = original_distance(torch.cat([query, gallery]).float())
    num_all = len(dist)
    # round() halves to even, as the field's np.around; a set can never be larger than the N points
    k_full, k_half, k_expand = min(k1 + 1, num_all), min(round(k1 / 2) + 1, num_all), min(k2, num_all)
    nearest = torch.topk(dist, max(k_full, k_expand), dim=1, largest=False).indices  # (N, k), self first
    rows, cols = expanded_reciprocal_sets(nearest[:, :k_full], nearest[:, :k_half])
    weights = torch.exp(-dist[rows, cols])
    row_sums = torch.zeros(num_all, device=dist.device).index_add_(0, rows, weights)
    weights /= row_sums[rows]
    if k2 > 1:
        rows, cols, weights = local_query_expansion(rows, cols, weights, nearest[:, :k_expand])
    jaccard = jaccard_distance(rows, cols, weights, num_q, num_all)
    return jaccard * (1 - lambda_value) + dist[:num_q, num_q:] * lambda_value


def check_inputs(query, gallery, k1, k2, lambda_value):
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery must be (n, D) and (m, D), got {tuple(query.shape)} and "
                         f"{tuple(gallery.shape)}")
    if len(query) == 0 or len(gallery) == 0:
        raise ValueError("query and gallery must not be empty")
    if query.device != gallery.device:
        raise ValueError(f"query and gallery are on different devices ({query.device}, {gallery.device})")
    if int(k1) != k1 or k1 < 1 or int(k2) != k2 or k2 < 1:
        raise ValueError(f"k1 and k2 must be positive integers, got k1={k1}, k2={k2}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def original_distance(feats):
    """(N, N) squared Euclidean distances of (N, D) features, row i divided by the largest distance of i."""
    sq_norm = feats.pow(2).sum(1, keepdim=True)
    dist = torch.addmm(sq_norm + sq_norm.t(), feats, feats.t(), alpha=-2)
    # the field's port divides each column by its max and transposes: the same, the distance being symmetric
    return dist.div_(dist.amax(dim=1, keepdim=True))


def reciprocal_members(nearest):
    """(N, k) bool: nearest[i, m] is a k-reciprocal neighbour of i (i is in nearest[nearest[i, m]])."""
    own = torch.arange(len(nearest), device=nearest.device)[:, None, None]
    return (nearest[nearest] == own).any(-1)


def csr_gather(starts, counts):
    """For segments [starts[s], starts[s] + counts[s]): (segment of each position, the positions), all
    segments one after the other."""
    device = counts.device
    segment = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    # position = starts[s] + (index in the output - first output index of s); index_select: 2x x[idx] on CPU
    shift = (starts - (counts.cumsum(0) - counts)).index_select(0, segment)
    return segment, shift.add_(torch.arange(len(segment), device=device))


def expanded_reciprocal_sets(full_nearest, half_nearest):
    """The expanded sets: R(i, k1) plus every R(c, k1/2), c in R(i, k1), that has more than 2/3 of its
    members in R(i, k1). full_nearest (N, k1 + 1) and half_nearest (N, k1/2 + 1) are the nearest lists.
    Returns (rows, cols): the (i, j) with j in i's set, unique, sorted by row then column."""
    num_all = len(full_nearest)
    full_member, half_member = reciprocal_members(full_nearest), reciprocal_members(half_nearest)
    rows, slots = full_member.nonzero(as_tuple=True)  # every (i, c) with c in R(i, k1)
    cands = full_nearest[rows, slots]
    cand_sets, cand_member = half_nearest[cands], half_member[cands]  # (P, k_half): R(c, k1/2), padded
    # is each member of R(c, k1/2) in R(i, k1)? a lookup in R(i, k1) sorted, non-members padded with N
    sorted_sets = torch.where(full_member, full_nearest, num_all).sort(1).values[rows]  # (P, k_full)
    pos = torch.searchsorted(sorted_sets, cand_sets).clamp_(max=sorted_sets.shape[1] - 1)
    overlap = (cand_member & (sorted_sets.gather(1, pos) == cand_sets)).sum(1)
    # in float64 like the field's `len(intersection) > 2/3 * len(candidates)`, so exact thirds agree
    accepted = overlap.double() > (2 / 3) * cand_member.sum(1).double()
    take = cand_member[accepted]
    added_rows = rows[accepted][:, None].expand(-1, take.shape[1])[take]
    keys = torch.unique(torch.cat([rows * num_all + cands, added_rows * num_all + cand_sets[accepted][take]]))
    return keys // num_all, keys % num_all


def local_query_expansion(rows, cols, values, nearest):
    """V[i] -> the mean of V over nearest[i] (N, k2), V given by its entries sorted by row.
    Returns the new entries (rows, cols, values), sorted by row then column."""
    num_all, k2 = nearest.shape
    row_count = torch.bincount(rows, minlength=num_all)
    source, pos = csr_gather((row_count.cumsum(0) - row_count)[nearest.reshape(-1)],
                             row_count[nearest.reshape(-1)])  # source // k2 = the row receiving the entry
    keys, inverse = torch.unique((source // k2) * num_all + cols.index_select(0, pos), return_inverse=True)
    sums = torch.zeros(len(keys), device=values.device).index_add_(0, inverse, values.index_select(0, pos))
    return keys // num_all, keys % num_all, sums / k2


def jaccard_distance(rows, cols, values, num_q, num_all):
    """1 - m / (2 - m), m = sum_k min(V[q, k], V[g, k]), for query rows q < num_q and gallery rows g >= num_q
    of V (N, N) given by its entries sorted by row: (num_q, num_all - num_q) float32.

    Only shared columns contribute to m: an inverted-index join, each query entry (q, k) meeting the gallery
    entries of column k. The pairs are made in chunks of the memory budget and summed in float64, so the
    order index_add adds in (not fixed on the GPU) does not show in the float32 result.
    """
    num_g = num_all - num_q
    num_q_entries = int(torch.searchsorted(rows, num_q))  # the entries are sorted by row: queries first
    q_targets = rows[:num_q_entries] * num_g  # where a query entry's sums start in the flat output
    q_cols, q_values = cols[:num_q_entries], values[:num_q_entries]
    g_cols, order = torch.sort(cols[num_q_entries:], stable=True)
    g_rows = rows[num_q_entries:].index_select(0, order) - num_q
    g_values = values[num_q_entries:].index_select(0, order)
    col_count = torch.bincount(g_cols, minlength=num_all)
    col_start = col_count.cumsum(0) - col_count
    pairs_of_entry = col_count[q_cols]
    min_sum = torch.zeros(num_q * num_g, dtype=torch.float64, device=values.device)
    for start, end in pair_chunks(pairs_of_entry.cpu().numpy(), MEMORY_BUDGET_BYTES // BYTES_PER_PAIR):
        entry, g_pos = csr_gather(col_start[q_cols[start:end]], pairs_of_entry[start:end])
        entry += start
        targets = q_targets.index_select(0, entry).add_(g_rows.index_select(0, g_pos))
        pair_min = torch.minimum(q_values.index_select(0, entry), g_values.index_select(0, g_pos))
        min_sum.index_add_(0, targets, pair_min.double())
    min_sum = min_sum.view(num_q, num_g).float()
    return 1 - min_sum / (2 - min_sum)


def pair_chunks(pairs_of_entry, max_pairs):
    """[start, end) ranges of consecutive entries with at most max_pairs pairs each (one entry at least)."""
    cum = np.concatenate([[0], np.cumsum(pairs_of_entry)])
    bounds, start = [], 0
    while start < len(pairs_of_entry):
        end = max(start + 1, int(np.searchsorted(cum, cum[start] + max_pairs, side="right")) - 1)
        bounds.append((start, end))
        start = end
    return bounds
