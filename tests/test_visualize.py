"""visualize.py: the data behind each picture (tsne.npz, ranked.json) against an independent recomputation, the
drawn artists against their inputs, the t-SNE and ranking logic on hand-made inputs, the CLI end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import visualize
from evaluate import build_test_set, extract_features
from model import INFRARED, VISIBLE, embed_net
from utils import save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG_H, IMG_W = 32, 16
TINY_MODEL = dict(arch="resnet18", num_parts=6, part_dim=32)

HISTORY = [  # as train_mine.py keeps it: --pl_start 2, so an evaluation at epoch 1; rounds after epochs 2 and 3
    {"epoch": 0, "lr": 0.005, "loss": 4.0, "loss_id": 3.0, "loss_tri": 1.0, "pool_size": 0, "pool_precision": None},
    {"epoch": 1, "lr": 0.01, "loss": 3.5, "loss_id": 2.6, "loss_tri": 0.9, "pool_size": 0, "pool_precision": None,
     "rank1": 15.0, "mAP": 12.0},
    {"epoch": 2, "lr": 0.01, "loss": 3.0, "loss_id": 2.0, "loss_tri": 0.8, "loss_dce": 0.4, "accepted_rgb": 3,
     "accepted_ir": 2, "pool_size": 5, "pool_precision": 80.0, "rank1": 25.0, "mAP": 20.0},
    {"epoch": 3, "lr": 0.01, "loss": 2.5, "loss_id": 1.5, "loss_tri": 0.7, "loss_dce": 0.3, "accepted_rgb": 1,
     "accepted_ir": 0, "pool_size": 6, "pool_precision": 83.3, "rank1": 30.0, "mAP": 24.0},
    {"epoch": 4, "lr": 0.01, "loss": 2.4, "loss_id": 1.4, "loss_tri": 0.7, "loss_dce": 0.3, "pool_size": 6,
     "pool_precision": 83.3},
]


def tiny_model(num_classes=6):
    torch.manual_seed(0)
    return embed_net(num_classes, pretrained="none", **TINY_MODEL)


def open_png(path):
    image = Image.open(path)
    assert image.format == "PNG"
    return image.convert("RGB")


def lines_by_gid(ax, gid):
    return [line for line in ax.get_lines() if line.get_gid() == gid]


# ---------------------------------------------------------------------------------------------- all pictures

@pytest.fixture(scope="module")
def sysu_pictures(tiny_sysu, tmp_path_factory):
    """write_pictures on the tiny SYSU layout, with the t-SNE figure it drew kept for inspection."""
    test_set = build_test_set("sysu", tiny_sysu, IMG_H, IMG_W, trials=[0])
    out_dir = tmp_path_factory.mktemp("pictures")
    drawn = {}

    def keep_figure(*args, **kwargs):
        drawn["tsne"] = draw_tsne(*args, **kwargs)
        return drawn["tsne"]

    draw_tsne, visualize.tsne_figure = visualize.tsne_figure, keep_figure
    try:
        paths = visualize.write_pictures(tiny_model(), test_set, HISTORY, str(out_dir), num_ids=3, num_queries=3,
                                         batch_size=16, run_label="tiny", pl_start=2)
    finally:
        visualize.tsne_figure = draw_tsne
    return test_set, out_dir, paths, drawn["tsne"]


def test_write_pictures_gives_pngs_and_their_data(sysu_pictures):
    _, out_dir, paths, _ = sysu_pictures
    assert set(paths) == {"tsne", "ranked", "curves"}
    assert sorted(os.listdir(out_dir)) == ["curves.png", "ranked.json", "ranked.png", "tsne.npz", "tsne.png"]
    assert open_png(paths["tsne"]).size == visualize.TSNE_SIZE
    assert open_png(paths["curves"]).size == visualize.CURVES_SIZE
    shown_w = round(IMG_W * 128 / IMG_H)  # ranked_figure's default display height is 128 px
    assert open_png(paths["ranked"]).size == visualize.ranked_layout(3, visualize.TOP_K, shown_w, 128)[1]


def test_tsne_npz_describes_the_sampled_test_images(sysu_pictures):
    test_set, out_dir, _, figure = sysu_pictures
    data = np.load(out_dir / "tsne.npz")
    is_query, rows = data["is_query"], data["row"]
    assert data["points"].shape == (len(rows), 2) and np.isfinite(data["points"]).all()
    # each point's identity is the one at its row of the array it names; SYSU queries are infrared
    np.testing.assert_array_equal(data["pid"][is_query], test_set.query_pids[rows[is_query]])
    np.testing.assert_array_equal(data["pid"][~is_query], test_set.gallery_pids[rows[~is_query]])
    np.testing.assert_array_equal(data["modality"], np.where(is_query, INFRARED, VISIBLE))
    assert len(np.unique(data["pid"])) == 3  # --num_ids
    assert is_query.any() and (~is_query).any()
    assert not any(np.diff(rows[is_query]) <= 0) and not any(np.diff(rows[~is_query]) <= 0)  # no image twice
    # the picture shows exactly these points, one colour per identity
    scatters = {c.get_gid(): c for c in figure.axes[0].collections}
    for gid, modality in (("visible", VISIBLE), ("infrared", INFRARED)):
        here = data["modality"] == modality
        np.testing.assert_allclose(scatters[gid].get_offsets(), data["points"][here], rtol=1e-6)
    colours = np.concatenate([scatters[gid].get_facecolors()[:, :3] for gid in ("visible", "infrared")])
    pids = np.concatenate([data["pid"][data["modality"] == m] for m in (VISIBLE, INFRARED)])
    colour_of = {pid: {tuple(c) for c in colours[pids == pid]} for pid in np.unique(pids)}
    assert all(len(c) == 1 for c in colour_of.values())
    assert len({next(iter(c)) for c in colour_of.values()}) == len(colour_of)


def test_ranked_json_is_the_ranking_of_the_features(sysu_pictures):
    test_set, out_dir, _, _ = sysu_pictures
    record = json.loads((out_dir / "ranked.json").read_text())
    assert record["dataset"] == "sysu" and record["gallery_trial"] == 0 and len(record["queries"]) == 3
    model = tiny_model()
    gallery_rows = np.asarray(test_set.gallery_rows[0])
    query_feats = extract_features(model, test_set.query_img, INFRARED, 16).numpy()
    gallery_feats = extract_features(model, test_set.gallery_img, VISIBLE, 16, indices=gallery_rows).numpy()
    for query in record["queries"]:
        row = query["query_row"]
        similarity = gallery_feats @ query_feats[row]
        if test_set.query_cams[row] == 3:  # the SYSU rule: camera-3 queries skip camera-2 gallery images
            similarity[test_set.gallery_cams[gallery_rows] == 2] = -np.inf
        expected = np.argsort(-similarity, kind="stable")[:visualize.TOP_K]
        expected = expected[np.isfinite(similarity[expected])]
        assert query["gallery_rows"] == gallery_rows[expected].tolist()
        matches = test_set.gallery_pids[query["gallery_rows"]] == test_set.query_pids[row]
        assert query["is_match"] == matches.tolist() and any(matches)  # sampled queries have a true match
        np.testing.assert_allclose(query["similarity"], similarity[expected], rtol=1e-4, atol=1e-5)


def test_write_pictures_without_history_skips_the_curves(tiny_regdb_preprocessed, tmp_path):
    test_set = build_test_set("regdb", tiny_regdb_preprocessed, IMG_H, IMG_W, trial=1)
    paths = visualize.write_pictures(tiny_model(4), test_set, None, str(tmp_path), num_queries=2, batch_size=16)
    assert set(paths) == {"tsne", "ranked"}
    assert sorted(os.listdir(tmp_path)) == ["ranked.json", "ranked.png", "tsne.npz", "tsne.png"]
    record = json.loads((tmp_path / "ranked.json").read_text())
    assert record["gallery_trial"] is None and record["regdb_trial"] == 1
    assert all(len(query["gallery_rows"]) == visualize.TOP_K for query in record["queries"])  # no camera rule
    data = np.load(tmp_path / "tsne.npz")
    np.testing.assert_array_equal(data["modality"], np.where(data["is_query"], VISIBLE, INFRARED))  # visible -> thermal


@pytest.mark.parametrize("make_bad", ["under_a_file", "a_file"])
def test_write_pictures_into_an_unwritable_folder_is_a_user_error(make_bad, tmp_path):
    (tmp_path / "file").write_text("x")
    out_dir = tmp_path / "file" / "pictures" if make_bad == "under_a_file" else tmp_path / "file"
    with pytest.raises(visualize.UserError, match="cannot write"):
        visualize.write_pictures(None, None, HISTORY, str(out_dir))  # fails before touching the model


# ---------------------------------------------------------------------------------------------- t-SNE

def test_tsne_puts_two_separated_identities_in_separate_regions():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=64)
    direction /= np.linalg.norm(direction)
    features = np.concatenate([3 * direction + 0.3 * rng.normal(size=(20, 64)),
                               -3 * direction + 0.3 * rng.normal(size=(20, 64))])
    pids = np.repeat([1, 2], 20)
    points = visualize.tsne_embedding(features, seed=0)
    assert points.shape == (40, 2)
    centroids = np.stack([points[pids == 1].mean(0), points[pids == 2].mean(0)])
    nearest = np.linalg.norm(points[:, None] - centroids[None], axis=2).argmin(1)
    np.testing.assert_array_equal(nearest, (pids == 2).astype(int))
    np.testing.assert_array_equal(points, visualize.tsne_embedding(features, seed=0))  # seeded


def test_tsne_of_very_few_points_is_a_line():
    np.testing.assert_array_equal(visualize.tsne_embedding(np.eye(3), seed=0)[:, 1], 0)


def test_tsne_figure_marks_modality_by_marker_and_identity_by_colour():
    points = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [6, 5], [5, 6]], dtype=float)
    pids, modal = np.array([7, 7, 7, 9, 9, 9]), np.array([VISIBLE, INFRARED] * 3)
    figure = visualize.tsne_figure(points, pids, modal, size=(400, 300))
    assert visualize.figure_pixels(figure).shape == (300, 400, 3)
    scatters = {c.get_gid(): c for c in figure.axes[0].collections}
    expected_colours = [np.array([int(code[i:i + 2], 16) / 255 for i in (1, 3, 5)])
                        for code in visualize.identity_colours(2)]
    for gid, code in (("visible", VISIBLE), ("infrared", INFRARED)):
        np.testing.assert_array_equal(scatters[gid].get_offsets(), points[modal == code])
        colours = scatters[gid].get_facecolors()[:, :3]
        for colour, pid in zip(colours, pids[modal == code]):
            np.testing.assert_allclose(colour, expected_colours[0 if pid == 7 else 1], atol=1e-6)
    circle, triangle = (scatters[gid].get_paths()[0] for gid in ("visible", "infrared"))
    assert len(triangle.vertices) < len(circle.vertices)  # different markers
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["visible (circle)", "infrared (triangle)", "id 7", "id 9"]


def test_identity_colours_are_distinct_beyond_the_palette():
    colours = visualize.identity_colours(45)
    assert len(colours) == 45 and len(set(colours)) == 45 and colours[:20] == visualize.PALETTE


def test_sample_identity_rows_caps_each_identity():
    pids = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3, 4])
    rows = visualize.sample_identity_rows(pids, np.array([1, 3, 4]), 2, np.random.default_rng(0))
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(np.unique(pids[rows], return_counts=True)[1], [2, 2, 1])
    assert set(pids[rows]) == {1, 3, 4}


# ---------------------------------------------------------------------------------------------- ranked lists

def test_rank_gallery_applies_the_camera_rule_and_pads():
    query = np.array([[1.0, 0.0], [0.0, 1.0]])
    gallery = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.8], [0.8, 0.6]])
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    allowed = visualize.camera_allowed(np.array([6, 3]), np.array([1, 2, 2, 4]))  # query 1 (cam 3) skips cam 2
    ranking, similarity = visualize.rank_gallery(query, gallery, allowed, top_k=4)
    np.testing.assert_array_equal(ranking, [[0, 3, 2, 1], [3, 0, -1, -1]])
    np.testing.assert_allclose(similarity[0], gallery[[0, 3, 2, 1], 0], rtol=1e-6)
    np.testing.assert_allclose(similarity[1, :2], gallery[[3, 0], 1], rtol=1e-6)
    assert np.isneginf(similarity[1, 2:]).all()
    assert visualize.camera_allowed(None, None) is None
    np.testing.assert_array_equal(visualize.rank_gallery(query, gallery, None, top_k=2)[0], [[0, 3], [1, 2]])


def test_sample_queries_needs_a_true_match_and_prefers_new_identities():
    query_pids, gallery_pids = np.array([5, 5, 5, 6, 7]), np.array([5, 6, 8])
    allowed = np.ones((5, 3), dtype=bool)
    allowed[3, 1] = False  # query 3 cannot see its only match
    picked = visualize.sample_queries(query_pids, gallery_pids, allowed, 2, np.random.default_rng(0))
    assert len(picked) == 2 and set(query_pids[picked]) == {5}  # only identity 5 has a visible match
    picked = visualize.sample_queries(query_pids, gallery_pids, None, 2, np.random.default_rng(0))
    assert sorted(query_pids[picked]) == [5, 6]  # one per identity before a second of the same


def test_ranked_frames_are_green_exactly_where_the_identity_matches():
    # uniform grey images whose level names the image, so the picture in each cell can be checked too
    query_images = np.full((2, 8, 4, 3), 10, dtype=np.uint8)
    gallery_images = (20 + 10 * np.arange(6, dtype=np.uint8))[:, None, None, None] * np.ones((1, 8, 4, 3), np.uint8)
    ranking = np.array([[4, 0, 2, -1], [1, 5, 3, 0]])
    is_match = np.array([[True, False, True, False], [False, False, True, True]])
    figure = visualize.ranked_figure(query_images, gallery_images, ranking, is_match, query_labels=["q0", "q1"],
                                     gallery_labels=[f"g{i}" for i in range(6)], image_height=32)
    pixels = visualize.figure_pixels(figure)  # the rendered figure: images one pixel per pixel, text around them
    boxes, size = visualize.ranked_layout(2, 4, 16, 32)
    assert pixels.shape == (size[1], size[0], 3)
    frame = visualize.RANKED["frame"]
    for q in range(2):
        for col in range(5):
            left, top, right, bottom = (int(v) for v in boxes[q, col])
            middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
            edge_pixels = [pixels[top + 1, middle_x], pixels[bottom - 1, middle_x], pixels[middle_y, left + 1],
                           pixels[middle_y, right - 1]]
            centre = pixels[middle_y, middle_x]
            if col == 0:
                expected, level = visualize.QUERY_BLUE, 10
            elif ranking[q, col - 1] < 0:  # an empty cell: a grey outline, no image
                assert tuple(pixels[middle_y, left]) == visualize.LIGHT_GREY
                assert tuple(pixels[middle_y, left + frame]) == visualize.WHITE
                continue
            else:
                expected = visualize.GREEN if is_match[q, col - 1] else visualize.RED
                level = 20 + 10 * ranking[q, col - 1]
            assert all(tuple(p) == expected for p in edge_pixels), (q, col)
            assert tuple(centre) == (level, level, level), (q, col)
    texts = [text.get_text() for text in figure.axes[0].texts]
    captions = [text for text in texts if text[:1] in ("q", "g") and text[1:].isdigit()]
    assert captions == ["q0", "g4", "g0", "g2", "q1", "g1", "g5", "g3", "g0"]  # in rank order, none for empty cells
    assert texts.count("query") == 2 and texts.count("#4") == 2


# ---------------------------------------------------------------------------------------------- curves

METRICS_CSV = """epoch,lr,loss,loss_id,loss_tri,data_wait,pool_size,pool_rgb,pool_ir,pool_precision,time,loss_dce,accepted_rgb,accepted_ir,rank1,mAP,mINP
0,0.005,4.1,3.0,1.1,0.01,0,0,0,,10.0,,,,,,
1,0.01,3.6,2.7,0.9,0.01,0,0,0,,10.0,,,,16.0,14.5,7.0
2,0.01,3.2,2.2,0.8,0.01,4,2,2,75.0,11.0,0.5,2,2,21.0,18.5,9.0
3,0.01,2.9,1.9,0.7,0.01,4,2,2,,11.0,0.4,0,0,,,
4,0.01,2.5,1.6,0.6,0.01,6,3,3,83.3,11.0,0.35,1,1,26.0,22.0,11.0
"""


def test_read_history_turns_empty_cells_into_none(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    history = visualize.read_history(str(path))
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    assert history[0]["pool_precision"] is None and history[2]["pool_precision"] == 75.0
    assert history[3]["rank1"] is None and history[4]["rank1"] == 26.0
    assert visualize.pseudo_label_epochs(history) == [2, 3, 4]
    assert visualize.loss_columns(history) == ["loss", "loss_id", "loss_tri", "loss_dce"]
    np.testing.assert_array_equal(visualize.column_values(history, "mAP"), [np.nan, 14.5, 18.5, np.nan, 22.0])
    assert np.isnan(visualize.column_values(history, "no_such_column")).all()


def test_curves_plot_the_history_columns_and_mark_rounds_and_pl_start():
    figure = visualize.curves_figure(HISTORY, pl_start=2)
    axes = figure.axes
    assert [ax.get_title(loc="left") for ax in axes] == [title for title, _, _ in visualize.CURVE_PANELS]
    for ax, names in zip(axes, (["loss", "loss_id", "loss_tri", "loss_dce"], ["pool_size"], ["pool_precision"],
                                ["rank1", "mAP"])):
        plotted = {line.get_label(): line for line in ax.get_lines() if line.get_gid() is None}
        assert list(plotted) == names
        for name, line in plotted.items():  # every value of the column at its epoch, the missing ones skipped
            values = visualize.column_values(HISTORY, name)
            present = np.isfinite(values)
            np.testing.assert_array_equal(line.get_xdata(), np.arange(5)[present])
            np.testing.assert_array_equal(line.get_ydata(), values[present])
        assert [line.get_xdata()[0] for line in lines_by_gid(ax, "round")] == [2, 3]  # rows with accepted_*
        pl_start_lines = lines_by_gid(ax, "pl_start")
        assert len(pl_start_lines) == 1 and list(pl_start_lines[0].get_xdata()) == [1.5, 1.5]
        assert "--pl_start" in [text.get_text().strip() for text in ax.texts]
    # the end of the identity-only stage (epoch 1) and the last evaluation (epoch 3) are written out
    written = sorted((text.xy[0], text.get_text()) for text in axes[3].texts if hasattr(text, "xy"))
    assert written == [(1, "12.0"), (1, "15.0"), (3, "24.0"), (3, "30.0")]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend[0].startswith("epoch followed by a pseudo-label round") and legend[1].startswith("--pl_start 2")


@pytest.mark.parametrize("pl_start", [None, 0, 5])
def test_curves_mark_pl_start_only_between_two_epochs_of_the_history(pl_start):
    figure = visualize.curves_figure(HISTORY, pl_start=pl_start)  # 0: no identity-only stage; 5: not reached
    assert not any(lines_by_gid(ax, "pl_start") for ax in figure.axes)
    assert all(len(lines_by_gid(ax, "round")) == 2 for ax in figure.axes)


def test_curves_from_a_metrics_csv_render(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    figure = visualize.curves_figure(visualize.read_history(str(path)), pl_start=2)
    assert visualize.figure_pixels(figure).shape == (visualize.CURVES_SIZE[1], visualize.CURVES_SIZE[0], 3)
    rank_panel = figure.axes[3]
    assert len(lines_by_gid(rank_panel, "pl_start")) == 1
    rank1 = next(line for line in rank_panel.get_lines() if line.get_label() == "rank1")
    assert list(rank1.get_xdata()) == [1, 2, 4] and list(rank1.get_ydata()) == [16.0, 21.0, 26.0]
    # a metrics.csv without an evaluation at --pl_start - 1 (older runs): only the last values are written out
    rank_panel = visualize.curves_figure(visualize.read_history(str(path)), pl_start=4).axes[3]
    assert sorted(text.get_text() for text in rank_panel.texts if hasattr(text, "xy")) == ["22.0", "26.0"]


def test_curves_with_missing_columns_and_one_epoch():
    figure = visualize.curves_figure([{"epoch": 0, "loss": 1.0}], pl_start=3)
    loss_line = figure.axes[0].get_lines()[0]
    assert list(loss_line.get_xdata()) == [0] and list(loss_line.get_ydata()) == [1.0]
    assert [text.get_text() for text in figure.axes[2].texts] == ["no data (pool_precision)"]
    assert figure.legends == []  # no round, no --pl_start line: no key
    empty = visualize.curves_figure([])  # nothing at all: every panel says so
    assert all(ax.texts[0].get_text().startswith("no data") for ax in empty.axes)
    visualize.figure_pixels(empty)


# ---------------------------------------------------------------------------------------------- command line

def run_visualize(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "visualize.py"), *args], capture_output=True, text=True,
                          timeout=300)


def tiny_checkpoint(folder, data_path, **run_args):
    run_args = dict(dataset="demo", data_path=data_path, mode="all", trial=1, img_h=IMG_H, img_w=IMG_W,
                    log_path=str(folder / "log"), run_name="tiny", test_batch_size=16, workers=0, pl_start=2,
                    **TINY_MODEL, **run_args)
    checkpoint = str(folder / "tiny_best.pth")
    save_checkpoint(checkpoint, {"model": tiny_model().state_dict(), "args": run_args, "epoch": 3,
                                 "history": HISTORY})
    return checkpoint, run_args


def test_cli_end_to_end_on_a_checkpoint(tiny_sysu_preprocessed, tmp_path):
    checkpoint, run_args = tiny_checkpoint(tmp_path, tiny_sysu_preprocessed)
    out_dir = tmp_path / "pictures"
    proc = run_visualize("--resume", checkpoint, "--gpu", "cpu", "--out_dir", str(out_dir), "--num_ids", "3",
                         "--num_queries", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("tsne.png", "ranked.png", "curves.png"):
        open_png(out_dir / name)
    assert len(json.loads((out_dir / "ranked.json").read_text())["queries"]) == 2
    assert len(np.unique(np.load(out_dir / "tsne.npz")["pid"])) == 3
    assert visualize.default_out_dir(run_args) == os.path.join(str(tmp_path / "log"), "tiny")


@pytest.mark.parametrize("flag, expected", [([], 2), (["--pl_start", "3"], 3)])
def test_cli_pl_start_comes_from_the_checkpoint_unless_given(flag, expected, tiny_sysu_preprocessed, tmp_path,
                                                             monkeypatch):
    checkpoint, _ = tiny_checkpoint(tmp_path, tiny_sysu_preprocessed)
    calls = []
    monkeypatch.setattr(visualize, "write_pictures", lambda *args, **kwargs: calls.append(kwargs) or {})
    visualize.main(visualize.get_args_parser().parse_args(["--resume", checkpoint, "--gpu", "cpu",
                                                           "--out_dir", str(tmp_path / "out"), *flag]))
    assert calls[0]["pl_start"] == expected


def test_cli_missing_checkpoint_is_one_error_line(tmp_path):
    proc = run_visualize("--resume", str(tmp_path / "nothing.pth"), "--gpu", "cpu")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nothing.pth" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_unwritable_out_dir_is_one_error_line(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    proc = run_visualize("--metrics", str(tmp_path / "metrics.csv"), "--out_dir", str(tmp_path / "metrics.csv"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "metrics.csv" in lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["--num_ids", "0"], "--num_ids"),
    (["--pl_start", "-1"], "--pl_start"),
    ([], "--resume"),
    (["--metrics", "missing.csv"], "missing.csv"),
    (["--metrics", "METRICS", "--out_dir", "METRICS/pictures"], "cannot write"),  # a folder under a regular file
    (["--metrics", "METRICS", "--out_dir", "METRICS"], "cannot write"),  # an existing regular file
    (["--resume", "CHECKPOINT", "--out_dir", "METRICS"], "cannot write"),  # before the test set is decoded
])
def test_cli_bad_input_exits_2(argv, fragment, tmp_path, capsys):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(METRICS_CSV)
    save_checkpoint(str(tmp_path / "ckpt.pth"), {"model": {}, "args": dict(dataset="demo", data_path="nowhere",
                                                                           img_h=IMG_H, img_w=IMG_W)})
    argv = [arg.replace("METRICS", str(metrics)).replace("CHECKPOINT", str(tmp_path / "ckpt.pth")) for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        visualize.run_cli(lambda: visualize.main(visualize.get_args_parser().parse_args(argv)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and fragment in err and len(err.splitlines()) == 1
    assert metrics.read_text() == METRICS_CSV  # nothing written over the file


def test_cli_curves_only_from_a_metrics_csv(tmp_path, capsys, monkeypatch):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    drawn = []
    draw_curves = visualize.curves_figure
    monkeypatch.setattr(visualize, "curves_figure", lambda *args: drawn.append(args[1:]) or draw_curves(*args))
    visualize.main(visualize.get_args_parser().parse_args(["--metrics", str(path), "--pl_start", "2"]))
    assert open_png(tmp_path / "curves.png").size == visualize.CURVES_SIZE
    assert drawn == [(2,)] and sorted(os.listdir(tmp_path)) == ["curves.png", "metrics.csv"]
    assert "curves.png" in capsys.readouterr().out
