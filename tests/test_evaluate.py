"""The test-time pipeline on the tiny real-layout datasets, with stand-in models of the feature interface."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_loader import IMAGENET_MEAN, IMAGENET_STD, load_images, normalize_images
from data_manager import process_gallery_sysu, process_query_sysu, read_sysu_ids, sysu_image_list
from eval_metrics import eval_sysu
from evaluate import build_test_set, evaluate, extract_features
from model import INFRARED, VISIBLE, ModelOutput
from utils import UserError

IMG_H, IMG_W = 32, 16


class PoolingNet(torch.nn.Module):
    """A weak stand-in: the feature is a coarse grey-level layout of the image (figures between 0 and 100)."""

    def forward(self, x_rgb=None, x_ir=None):
        x = x_rgb if x_rgb is not None else x_ir
        return F.normalize(F.adaptive_avg_pool2d(x.mean(1, keepdim=True), (8, 4)).flatten(1), dim=1)


class OracleNet(torch.nn.Module):
    """A stand-in whose feature encodes the identity: it looks each input image up among known images and
    returns the one-hot of its identity, so every true match is closer than every false one."""

    def __init__(self, images, pids):
        super().__init__()
        self.keys = normalize_images(torch.from_numpy(images)).flatten(1)
        self.codes = torch.from_numpy(np.unique(pids, return_inverse=True)[1])
        self.num_ids = len(np.unique(pids))
        self.linear = torch.nn.Linear(1, 1)  # a parameter, so train/eval mode is meaningful

    def forward(self, x_rgb=None, x_ir=None, return_parts=False):
        x = (x_rgb if x_rgb is not None else x_ir).flatten(1)
        nearest = torch.cdist(x, self.keys).argmin(1)
        return F.one_hot(self.codes[nearest], self.num_ids).float()


def oracle_for(test_set):
    return OracleNet(np.concatenate([test_set.query_img, test_set.gallery_img]),
                     np.concatenate([test_set.query_pids, test_set.gallery_pids]))


@pytest.fixture(scope="module")
def sysu_set(tiny_sysu):
    return build_test_set("sysu", tiny_sysu, IMG_H, IMG_W, mode="all", trials=range(3))


@pytest.fixture(scope="module")
def regdb_set(tiny_regdb_preprocessed):
    return build_test_set("regdb", tiny_regdb_preprocessed, IMG_H, IMG_W, trial=2)


FIGURES = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def test_sysu_test_set_sizes(tiny_sysu, sysu_set):
    test_ids = read_sysu_ids(tiny_sysu, "test")
    # query: every infrared image of the test ids; candidates: every visible one; a trial: one per (id, camera)
    assert len(sysu_set.query_img) == len(process_query_sysu(tiny_sysu)[0]) == len(sysu_set.query_pids)
    assert len(sysu_set.gallery_img) == len(sysu_image_list(tiny_sysu, test_ids, (1, 2, 4, 5))[0])
    assert sorted(sysu_set.gallery_rows) == [0, 1, 2]
    for rows in sysu_set.gallery_rows.values():
        assert len(rows) == len(test_ids) * 4
        assert len({(pid, cam) for pid, cam in zip(sysu_set.gallery_pids[rows], sysu_set.gallery_cams[rows])}) \
            == len(rows)
    assert any(not np.array_equal(sysu_set.gallery_rows[0], sysu_set.gallery_rows[t]) for t in (1, 2))
    assert sysu_set.query_img.dtype == np.uint8 and sysu_set.query_img.shape[1:] == (IMG_H, IMG_W, 3)


def test_sysu_indoor_gallery_uses_cameras_1_and_2(tiny_sysu):
    indoor = build_test_set("sysu", tiny_sysu, IMG_H, IMG_W, mode="indoor", trials=[4])
    assert sorted(indoor.gallery_rows) == [4]
    assert set(indoor.gallery_cams) == {1, 2}
    assert len(indoor.gallery_rows[4]) == len(read_sysu_ids(tiny_sysu, "test")) * 2


def test_identity_features_score_100_on_sysu(sysu_set):
    result = evaluate(oracle_for(sysu_set), sysu_set)
    assert all(result[key] == pytest.approx(100.0) for key in FIGURES)
    assert [t["trial"] for t in result["trials"]] == [0, 1, 2]


def test_sysu_trials_are_the_field_galleries_and_reproducible(tiny_sysu, sysu_set):
    model = PoolingNet()
    result = evaluate(model, sysu_set)
    assert result == evaluate(model, sysu_set)
    for key in FIGURES:
        assert result[key] == pytest.approx(np.mean([t[key] for t in result["trials"]]))
        assert 0 <= result[key] <= 100
    only_1 = evaluate(model, sysu_set, trials=[1])
    assert only_1["trials"] == [result["trials"][1]] and only_1["rank1"] == result["trials"][1]["rank1"]
    # trial 2 computed independently: decode the field's gallery draw and rank it directly
    q_paths, q_pids, q_cams = process_query_sysu(tiny_sysu)
    g_paths, g_pids, g_cams = process_gallery_sysu(tiny_sysu, "all", 2)
    query = extract_features(model, load_images(q_paths, IMG_W, IMG_H), INFRARED)
    gallery = extract_features(model, load_images(g_paths, IMG_W, IMG_H), VISIBLE)
    cmc, mAP, mINP = eval_sysu(-(query @ gallery.t()).numpy(), q_pids, g_pids, q_cams, g_cams)
    trial_2 = result["trials"][2]
    assert trial_2["rank1"] == pytest.approx(100 * cmc[0]) and trial_2["rank20"] == pytest.approx(100 * cmc[19])
    assert trial_2["mAP"] == pytest.approx(100 * mAP) and trial_2["mINP"] == pytest.approx(100 * mINP)
    # different galleries give different figures (for this stand-in and data)
    assert len({(t["mAP"], t["rank1"]) for t in result["trials"]}) > 1


def test_regdb_both_directions(regdb_set):
    assert len(regdb_set.query_img) == len(regdb_set.gallery_img) == 4 * 10  # 4 test ids x 10 images
    result = evaluate(oracle_for(regdb_set), regdb_set)
    assert all(result[key] == pytest.approx(100.0) for key in FIGURES)
    assert all(result["thermal_to_visible"][key] == pytest.approx(100.0) for key in FIGURES)
    assert result["trials"] == [dict({key: result[key] for key in FIGURES}, trial=2)]
    weak = evaluate(PoolingNet(), regdb_set)
    assert set(weak["thermal_to_visible"]) == set(FIGURES)
    assert all(0 <= weak[key] <= 100 for key in FIGURES)


def test_extract_features_contract(sysu_set):
    model = OracleNet(sysu_set.gallery_img, sysu_set.gallery_pids)
    model.train()
    feats = extract_features(model, sysu_set.gallery_img, VISIBLE, batch_size=5)
    assert model.training  # mode restored
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert feats.shape == (len(sysu_set.gallery_img), len(np.unique(sysu_set.gallery_pids)))
    assert torch.allclose(feats.norm(dim=1), torch.ones(len(feats)))
    subset = extract_features(model, sysu_set.gallery_img, VISIBLE, batch_size=64, indices=[3, 0, 7])
    assert torch.equal(subset, feats[[3, 0, 7]])


def test_extract_features_with_parts():
    class PartNet(torch.nn.Module):
        def forward(self, x_rgb=None, x_ir=None, return_parts=False):
            x = x_rgb if x_rgb is not None else x_ir
            parts = x.mean(1).unflatten(1, (2, -1)).mean(-1)  # (B, 2 parts, W)
            logits = torch.stack([parts.sum(-1), -parts.sum(-1)], -1)  # (B, 2 parts, 2 classes)
            feat = F.normalize(parts.flatten(1), dim=1)
            return ModelOutput(feat, parts, logits) if return_parts else feat

    images = np.random.default_rng(0).integers(0, 256, (7, 8, 4, 3), dtype=np.uint8)
    feats, parts, mean_logits = extract_features(PartNet(), images, INFRARED, batch_size=3, return_parts=True)
    assert feats.shape == (7, 8) and parts.shape == (7, 2, 4) and mean_logits.shape == (7, 2)
    # by hand, from the pixels: the test transform is ToTensor + Normalize, nothing else
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    expected_parts = x.mean(1).unflatten(1, (2, -1)).mean(-1)  # (7, 2 parts, 4)
    expected_logits = torch.stack([expected_parts.sum(-1), -expected_parts.sum(-1)], -1).mean(1)  # mean over parts
    assert torch.allclose(parts, expected_parts, atol=1e-5)
    assert torch.allclose(mean_logits, expected_logits, atol=1e-5)
    assert torch.allclose(feats, F.normalize(expected_parts.flatten(1), dim=1), atol=1e-5)
    assert torch.allclose(feats, extract_features(PartNet(), images, INFRARED), atol=1e-6)  # the same feature


def test_errors_name_the_problem(tiny_sysu, sysu_set):
    with pytest.raises(ValueError, match="not prepared"):
        evaluate(PoolingNet(), sysu_set, trials=[7])
    with pytest.raises(ValueError, match="modal"):
        extract_features(PoolingNet(), sysu_set.query_img, 2)
    with pytest.raises(UserError, match="unknown test protocol"):
        build_test_set("market", tiny_sysu, IMG_H, IMG_W)


def test_regdb_test_set_needs_arrays_of_its_size(tiny_regdb, tiny_regdb_preprocessed):
    with pytest.raises(UserError, match="pre_process_regdb.py"):
        build_test_set("regdb", tiny_regdb, IMG_H, IMG_W, trial=1)  # raw folders, no arrays
    with pytest.raises(UserError, match="--img_h 64 --img_w 32"):
        build_test_set("regdb", tiny_regdb_preprocessed, 64, 32, trial=1)


class RecordingNet(PoolingNet):
    """Records which stream every batch went through."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_rgb=None, x_ir=None):
        self.calls.append(("rgb", len(x_rgb)) if x_rgb is not None else ("ir", len(x_ir)))
        return super().forward(x_rgb, x_ir)


