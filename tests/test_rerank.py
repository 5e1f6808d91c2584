"""rerank: the vectorised k-reciprocal distance against the classic per-row loop, written out here."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rerank import k_reciprocal_distance


# ------------------------------------------------------------------------------ the classic loop, in float64

def reference_original_distance(query, gallery):
    """Squared Euclidean over the concatenated features, column-max normalised, transposed."""
    feats = np.concatenate([query, gallery]).astype(np.float64)
    sq_norm = (feats ** 2).sum(1, keepdims=True)
    dist = sq_norm + sq_norm.T - 2 * feats @ feats.T
    return np.transpose(dist / np.max(dist, axis=0))


def reference_vectors(original_dist, k1, k2):
    """The k-reciprocal vectors V (N, N) after local query expansion, and the initial ranking, one row at a time."""
    num = original_dist.shape[0]
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, axis=1)
    half = int(np.around(k1 / 2))
    for i in range(num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expansion = reciprocal
        for candidate in reciprocal:
            cand_forward = initial_rank[candidate, :half + 1]
            cand_backward = initial_rank[cand_forward, :half + 1]
            cand_reciprocal = cand_forward[np.where(cand_backward == candidate)[0]]
            if len(np.intersect1d(cand_reciprocal, reciprocal)) > 2 / 3 * len(cand_reciprocal):
                expansion = np.append(expansion, cand_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(num):
            V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
    return V


def reference_jaccard_rows(V, rows, num_query):
    """Jaccard distance of V's query rows `rows` to the gallery rows, through the inverted index."""
    num = V.shape[0]
    inv_index = [np.where(V[:, k] != 0)[0] for k in range(num)]
    jaccard = np.zeros((len(rows), num))
    for out, i in enumerate(rows):
        temp_min = np.zeros(num)
        for k in np.where(V[i] != 0)[0]:
            temp_min[inv_index[k]] += np.minimum(V[i, k], V[inv_index[k], k])
        jaccard[out] = 1 - temp_min / (2 - temp_min)
    return jaccard[:, num_query:]


def reference_rerank(query, gallery, k1=20, k2=6, lambda_value=0.3):
    original_dist = reference_original_distance(query, gallery)
    V = reference_vectors(original_dist, k1, k2)
    num_q = len(query)
    jaccard = reference_jaccard_rows(V, range(num_q), num_q)
    return jaccard * (1 - lambda_value) + original_dist[:num_q, num_q:] * lambda_value


# ------------------------------------------------------------------------------------------------ tests

def clustered_features(seed, num_q, num_g, dim, num_ids):
    """L2-normalised features around a few identity centres, so neighbourhoods have structure."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen)
    ids = torch.randint(0, num_ids, (num_q + num_g,), generator=gen)
    feats = F.normalize(centres[ids] + 0.8 * torch.randn(num_q + num_g, dim, generator=gen), dim=1)
    return feats[:num_q], feats[num_q:]


@pytest.mark.parametrize("num_q, num_g, k1, k2, lambda_value", [
    (30, 50, 20, 6, 0.3),   # the paper's parameters
    (30, 50, 7, 1, 0.0),    # odd k1 (round(3.5) = 4), no query expansion, Jaccard only
    (25, 40, 5, 3, 0.5),    # round(2.5) = 2 (half to even, as np.around)
    (4, 7, 20, 6, 0.3),     # k1 + 1 > N = 11: every neighbourhood is the whole set
])
def test_equals_the_classic_loop(num_q, num_g, k1, k2, lambda_value):
    query, gallery = clustered_features(num_q + k1, num_q, num_g, 16, num_ids=6)
    ours = k_reciprocal_distance(query, gallery, k1, k2, lambda_value)
    expected = reference_rerank(query.numpy(), gallery.numpy(), k1, k2, lambda_value)
    assert ours.shape == (num_q, num_g) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-5)


def test_jaccard_part_is_not_trivial():
    # the expansion and the Jaccard term must matter in the cases above: re-ranked != scaled original
    query, gallery = clustered_features(50, 30, 50, 16, num_ids=6)
    reranked = k_reciprocal_distance(query, gallery).numpy()
    original = reference_original_distance(query.numpy(), gallery.numpy())[:30, 30:]
    assert np.abs(reranked - 0.3 * original).max() > 0.1
    assert (np.argsort(reranked, 1) != np.argsort(original, 1)).any()
    assert (reranked[reranked < 0.999] > 0).all()


def test_chunking_does_not_change_the_result(monkeypatch):
    import rerank
    query, gallery = clustered_features(3, 30, 50, 16, num_ids=6)
    whole = k_reciprocal_distance(query, gallery)
    monkeypatch.setattr(rerank, "MEMORY_BUDGET_BYTES", 64 * 10)  # 10 pairs, a few rows per chunk
    np.testing.assert_allclose(k_reciprocal_distance(query, gallery).numpy(), whole.numpy(), rtol=0, atol=1e-6)


def test_bad_inputs_name_the_problem():
    query, gallery = clustered_features(0, 3, 4, 8, num_ids=2)
    with pytest.raises(ValueError, match="must be"):
        k_reciprocal_distance(query, gallery[:, :5])
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal_distance(query, gallery, k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_distance(query, gallery, lambda_value=1.5)
