"""visualize.py: each picture from tiny data, the t-SNE and ranking logic on hand-made inputs, the CLI end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import visualize
from evaluate import build_test_set
from model import INFRARED, VISIBLE, embed_net
from utils import save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG_H, IMG_W = 32, 16
TINY_MODEL = dict(arch="resnet18", num_parts=6, part_dim=32)

HISTORY = [  # as train_mine.py keeps it: rounds from epoch 2, evaluations on epochs 2 and 3
    {"epoch": 0, "lr": 0.005, "loss": 4.0, "loss_id": 3.0, "loss_tri": 1.0, "pool_size": 0, "pool_precision": None},
    {"epoch": 1, "lr": 0.01, "loss": 3.5, "loss_id": 2.6, "loss_tri": 0.9, "pool_size": 0, "pool_precision": None},
    {"epoch": 2, "lr": 0.01, "loss": 3.0, "loss_id": 2.0, "loss_tri": 0.8, "loss_dce": 0.4, "accepted_rgb": 3,
     "accepted_ir": 2, "pool_size": 5, "pool_precision": 80.0, "rank1": 25.0, "mAP": 20.0},
    {"epoch": 3, "lr": 0.01, "loss": 2.5, "loss_id": 1.5, "loss_tri": 0.7, "loss_dce": 0.3, "accepted_rgb": 1,
     "accepted_ir": 0, "pool_size": 6, "pool_precision": 83.3, "rank1": 30.0, "mAP": 24.0},
]


def tiny_model(num_classes=6):
    torch.manual_seed(0)
    return embed_net(num_classes, pretrained="none", **TINY_MODEL)


def open_png(path):
    image = Image.open(path)
    assert image.format == "PNG"
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------- all pictures

def test_write_pictures_gives_pngs_of_the_stated_sizes(tiny_sysu, tmp_path):
    test_set = build_test_set("sysu", tiny_sysu, IMG_H, IMG_W, trials=[0])
    paths = visualize.write_pictures(tiny_model(), test_set, HISTORY, str(tmp_path), num_ids=3, num_queries=3,
                                     batch_size=16, run_label="tiny")
    assert set(paths) == {"tsne", "ranked", "curves"}
    assert open_png(paths["tsne"]).size == visualize.TSNE_SIZE
    assert open_png(paths["curves"]).size == visualize.CURVES_SIZE
    shown_w = round(IMG_W * 128 / IMG_H)  # ranked_picture's default display height is 128 px
    assert open_png(paths["ranked"]).size == visualize.ranked_layout(3, visualize.TOP_K, shown_w, 128)[1]
    assert not any(name.startswith(".tmp_") for name in os.listdir(tmp_path))  # atomic writes left nothing


def test_write_pictures_without_history_skips_the_curves(tiny_regdb_preprocessed, tmp_path):
    test_set = build_test_set("regdb", tiny_regdb_preprocessed, IMG_H, IMG_W, trial=1)
    paths = visualize.write_pictures(tiny_model(4), test_set, None, str(tmp_path), num_queries=2, batch_size=16)
    assert set(paths) == {"tsne", "ranked"} and sorted(os.listdir(tmp_path)) == ["ranked.png", "tsne.png"]


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


def test_scatter_draws_every_identity_colour():
    points = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [6, 5], [5, 6]], dtype=float)
    image = visualize.draw_scatter(points, np.array([7, 7, 7, 9, 9, 9]), np.array([VISIBLE, INFRARED] * 3),
                                   size=(400, 300))
    pixels = np.asarray(image).reshape(-1, 3)
    assert image.size == (400, 300)
    for colour in visualize.identity_colours(2):
        assert (pixels == colour).all(1).sum() > 50  # the points and the legend square


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
    ranking = visualize.rank_gallery(query, gallery, allowed, top_k=4)
    np.testing.assert_array_equal(ranking, [[0, 3, 2, 1], [3, 0, -1, -1]])
    assert visualize.camera_allowed(None, None) is None
    np.testing.assert_array_equal(visualize.rank_gallery(query, gallery, None, top_k=2), [[0, 3], [1, 2]])


def test_sample_queries_needs_a_true_match_and_prefers_new_identities():
    query_pids, gallery_pids = np.array([5, 5, 5, 6, 7]), np.array([5, 6, 8])
    allowed = np.ones((5, 3), dtype=bool)
    allowed[3, 1] = False  # query 3 cannot see its only match
    picked = visualize.sample_queries(query_pids, gallery_pids, allowed, 2, np.random.default_rng(0))
    assert len(picked) == 2 and set(query_pids[picked]) == {5}  # only identity 5 has a visible match
    picked = visualize.sample_queries(query_pids, gallery_pids, None, 2, np.random.default_rng(0))
    assert sorted(query_pids[picked]) == [5, 6]  # one per identity before a second of the same


def test_ranked_frames_are_green_exactly_where_the_identity_matches():
    # uniform grey images whose level names the image, so the pasted picture of each cell can be checked too
    query_images = np.full((2, 8, 4, 3), 10, dtype=np.uint8)
    gallery_images = (20 + 10 * np.arange(6, dtype=np.uint8))[:, None, None, None] * np.ones((1, 8, 4, 3), np.uint8)
    ranking = np.array([[4, 0, 2, -1], [1, 5, 3, 0]])
    is_match = np.array([[True, False, True, False], [False, False, True, True]])
    image = visualize.ranked_picture(query_images, gallery_images, ranking, is_match,
                                     query_labels=["q0", "q1"], gallery_labels=[f"g{i}" for i in range(6)],
                                     image_height=32)
    pixels = np.asarray(image)
    boxes, size = visualize.ranked_layout(2, 4, 16, 32)
    assert image.size == size
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
            elif ranking[q, col - 1] < 0:  # an empty cell: no frame, no image
                assert tuple(pixels[middle_y, left + frame]) == visualize.WHITE
                continue
            else:
                expected = visualize.GREEN if is_match[q, col - 1] else visualize.RED
                level = 20 + 10 * ranking[q, col - 1]
            assert all(tuple(p) == expected for p in edge_pixels), (q, col)
            assert tuple(centre) == (level, level, level), (q, col)


# ---------------------------------------------------------------------------------------------- curves

METRICS_CSV = """epoch,lr,loss,loss_id,loss_tri,data_wait,pool_size,pool_rgb,pool_ir,pool_precision,time,loss_dce,accepted_rgb,accepted_ir,rank1,mAP,mINP
0,0.005,4.1,3.0,1.1,0.01,0,0,0,,10.0,,,,,,
1,0.01,3.6,2.7,0.9,0.01,0,0,0,,10.0,,,,,,
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
    np.testing.assert_array_equal(visualize.column_values(history, "mAP"), [np.nan, np.nan, 18.5, np.nan, 22.0])
    assert np.isnan(visualize.column_values(history, "no_such_column")).all()