def streams(calls):
    """{stream: number of images} over recorded calls."""
    out = {}
    for stream, count in calls:
        out[stream] = out.get(stream, 0) + count
    return out


def test_each_modality_goes_through_its_stream_once(sysu_set, regdb_set):
    model = RecordingNet()
    evaluate(model, sysu_set, batch_size=7)
    # ten trials or three, the candidates are extracted once: infrared queries, visible candidates
    assert streams(model.calls) == {"ir": len(sysu_set.query_img), "rgb": len(sysu_set.gallery_img)}
    assert max(count for _, count in model.calls) == 7
    model = RecordingNet()
    evaluate(model, regdb_set)
    assert streams(model.calls) == {"rgb": len(regdb_set.query_img), "ir": len(regdb_set.gallery_img)}


# ---------------------------------------------------------------------------------------------- issue 16 options
from demo_data import make_demo_dataset  # noqa: E402
from eval_metrics import eval_regdb  # noqa: E402
from rerank import k_reciprocal_distance  # noqa: E402

PAPER_RERANK = dict(k1=20, k2=6, lambda_value=0.3)


def test_sysu_multi_shot_test_set(tmp_path_factory, sysu_set):
    root = make_demo_dataset(str(tmp_path_factory.mktemp("multi_eval") / "SYSU-MM01"), num_train_ids=1,
                             num_test_ids=3, imgs_per_cam=12, raw_h=16, raw_w=8, seed=6)
    multi = build_test_set("sysu", root, IMG_H, IMG_W, mode="all", trials=[0, 7], gallery_mode="multi")
    assert multi.gallery_mode == "multi" and sysu_set.gallery_mode == "single"
    candidates = sysu_image_list(root, read_sysu_ids(root, "test"), (1, 2, 4, 5))[0]
    for trial in (0, 7):
        rows = multi.gallery_rows[trial]
        assert [candidates[row] for row in rows] == process_gallery_sysu(root, "all", trial, "multi")[0]
        assert len(rows) == 3 * 4 * 10
    assert not np.array_equal(multi.gallery_rows[0], multi.gallery_rows[7])
    result = evaluate(oracle_for(multi), multi)
    assert all(result[key] == pytest.approx(100.0) for key in FIGURES)


