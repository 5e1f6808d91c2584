"""eval_sysu / eval_regdb against hand-computed cases and a per-query reference loop."""
import numpy as np
import pytest

import eval_metrics
from eval_metrics import eval_regdb, eval_sysu


def reference(distmat, q_pids, g_pids, q_camids=None, g_camids=None, max_rank=20, distinct=False):
    """The protocol written plainly, one query at a time: rank, drop camera-2 images for camera-3 queries,
    skip queries without a match, CMC (plain or over distinct identities) padded to max_rank, AP, INP."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = list(np.argsort(distmat[i]))
        if q_camids is not None:
            order = [g for g in order if not (q_camids[i] == 3 and g_camids[g] == 2)]
        ranked = [g_pids[g] for g in order]
        match = np.array([pid == q_pids[i] for pid in ranked], dtype=float)
        if not match.any():
            continue
        if distinct:
            distinct_ids = []
            for pid in ranked:
                if pid not in distinct_ids:
                    distinct_ids.append(pid)
            first = distinct_ids.index(q_pids[i])
        else:
            first = int(np.argmax(match))
        cmcs.append([1.0 if k >= first else 0.0 for k in range(max_rank)])
        hits = np.cumsum(match)
        aps.append(sum(hits[k] / (k + 1) for k in range(len(match)) if match[k]) / match.sum())
        inps.append(match.sum() / (np.flatnonzero(match).max() + 1))
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps)


def assert_same(got, want):
    cmc, mAP, mINP = got
    assert np.allclose(cmc, want[0], atol=1e-12, rtol=0)
    assert mAP == pytest.approx(want[1], abs=1e-12) and mINP == pytest.approx(want[2], abs=1e-12)


def test_regdb_hand_computed():
    # query 0 (id 1): gallery by distance -> ids [2, 1, 3, 1]: first hit at rank 2;
    #   AP = (1/2 + 2/4) / 2 = 0.5; INP = 2 hits / last hit at rank 4 = 0.5
    # query 1 (id 3): ranked ids [3, 2, 1, 1]: rank 1; AP = 1/1 = 1; INP = 1/1 = 1
    # CMC = [1/2, 1, 1, 1]; mAP = mINP = (0.5 + 1) / 2 = 0.75
    g_pids = np.array([1, 2, 1, 3])
    distmat = np.array([[0.2, 0.1, 0.4, 0.3],
                        [0.5, 0.2, 0.6, 0.1]])
    cmc, mAP, mINP = eval_regdb(distmat, np.array([1, 3]), g_pids, max_rank=4)
    assert cmc.shape == (4,) and np.allclose(cmc, [0.5, 1.0, 1.0, 1.0])
    assert mAP == pytest.approx(0.75) and mINP == pytest.approx(0.75)


def test_sysu_hand_computed_three_queries():
    # gallery:          g0     g1     g2     g3     g4
    #   id              1      2      2      3      1
    #   camera          1      2      4      5      2
    g_pids, g_cams = np.array([1, 2, 2, 3, 1]), np.array([1, 2, 4, 5, 2])
    distmat = np.array([[0.5, 0.1, 0.2, 0.3, 0.4],    # q0: id 1, camera 6
                        [0.5, 0.1, 0.2, 0.3, 0.4],    # q1: id 1, camera 3 (same distances as q0)
                        [0.3, 0.1, 0.2, 0.5, 0.4]])   # q2: id 2, camera 3
    q_pids, q_cams = np.array([1, 1, 2]), np.array([6, 3, 3])
    # q0: ranked g1 g2 g3 g4 g0 -> ids [2, 2, 3, 1, 1]; distinct ids [2, 3, 1] -> rank 3 (plain rank: 4)
    #     AP = (1/4 + 2/5) / 2 = 0.325; INP = 2 / 5 = 0.4
    # q1: camera 3 drops g1, g4 (camera 2) -> g2 g3 g0 -> ids [2, 3, 1] -> rank 3
    #     AP = 1/3; INP = 1/3
    # q2: ranked g1 g2 g0 g4 g3, minus g1, g4 -> g2 g0 g3 -> ids [2, 1, 3] -> rank 1; AP = 1; INP = 1
    # CMC = [1/3, 1/3, 1, 1, 1]; mAP = (0.325 + 1/3 + 1) / 3; mINP = (0.4 + 1/3 + 1) / 3
    cmc, mAP, mINP = eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert np.allclose(cmc, [1 / 3, 1 / 3, 1, 1, 1])
    assert mAP == pytest.approx((0.325 + 1 / 3 + 1) / 3)
    assert mINP == pytest.approx((0.4 + 1 / 3 + 1) / 3)
    # the plain CMC of the same matrix (RegDB rule, no cameras): q0 and q1 both at rank 4, q2 at rank 1
    plain_cmc, _, _ = eval_regdb(distmat, q_pids, g_pids, max_rank=5)
    assert np.allclose(plain_cmc, [1 / 3, 1 / 3, 1 / 3, 1, 1])


def test_sysu_distinct_identity_cmc_differs_from_plain_cmc():
    # ranked gallery ids for the query (id 5, camera 6): [7, 7, 7, 5]. Plain rank: 4. Distinct ids in
    # order: [7, 5] -> rank 2. AP = (1/4) / 1 = 0.25; INP = 1 / 4 = 0.25.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    g_pids = np.array([7, 7, 7, 5])
    cmc, mAP, mINP = eval_sysu(distmat, np.array([5]), g_pids, np.array([6]), np.array([1, 4, 5, 1]), max_rank=4)
    assert np.allclose(cmc, [0, 1, 1, 1])
    assert mAP == pytest.approx(0.25) and mINP == pytest.approx(0.25)
    plain_cmc, _, _ = eval_regdb(distmat, np.array([5]), g_pids, max_rank=4)
    assert np.allclose(plain_cmc, [0, 0, 0, 1])


def test_sysu_camera_3_queries_ignore_camera_2_gallery():
    # gallery: [id 1 cam 2 (closest), id 2 cam 1, id 1 cam 4]
    distmat = np.array([[0.1, 0.2, 0.3]])
    g_pids, g_cams = np.array([1, 2, 1]), np.array([2, 1, 4])
    # query of camera 3: the cam-2 image is dropped -> ids [2, 1]: rank 2; AP = 1/2; INP = 1/2
    cmc, mAP, mINP = eval_sysu(distmat, np.array([1]), g_pids, np.array([3]), g_cams, max_rank=3)
    assert np.allclose(cmc, [0, 1, 1]) and mAP == pytest.approx(0.5) and mINP == pytest.approx(0.5)
    # query of camera 6 keeps it: ids [1, 2, 1]: rank 1; AP = (1/1 + 2/3) / 2 = 5/6; INP = 2/3
    cmc, mAP, mINP = eval_sysu(distmat, np.array([1]), g_pids, np.array([6]), g_cams, max_rank=3)
    assert np.allclose(cmc, [1, 1, 1]) and mAP == pytest.approx(5 / 6) and mINP == pytest.approx(2 / 3)


def test_queries_without_match_are_skipped_everywhere():
    # query 9 has no match: its row must not count in the CMC (numerator or denominator), mAP or mINP, so the
    # figures equal those of query 1 alone (ranked ids [1, 2]: rank 1, AP 1, INP 1)
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]])
    cmc, mAP, mINP = eval_regdb(distmat, np.array([1, 9]), np.array([1, 2]), max_rank=2)
    assert np.allclose(cmc, [1, 1]) and mAP == pytest.approx(1.0) and mINP == pytest.approx(1.0)
    # a camera-3 query whose only match is in camera 2 is skipped the same way; the other query (id 2,
    # camera 6, ranked ids [1, 2]) has rank 2, AP 1/2, INP 1/2
    cmc, mAP, mINP = eval_sysu(np.array([[0.1, 0.2], [0.1, 0.2]]), np.array([1, 2]), np.array([1, 2]),
                               np.array([3, 6]), np.array([2, 1]), max_rank=2)
    assert np.allclose(cmc, [0, 1]) and mAP == pytest.approx(0.5) and mINP == pytest.approx(0.5)


def test_no_query_with_a_match_is_an_error():
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]])
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_regdb(distmat, np.array([8, 9]), np.array([1, 2]))
    # the camera rule can remove the only match
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_sysu(distmat[:1], np.array([1]), np.array([1, 2]), np.array([3]), np.array([2, 1]))
    with pytest.raises(ValueError, match="no query has a true match"):
        eval_regdb(np.zeros((0, 3)), np.array([], dtype=int), np.array([1, 2, 3]))


def test_gallery_smaller_than_max_rank_pads_the_curve():
    # ranked ids [2, 1]: rank 2 of 2; the curve continues at its last value
    cmc, _, _ = eval_sysu(np.array([[0.3, 0.1]]), np.array([1]), np.array([1, 2]), np.array([6]), np.array([1, 1]))
    assert cmc.shape == (20,) and np.allclose(cmc, [0] + [1] * 19)
    cmc, _, _ = eval_regdb(np.array([[0.3, 0.1, 0.2]]), np.array([1]), np.array([1, 2, 2]), max_rank=10)
    assert np.allclose(cmc, [0, 0] + [1] * 8)


@pytest.mark.parametrize("bad, message", [
    (dict(distmat=np.zeros((2, 3))), "shape"),
    (dict(q_pids=np.zeros((2, 1))), "vectors"),
    (dict(q_camids=np.array([3])), "q_camids"),
    (dict(g_camids=np.array([1, 1, 1, 1])), "g_camids"),
    (dict(max_rank=0), "max_rank"),
    (dict(distmat=np.array([[0.1, np.nan], [0.2, 0.3]])), "NaN"),
])
def test_bad_inputs_are_named(bad, message):
    args = dict(distmat=np.array([[0.1, 0.2], [0.2, 0.1]]), q_pids=np.array([1, 2]), g_pids=np.array([1, 2]),
                q_camids=np.array([3, 6]), g_camids=np.array([1, 4]), max_rank=2)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        eval_sysu(**args)


def random_case(seed, num_q, num_g, num_ids, skew=False):
    rng = np.random.default_rng(seed)
    # skewed identities: one identity fills most of the gallery, so reaching max_rank distinct identities
    # takes many ranks (exercises the widening of the distinct-identity prefix)
    weights = np.r_[200.0, np.ones(num_ids - 1)] if skew else np.ones(num_ids)
    g_pids = rng.choice(num_ids, num_g, p=weights / weights.sum())
    q_pids = rng.integers(0, num_ids + 2, num_q)  # a few identities absent from the gallery
    q_cams, g_cams = rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)
    return rng.random((num_q, num_g)), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed, num_q, num_g, num_ids, skew, max_rank", [
    (0, 40, 60, 12, False, 20),
    (1, 50, 300, 8, True, 3),
    (2, 30, 15, 6, False, 20),     # gallery shorter than max_rank
    (3, 60, 200, 40, False, 1),
    (4, 25, 400, 30, True, 20),
])
def test_random_cases_match_the_reference_loop(seed, num_q, num_g, num_ids, skew, max_rank):
    distmat, q_pids, g_pids, q_cams, g_cams = random_case(seed, num_q, num_g, num_ids, skew)
    assert_same(eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, max_rank),
                reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, distinct=True))
    assert_same(eval_regdb(distmat, q_pids, g_pids, max_rank), reference(distmat, q_pids, g_pids, max_rank=max_rank))


def test_chunking_and_prefix_cap_do_not_change_results(monkeypatch):
    distmat, q_pids, g_pids, q_cams, g_cams = random_case(5, 70, 250, 10, skew=True)
    want = reference(distmat, q_pids, g_pids, q_cams, g_cams, 5, distinct=True)
    # one query per chunk, and a distinct-identity prefix of one rank per CMC rank (widened for most queries)
    monkeypatch.setattr(eval_metrics, "MEMORY_BUDGET_BYTES", 1)
    monkeypatch.setattr(eval_metrics, "PREFIX_PER_RANK", 1)
    assert_same(eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, 5), want)


def test_float32_and_integer_distances_and_list_inputs():
    distmat, q_pids, g_pids, q_cams, g_cams = random_case(6, 20, 30, 5)
    ranked = np.argsort(np.argsort(distmat, axis=1), axis=1)  # integer distances with the same order
    want = reference(distmat, q_pids, g_pids, q_cams, g_cams, distinct=True)
    assert_same(eval_sysu(ranked, list(q_pids), list(g_pids), list(q_cams), list(g_cams)), want)
    assert_same(eval_sysu(distmat.astype(np.float32), q_pids, g_pids, q_cams, g_cams),
                reference(distmat.astype(np.float32), q_pids, g_pids, q_cams, g_cams, distinct=True))
