"""CMC, mAP and mINP under the SYSU-MM01 and RegDB protocols, vectorised over queries.

The signatures and semantics are those of the field's evaluation code (the AGW baseline's eval_metrics.py),
so a fork can swap either in. Queries are processed in chunks sized by a memory budget; inside a chunk every
step is an array operation along the ranked gallery axis (no loop over queries or ranks).
"""
import numpy as np

MEMORY_BUDGET_BYTES = 256 * 2 ** 20
BYTES_PER_CELL = 48  # argsort output, gathered ids/cameras, masks and cumulative sums per (query, gallery) cell


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """SYSU-MM01 protocol.

    Args:
        distmat: (num_q, num_g) distances, smaller = closer.
        q_pids, q_camids: (num_q,) identities and cameras of the queries (infrared: 3 or 6).
        g_pids, g_camids: (num_g,) identities and cameras of the gallery (visible).
        max_rank: length of the CMC curve.
    Returns:
        cmc: (max_rank,) float32, the fraction of valid queries whose true identity is within rank k+1 of
            the list of *distinct* gallery identities in rank order (the SYSU authors' protocol).
        mAP, mINP: floats in [0, 1], over the plain ranked match list.
    Gallery images of camera 2 are ignored for queries of camera 3 (the two cameras share a room). Queries
    with no true match left are skipped; a ValueError is raised if none has one.
    """
    return evaluate_ranked(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, distinct_id_cmc=True)


def eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    """RegDB protocol: plain CMC (rank of the first true match), mAP and mINP. Shapes as eval_sysu."""
    return evaluate_ranked(distmat, q_pids, g_pids, None, None, max_rank, distinct_id_cmc=False)


def evaluate_ranked(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, distinct_id_cmc):
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if distmat.ndim != 2 or distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat has shape {distmat.shape}, expected ({len(q_pids)}, {len(g_pids)}) "
                         f"from q_pids and g_pids")
    if q_camids is not None and (len(q_camids) != len(q_pids) or len(g_camids) != len(g_pids)):
        raise ValueError("camera ids must have one entry per query / gallery image")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    num_q, num_g = distmat.shape
    # gallery identities as compact codes, columns grouped by identity, for the distinct-identity CMC
    id_values, g_codes = np.unique(g_pids, return_inverse=True)
    by_id = np.argsort(g_codes, kind="stable")
    id_starts = np.searchsorted(g_codes[by_id], np.arange(len(id_values)))

    chunk = max(1, MEMORY_BUDGET_BYTES // (BYTES_PER_CELL * max(num_g, 1)))
    ranks, aps, inps = [], [], []
    for start in range(0, num_q, chunk):
        rows = slice(start, min(start + chunk, num_q))
        order = np.argsort(distmat[rows], axis=1)  # (c, G) gallery columns, closest first
        matches = g_pids[order] == q_pids[rows, None]  # (c, G)
        if q_camids is not None:
            keep = ~((np.asarray(q_camids)[rows, None] == 3) & (np.asarray(g_camids)[order] == 2))
            matches &= keep
            kept_position = np.cumsum(keep, axis=1)  # 1-based rank among the kept images
        else:
            keep = None
            kept_position = np.broadcast_to(np.arange(1, num_g + 1), matches.shape)
        hits = np.cumsum(matches, axis=1)
        num_hits = hits[:, -1]
        valid = num_hits > 0
        # AP: mean over true matches of precision at the match; INP: hits / rank of the last match
        precision_at_match = np.divide(hits, kept_position, out=np.zeros(hits.shape), where=matches)
        ap = precision_at_match.sum(1)[valid] / num_hits[valid]
        last_match = np.where(matches, kept_position, 0).max(1)
        inp = num_hits[valid] / last_match[valid]
        if distinct_id_cmc:
            rank = distinct_identity_rank(order, keep, matches, g_codes, by_id, id_starts, q_pids[rows],
                                          id_values)[valid]
        else:
            rank = kept_position[np.arange(len(order)), matches.argmax(1)][valid]
        ranks.append(rank)
        aps.append(ap)
        inps.append(inp)
    ranks = np.concatenate(ranks)
    if len(ranks) == 0:
        raise ValueError("no query has a true match in the gallery: check the query and gallery identities")
    cmc = (ranks[:, None] <= np.arange(1, max_rank + 1)).mean(0).astype(np.float32)
    return cmc, float(np.concatenate(aps).mean()), float(np.concatenate(inps).mean())


def distinct_identity_rank(order, keep, matches, g_codes, by_id, id_starts, q_pids, id_values):
    """Rank of the true identity among the distinct gallery identities in rank order (1-based), per query.

    position[g] is where gallery image g lands in the query's ranking; the first appearance of identity u is
    the minimum position over its images (one reduceat over identity-grouped columns). The true identity's
    rank is the number of identities that first appear no later than it does.
    """
    c, num_g = order.shape
    position = np.empty_like(order)
    position[np.arange(c)[:, None], order] = np.arange(num_g)  # inverse permutation, (c, G)
    if keep is not None:  # ignored images never appear
        kept_by_column = np.empty_like(keep)
        kept_by_column[np.arange(c)[:, None], order] = keep
        position = np.where(kept_by_column, position, num_g)
    first_seen = np.minimum.reduceat(position[:, by_id], id_starts, axis=1)  # (c, num_ids)
    true_code = np.searchsorted(id_values, q_pids)
    true_code = np.minimum(true_code, len(id_values) - 1)
    true_first = first_seen[np.arange(c), true_code]
    rank = (first_seen <= true_first[:, None]).sum(1)
    # rows without a match are dropped by the caller; keep their rank harmless
    return np.where(matches.any(1), rank, num_g + 1)
