"""eval_sysu / eval_regdb against hand-computed cases and a per-query reference loop."""
import numpy as np
import pytest
import torch

from eval_metrics import eval_regdb, eval_sysu
from evaluate import build_test_set, evaluate


def reference(distmat, q_pids, g_pids, q_camids=None, g_camids=None, max_rank=20, distinct=False):
    """The field's per-query loop, written plainly."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i])
        if q_camids is not None:
            order = [g for g in order if not (q_camids[i] == 3 and g_camids[g] == 2)]
        ranked = [g_pids[g] for g in order]
        match = np.array([pid == q_pids[i] for pid in ranked], dtype=float)
        if not match.any():
            continue
        if distinct:
            seen, distinct_ids = set(), []
            for pid in ranked:
                if pid not in seen:
                    seen.add(pid)
                    distinct_ids.append(pid)
            first = distinct_ids.index(q_pids[i])
        else:
            first = int(np.argmax(match))
        cmcs.append([1.0 if k >= first else 0.0 for k in range(max_rank)])
        hits = np.cumsum(match)
        aps.append(sum(hits[k] / (k + 1) for k in range(len(match)) if match[k]) / match.sum())
        inps.append(match.sum() / (np.flatnonzero(match).max() + 1))
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps)


def test_regdb_hand_computed():
    # query 0 (id 1): gallery by distance -> ids [2, 1, 3, 1]: first hit at rank 2;
    #   AP = (1/2 + 2/4) / 2 = 0.5; INP = 2 hits / last hit at 4 = 0.5
    # query 1 (id 3): ranked ids [3, 2, 1, 1]: rank 1; AP = 1; INP = 1/1 = 1
    g_pids = np.array([1, 2, 1, 3])
    distmat = np.array([[0.2, 0.1, 0.4, 0.3],
                        [0.5, 0.2, 0.6, 0.1]])
    cmc, mAP, mINP = eval_regdb(distmat, np.array([1, 3]), g_pids, max_rank=4)
    assert np.allclose(cmc, [0.5, 1.0, 1.0, 1.0])
    assert mAP == pytest.approx(0.75) and mINP == pytest.approx(0.75)


def test_sysu_distinct_identity_cmc_differs_from_plain_cmc():
    # ranked gallery ids for the query (id 5, camera 6): [7, 7, 7, 5]. Plain rank: 4. Distinct ids in order:
    # [7, 5] -> rank 2. AP = 1/4, INP = 1/4.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    cmc, mAP, mINP = eval_sysu(distmat, np.array([5]), np.array([7, 7, 7, 5]), np.array([6]), np.array([1, 4, 5, 1]),
                               max_rank=4)
    assert np.allclose(cmc, [0, 1, 1, 1])
    assert mAP == pytest.approx(0.25) and mINP == pytest.approx(0.25)
    plain_cmc, _, _ = eval_regdb(distmat, np.array([5]), np.array([7, 7, 7, 5]), max_rank=4)
    assert np.allclose(plain_cmc, [0, 0, 0, 1])


def test_sysu_camera_3_queries_ignore_camera_2_gallery():
    # gallery: [id 1 cam 2 (closest), id 2 cam 1, id 1 cam 4]
    distmat = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    g_pids, g_cams = np.array([1, 2, 1]), np.array([2, 1, 4])
    # query of camera 3: the cam-2 image is dropped -> ids [2, 1]: rank 2; AP = 1/2; INP = 1/2
    cmc, mAP, mINP = eval_sysu(distmat[:1], np.array([1]), g_pids, np.array([3]), g_cams, max_rank=3)
    assert np.allclose(cmc, [0, 1, 1]) and mAP == pytest.approx(0.5) and mINP == pytest.approx(0.5)
    # query of camera 6 keeps it: rank 1; AP = (1/1 + 2/3) / 2 = 5/6; INP = 2/3
    cmc, mAP, mINP = eval_sysu(distmat[1:], np.array([1]), g_pids, np.array([6]), g_cams, max_rank=3)
    assert np.allclose(cmc, [1, 1, 1]) and mAP == pytest.approx(5 / 6) and mINP == pytest.approx(2 / 3)


def test_queries_without_match_are_skipped_and_none_is_an_error():
    distmat = np.array([[0.1, 0.2], [0.3, 0.1]])
    cmc, mAP, _ = eval_regdb(distmat, np.array([1, 9]), np.array([1, 2]), max_rank=2)
    assert np.allclose(cmc, [1, 1]) and mAP == pytest.approx(1.0)  # query 9 has no match: skipped
    with pytest.raises(ValueError, match="no query"):
        eval_regdb(distmat, np.array([8, 9]), np.array([1, 2]))
    # camera rule can remove the only match
    with pytest.raises(ValueError, match="no query"):
        eval_sysu(distmat[:1], np.array([1]), np.array([1, 2]), np.array([3]), np.array([2, 1]))


def test_gallery_smaller_than_max_rank_pads_the_curve():
    cmc, _, _ = eval_sysu(np.array([[0.3, 0.1]]), np.array([1]), np.array([1, 2]), np.array([6]), np.array([1, 1]))
    assert cmc.shape == (20,) and np.allclose(cmc, [0] + [1] * 19)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        eval_regdb(np.zeros((2, 3)), np.array([1, 2]), np.array([1, 2]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_the_reference_loop(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = 40, 60
    q_pids, g_pids = rng.integers(0, 12, num_q), rng.integers(0, 12, num_g)
    q_cams, g_cams = rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)
    distmat = rng.random((num_q, num_g))
    for got, want in zip(eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams),
                         reference(distmat, q_pids, g_pids, q_cams, g_cams, distinct=True)):
        assert np.allclose(got, want, atol=1e-6)
    for got, want in zip(eval_regdb(distmat, q_pids, g_pids), reference(distmat, q_pids, g_pids)):
        assert np.allclose(got, want, atol=1e-6)


class IdentityNet(torch.nn.Module):
    """A stand-in with the model's eval interface: the feature is a coarse grey-level layout of the image."""

    def forward(self, x_rgb=None, x_ir=None, return_parts=False):
        x = x_rgb if x_rgb is not None else x_ir
        feat = torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), (8, 4)).flatten(1)
        return torch.nn.functional.normalize(feat, dim=1)


def test_evaluate_sysu_trials_and_regdb_directions(tiny_sysu, tiny_regdb):
    test_set = build_test_set("sysu", tiny_sysu, 32, 16, mode="all", trials=range(3))
    assert len(test_set.query_img) == len(test_set.query_pids) == 4 * 2 * 3
    assert all(len(rows) == 4 * 4 for rows in test_set.gallery_rows.values())
    result = evaluate(IdentityNet(), test_set)
    assert [t["trial"] for t in result["trials"]] == [0, 1, 2]
    assert result["rank1"] == pytest.approx(np.mean([t["rank1"] for t in result["trials"]]))
    assert all(0 <= result[k] <= 100 for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"))
    assert evaluate(IdentityNet(), test_set, trials=[1])["rank1"] == result["trials"][1]["rank1"]
    indoor = build_test_set("sysu", tiny_sysu, 32, 16, mode="indoor", trials=range(1))
    assert len(indoor.gallery_rows[0]) == 4 * 2
    regdb = build_test_set("regdb", tiny_regdb, 32, 16, trial=1)
    out = evaluate(IdentityNet(), regdb)
    assert set(out["thermal_to_visible"]) >= {"rank1", "mAP", "mINP"} and len(out["trials"]) == 1
