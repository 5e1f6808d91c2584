"""CMC, mAP and mINP under the SYSU-MM01 and RegDB protocols, vectorised over queries.

The signatures and semantics are those of the field's evaluation code (the AGW baseline's eval_metrics.py),
so a fork can swap either in. Two differences, both deliberate:
- a query without a true match is left out of the CMC as well as of mAP/mINP (AGW adds its CMC row, all
  zeros, before skipping it, but divides by the number of valid queries: style.md trap c.9);
- a gallery shorter than max_rank gives a CMC padded with its last value (AGW shortens the curve).

Queries are processed in chunks sized by a memory budget; inside a chunk every step is an array operation
(one argsort, a gather, a comparison, then work on the few true matches only); no loop over queries or ranks.
Ties between equal distances are ordered by np.argsort's default sort, as in the field's code.
"""
import numpy as np

# per chunk of queries: the distance rows (<= 8 bytes per cell), the argsort output (8), the ranked identity
# codes (<= 4) and the match mask (1)
MEMORY_BUDGET_BYTES = 64 * 2 ** 20
BYTES_PER_CELL = 21
# the distinct-identity rank looks at most this many ranked images per query before widening for the few
# queries that still have fewer than max_rank identities in view (see distinct_identity_rank)
PREFIX_PER_RANK = 8


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """SYSU-MM01 protocol: CMC over distinct gallery identities, mAP and mINP.

    Args:
        distmat: (num_q, num_g) distances, smaller = closer (e.g. -cosine of L2-normalised features).
        q_pids, q_camids: (num_q,) identities and cameras of the queries (infrared: cameras 3 and 6).
        g_pids, g_camids: (num_g,) identities and cameras of the gallery (visible: cameras 1, 2, 4, 5).
        max_rank: length of the CMC curve.
    Returns:
        cmc: (max_rank,) float64; cmc[k] = fraction of valid queries whose identity is among the first k+1
            *distinct* gallery identities in rank order (each identity counted at its first appearance: the
            SYSU-MM01 authors' protocol).
        mAP: float in [0, 1], mean over valid queries of the average precision of the plain ranked list.
        mINP: float in [0, 1], mean over valid queries of (number of true matches) / (rank of the last one).
    Queries of camera 3 ignore gallery images of camera 2 (the two cameras share a room): those images are
    removed from the query's ranked list before anything is counted. A valid query is one with at least one
    true match left; the others are skipped.
    Raises:
        ValueError: on inconsistent shapes, NaN distances, or when no query has a true match.
    """
    distmat, q_pids, g_pids = check_inputs(distmat, q_pids, g_pids, max_rank)
    q_camids = as_vector(q_camids, "q_camids", len(q_pids))
    g_camids = as_vector(g_camids, "g_camids", len(g_pids))
    # the camera rule as a column selection: camera-3 queries are ranked against the gallery minus camera 2,
    # which keeps the relative order of the other images, so it equals removing them after ranking (up to
    # the order of exactly equal distances, which argsort leaves unspecified anyway) and sorts fewer columns
    ignores_cam2 = q_camids == 3
    groups = [(np.flatnonzero(~ignores_cam2), None), (np.flatnonzero(ignores_cam2), np.flatnonzero(g_camids != 2))]
    results = [rank_queries(distmat, rows, cols, q_pids, g_pids, max_rank, distinct_ids=True)
               for rows, cols in groups]
    return summarise(results, max_rank)


def eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    """RegDB protocol: plain CMC (rank of the first true match), mAP and mINP.

    Args and Returns as eval_sysu (distmat (num_q, num_g), smaller = closer), without cameras: cmc[k] is
    the fraction of valid queries whose first true match is within the first k+1 gallery images.
    """
    distmat, q_pids, g_pids = check_inputs(distmat, q_pids, g_pids, max_rank)
    return summarise([rank_queries(distmat, np.arange(len(q_pids)), None, q_pids, g_pids, max_rank,
                                   distinct_ids=False)], max_rank)


# ---------------------------------------------------------------------------------------------- helpers

def as_vector(values, name, length):
    values = np.asarray(values)
    if values.ndim != 1 or len(values) != length:
        raise ValueError(f"{name} must be a vector of length {length}, got shape {values.shape}")
    return values


def check_inputs(distmat, q_pids, g_pids, max_rank):
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if q_pids.ndim != 1 or g_pids.ndim != 1:
        raise ValueError(f"q_pids and g_pids must be vectors, got shapes {q_pids.shape} and {g_pids.shape}")
    if distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat has shape {distmat.shape}, expected (num_q, num_g) = "
                         f"({len(q_pids)}, {len(g_pids)}) from q_pids and g_pids")
    if distmat.dtype.kind not in "fiu":
        raise ValueError(f"distmat must hold real numbers, got dtype {distmat.dtype}")
    if int(max_rank) != max_rank or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank}")
    return distmat, q_pids, g_pids


def identity_codes(q_pids, g_pids):
    """Gallery identities as codes 0..num_ids-1 in a small integer type (cheaper to gather), and the
    queries' codes (-1 for an identity absent from the gallery, which then never matches)."""
    id_values, g_codes = np.unique(g_pids, return_inverse=True)
    dtype = np.int16 if len(id_values) < 2 ** 15 - 1 else np.int32
    q_codes = np.searchsorted(id_values, q_pids)
    found = q_codes < len(id_values)
    found[found] = id_values[q_codes[found]] == q_pids[found]
    return g_codes.astype(dtype), np.where(found, q_codes, -1).astype(dtype), len(id_values)