def test_curves_from_a_metrics_csv_with_empty_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    image = visualize.curves_picture(visualize.read_history(str(path)))
    pixels = np.asarray(image).reshape(-1, 3)
    assert image.size == visualize.CURVES_SIZE
    # one colour per series of a panel: the first (loss, pool_size, pool_precision, rank1) and the fourth
    # (loss_dce) are drawn as lines, not only named in a legend
    for colour in (visualize.PALETTE[0], visualize.PALETTE[3]):
        assert (pixels == colour).all(1).sum() > 300
    assert (pixels == visualize.ROUND_COLOUR).all(1).sum() > 100  # the dashed round markers


def test_curves_with_missing_columns_and_one_epoch():
    image = visualize.curves_picture([{"epoch": 0, "loss": 1.0}])
    assert image.size == visualize.CURVES_SIZE
    assert (np.asarray(image).reshape(-1, 3) == visualize.PALETTE[0]).all(1).any()
    visualize.curves_picture([])  # nothing at all: every panel says so


@pytest.mark.parametrize("low, high, integer, expected", [
    (0, 7, True, [0, 1, 2, 3, 4, 5, 6, 7]),
    (0.013, 0.87, False, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (18.5, 26.0, False, [18, 20, 22, 24, 26]),
])
def test_nice_ticks(low, high, integer, expected):
    axis_low, axis_high, ticks = visualize.nice_ticks(low, high, max_ticks=6 if not integer else 11, integer=integer)
    np.testing.assert_allclose(ticks, expected)
    assert axis_low <= low and axis_high >= high


def test_format_tick_uses_the_decimals_of_the_step():
    assert visualize.format_tick(2.5, 2.5) == "2.5"
    assert visualize.format_tick(0.75, 0.25) == "0.75"
    assert visualize.format_tick(40.0, 20.0) == "40"


# ---------------------------------------------------------------------------------------------- command line

def run_visualize(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "visualize.py"), *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_end_to_end_on_a_checkpoint(tiny_sysu_preprocessed, tmp_path):
    run_args = dict(dataset="demo", data_path=tiny_sysu_preprocessed, mode="all", trial=1, img_h=IMG_H, img_w=IMG_W,
                    log_path=str(tmp_path / "log"), run_name="tiny", test_batch_size=16, workers=0, **TINY_MODEL)
    checkpoint = str(tmp_path / "tiny_best.pth")
    save_checkpoint(checkpoint, {"model": tiny_model().state_dict(), "args": run_args, "epoch": 3,
                                 "history": HISTORY})
    out_dir = tmp_path / "pictures"
    proc = run_visualize("--resume", checkpoint, "--gpu", "cpu", "--out_dir", str(out_dir), "--num_ids", "3",
                         "--num_queries", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("tsne.png", "ranked.png", "curves.png"):
        open_png(out_dir / name)
    assert visualize.default_out_dir(run_args) == os.path.join(str(tmp_path / "log"), "tiny")


def test_cli_missing_checkpoint_is_one_error_line(tmp_path):
    proc = run_visualize("--resume", str(tmp_path / "nothing.pth"), "--gpu", "cpu")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nothing.pth" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, fragment", [
    (["--num_ids", "0"], "--num_ids"),
    ([], "--resume"),
    (["--metrics", "missing.csv"], "missing.csv"),
])
def test_cli_bad_input_exits_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        visualize.run_cli(lambda: visualize.main(visualize.get_args_parser().parse_args(argv)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and fragment in err and len(err.splitlines()) == 1


def test_cli_curves_only_from_a_metrics_csv(tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    path.write_text(METRICS_CSV)
    visualize.main(visualize.get_args_parser().parse_args(["--metrics", str(path)]))
    assert open_png(tmp_path / "curves.png").size == visualize.CURVES_SIZE
    assert "curves.png" in capsys.readouterr().out