def test_sysu_rerank_ranks_each_trial_by_the_reranked_distance(sysu_set):
    model = PoolingNet()
    result = evaluate(model, sysu_set, trials=[0, 2], rerank=PAPER_RERANK)
    query = extract_features(model, sysu_set.query_img, INFRARED)
    for trial, figures in zip((0, 2), result["trials"]):
        rows = sysu_set.gallery_rows[trial]
        gallery = extract_features(model, sysu_set.gallery_img[rows], VISIBLE)  # only this trial's gallery
        cmc, mAP, mINP = eval_sysu(k_reciprocal_distance(query, gallery, **PAPER_RERANK).numpy(),
                                   sysu_set.query_pids, sysu_set.gallery_pids[rows], sysu_set.query_cams,
                                   sysu_set.gallery_cams[rows])
        assert figures["trial"] == trial and figures["rank1"] == pytest.approx(100 * cmc[0])
        assert figures["mAP"] == pytest.approx(100 * mAP) and figures["mINP"] == pytest.approx(100 * mINP)
    plain = evaluate(model, sysu_set, trials=[0, 2])
    assert (plain["mAP"], plain["mINP"]) != (result["mAP"], result["mINP"])  # re-ranking took effect


def test_regdb_rerank_in_both_directions(regdb_set):
    model = PoolingNet()
    result = evaluate(model, regdb_set, rerank=PAPER_RERANK)
    visible = extract_features(model, regdb_set.query_img, VISIBLE)
    thermal = extract_features(model, regdb_set.gallery_img, INFRARED)
    for figures, (query, gallery, q_pids, g_pids) in (
            (result, (visible, thermal, regdb_set.query_pids, regdb_set.gallery_pids)),
            (result["thermal_to_visible"], (thermal, visible, regdb_set.gallery_pids, regdb_set.query_pids))):
        cmc, mAP, mINP = eval_regdb(k_reciprocal_distance(query, gallery, **PAPER_RERANK).numpy(), q_pids, g_pids)
        assert figures["rank1"] == pytest.approx(100 * cmc[0]) and figures["mAP"] == pytest.approx(100 * mAP)
        assert figures["mINP"] == pytest.approx(100 * mINP)
    assert evaluate(oracle_for(regdb_set), regdb_set, rerank=PAPER_RERANK)["mAP"] == pytest.approx(100.0)


def test_unknown_rerank_parameter_fails_before_extraction(sysu_set):
    model = RecordingNet()
    with pytest.raises(ValueError, match="unknown re-ranking parameters"):
        evaluate(model, sysu_set, rerank=dict(k1=20, lam=0.3))
    assert model.calls == []