def rank_queries(distmat, rows, cols, q_pids, g_pids, max_rank, distinct_ids):
    """Rank the gallery columns `cols` (None: all) for the query rows `rows`, chunk by chunk.

    Returns (rank, ap, inp), each (num_valid,) for the queries of `rows` with a true match: the 1-based CMC
    rank (distinct-identity rank if distinct_ids, else the position of the first true match; either is
    exact up to max_rank and only known to exceed it beyond), the average precision and the INP.
    """
    if cols is not None:
        g_pids = g_pids[cols]
    g_codes, q_codes, num_ids = identity_codes(q_pids[rows], g_pids)
    num_g = len(g_pids)
    chunk = max(1, MEMORY_BUDGET_BYTES // (BYTES_PER_CELL * max(num_g, 1)))
    ranks, aps, inps = [np.empty(0, np.int64)], [np.empty(0)], [np.empty(0)]  # a group may be empty
    for start in range(0, len(rows), chunk):
        chunk_rows = rows[start:start + chunk]
        dist = distmat[chunk_rows] if cols is None else distmat[np.ix_(chunk_rows, cols)]
        if dist.dtype.kind == "f" and np.isnan(dist).any():
            raise ValueError("distmat contains NaN (non-finite features?)")
        ranked_codes = g_codes[np.argsort(dist, axis=1)]  # (c, G) identity codes, closest first
        matches = ranked_codes == q_codes[start:start + chunk, None]  # (c, G)
        valid_rows, first, ap, inp = match_statistics(matches)
        if distinct_ids:
            rank = distinct_identity_rank(ranked_codes, valid_rows, first, num_ids, max_rank)
        else:
            rank = first + 1
        ranks.append(rank)
        aps.append(ap)
        inps.append(inp)
    return np.concatenate(ranks), np.concatenate(aps), np.concatenate(inps)


def match_statistics(matches):
    """Per row of a (c, G) ranked match mask, for the rows with at least one match:
    (row index, 0-based position of the first match, average precision, INP).

    Only the true matches are visited: AP = mean over the k-th match at 0-based position p of k / (p + 1);
    INP = number of matches / (position of the last match + 1).
    """
    num_rows, num_g = matches.shape
    match_row, match_pos = np.divmod(np.flatnonzero(matches), num_g)  # row-major: positions ascend per row
    num_matches = np.bincount(match_row, minlength=num_rows)
    ends = np.cumsum(num_matches)
    starts = ends - num_matches
    kth = np.arange(1, len(match_pos) + 1) - np.repeat(starts, num_matches)  # 1-based index within the row
    precision_sum = np.bincount(match_row, weights=kth / (match_pos + 1.0), minlength=num_rows)
    valid_rows = np.flatnonzero(num_matches)
    count = num_matches[valid_rows]
    first = match_pos[starts[valid_rows]]
    last = match_pos[ends[valid_rows] - 1]
    return valid_rows, first, precision_sum[valid_rows] / count, count / (last + 1.0)


def count_distinct_before(ranked_codes, rows, stop, num_ids):
    """For each i, the number of distinct codes in ranked_codes[rows[i], :stop[i]] (codes in 0..num_ids-1).

    A boolean scatter into a (len(rows), num_ids + 1) table: positions at or past stop[i] write into the
    spare last column, which is not counted.
    """
    width = int(stop.max(initial=0))
    prefix = ranked_codes[rows, :width]
    targets = np.where(np.arange(width) < stop[:, None], prefix, num_ids)
    seen = np.zeros((len(rows), num_ids + 1), dtype=bool)
    seen[np.arange(len(rows))[:, None], targets] = True
    return seen[:, :num_ids].sum(1)


def distinct_identity_rank(ranked_codes, rows, first, num_ids, max_rank):
    """1-based rank of the true identity in the list of distinct gallery identities in rank order, for the
    given rows whose first true match is at 0-based position `first`: 1 + the number of distinct identities
    ranked before that match (the true identity cannot be among them).

    Only the CMC needs it, and only up to max_rank, so each row's prefix is capped; rows whose match lies past
    the cap and whose capped prefix shows fewer than max_rank identities are counted again in full.
    Beyond max_rank the result is a lower bound (still > max_rank).
    """
    cap = PREFIX_PER_RANK * max_rank
    distinct = count_distinct_before(ranked_codes, rows, np.minimum(first, cap), num_ids)
    redo = (first > cap) & (distinct < max_rank)
    if redo.any():
        distinct[redo] = count_distinct_before(ranked_codes, rows[redo], first[redo], num_ids)
    return distinct + 1


def summarise(results, max_rank):
    """CMC, mAP and mINP over the valid queries of all (rank, ap, inp) groups."""
    rank, ap, inp = (np.concatenate(parts) for parts in zip(*results))
    if len(rank) == 0:
        raise ValueError("no query has a true match in the gallery (after the camera rule): check that the "
                         "query identities appear in the gallery")
    # rank <= k for k = 1..max_rank; a gallery shorter than max_rank pads the curve with its last value
    cmc = (rank[:, None] <= np.arange(1, max_rank + 1)).mean(0)
    return cmc, float(ap.mean()), float(inp.mean())
