"""Pictures of a trained model and its run: a t-SNE map of test features, ranked lists, training curves.

    python visualize.py --resume save_model/demo_all_resnet18_seed0_best.pth --gpu cpu
    python visualize.py --resume save_model/sysu_all_resnet50_seed0_last.pth --gpu 0 --num_ids 30 --num_queries 12
    python visualize.py --metrics log/sysu_all_resnet50_seed0/metrics.csv        # curves only, no model

Written into the run's folder log/<run_name>/ (--out_dir overrides; with --metrics alone, the CSV's folder):
  tsne.png    t-SNE of the query and gallery features of --num_ids sampled test identities: one colour per
              identity, a circle per visible image, a triangle per infrared (RegDB: thermal) image. The model
              bridges the modalities where both markers of one colour share a cluster.
  ranked.png  --num_queries sampled queries and their 10 nearest gallery images (SYSU: gallery trial 0 with
              the camera rule; RegDB: visible -> thermal); a green frame marks the query's identity, red another.
  curves.png  the run's history per epoch: losses, pseudo-label pool size and precision, rank-1 and mAP;
              dashed lines mark the epochs followed by a pseudo-label round.
Drawn with Pillow only (matplotlib is not a dependency). train_mine.py calls write_pictures after a run.
"""
import colorsys
import csv
import functools
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from data_manager import protocol_of
from evaluate import build_test_set, extract_features
from model import INFRARED, VISIBLE, embed_net_from_checkpoint
from utils import ArgumentParser, UserError, atomic_write, choose_device, load_checkpoint, number, run_cli

TOP_K = 10  # gallery images shown per query
TSNE_SIZE, CURVES_SIZE = (1000, 760), (1000, 1000)  # pixels (width, height)
IMAGES_PER_ID = 16  # per identity and modality in the t-SNE: enough to see a cluster, few enough to see each point
WHITE, INK, GREY, LIGHT_GREY = (255, 255, 255), (25, 25, 25), (110, 110, 110), (228, 228, 228)
GREEN, RED, QUERY_BLUE = (0, 160, 60), (220, 30, 30), (40, 90, 200)
ROUND_COLOUR = (150, 100, 200)  # the dashed lines of pseudo-label rounds
# tab20's colours, the strong ten first: neighbours in the legend differ most while there are few identities
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229)]
MARKERS = {VISIBLE: "circle", INFRARED: "triangle"}
# the panels of curves.png: title, and the history columns drawn in it (None: every column starting with "loss")
CURVE_PANELS = (("losses", None), ("pseudo-label pool size (images)", ("pool_size",)),
                ("pseudo-label precision (%)", ("pool_precision",)), ("test rank-1 and mAP (%)", ("rank1", "mAP")))


# ---------------------------------------------------------------------------------------------- drawing basics

@functools.lru_cache(maxsize=None)
def load_font(size):
    """Pillow's built-in font at `size` px (Pillow >= 10.1); older Pillow only has a fixed small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default()


def text_size(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def draw_centered_text(draw, centre_x, top, text, font, fill=INK):
    draw.text((centre_x - text_size(draw, text, font)[0] / 2, top), text, font=font, fill=fill)


def draw_marker(draw, x, y, shape, colour, radius=5):
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=INK)
    else:  # an upward triangle centred on (x, y)
        corners = [(x, y - 1.3 * radius), (x - 1.15 * radius, y + 0.7 * radius), (x + 1.15 * radius, y + 0.7 * radius)]
        draw.polygon(corners, fill=colour, outline=INK)


def identity_colours(num):
    """num distinct RGB colours: tab20 up to 20, then golden-angle hues (neighbours stay far apart)."""
    hues = (0.618034 * np.arange(max(0, num - len(PALETTE)))) % 1.0
    extra = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.85)) for hue in hues]
    return (PALETTE + extra)[:num]


def save_png(image, path):
    """Write atomically, so a reader never sees half a picture; in 256 colours, which keeps the files small
    (a ranked list of photos: 0.2 MB instead of 0.9 MB) and changes nothing a reader can see."""
    small = image.convert("RGB").quantize(256)
    atomic_write(path, lambda tmp_path: small.save(tmp_path, format="PNG", optimize=True))
    return path


# ---------------------------------------------------------------------------------------------- t-SNE

def tsne_embedding(features, seed=0):
    """(N, D) features -> (N, 2) float t-SNE coordinates; seeded, PCA-initialised: the same input gives the same map.

    Perplexity min(30, (N - 1) / 3), so small sets work; with fewer than 4 points (too few for t-SNE) the
    points are put on a line.
    """
    # imported here: train_mine.py imports this module, and scikit-learn adds a second to every start-up
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    features = np.asarray(features, dtype=np.float32)
    num = len(features)
    if num < 4:
        return np.column_stack([np.arange(num), np.zeros(num)]).astype(np.float32)
    tsne = TSNE(n_components=2, perplexity=min(30.0, (num - 1) / 3.0), init="pca", random_state=seed)
    # one thread: a few hundred points gain nothing from more, and OpenMP threads that spin-wait on shared cores
    # stall (measured on a loaded 2-core machine: 72 points took 15-19 s with 2 threads, 0.3 s with 1)
    with threadpool_limits(limits=1):
        return tsne.fit_transform(features)


def fit_to_box(points, box):
    """Scale (N, 2) points into box (left, top, right, bottom) with one scale for both axes (t-SNE distances
    are isotropic) and y pointing up; returns (N, 2) pixel coordinates."""
    points = np.asarray(points, dtype=np.float64)
    left, top, right, bottom = box
    low, high = points.min(0), points.max(0)
    span = np.maximum(high - low, 1e-12)
    scale = min((right - left) / span[0], (bottom - top) / span[1])
    centre = (low + high) / 2
    x = (left + right) / 2 + (points[:, 0] - centre[0]) * scale
    y = (top + bottom) / 2 - (points[:, 1] - centre[1]) * scale
    return np.column_stack([x, y])


def draw_scatter(points, pids, modal, size=TSNE_SIZE, title="t-SNE of test features", subtitle="",
                 modality_names=("visible", "infrared")):
    """A scatter picture of 2-d points: colour = identity, marker = modality (circle VISIBLE, triangle INFRARED).

    points (N, 2); pids (N,) identities; modal (N,) VISIBLE/INFRARED of each point. The legend gives each
    identity's colour (in columns when there are many) and the two markers, named by modality_names.
    """
    points, pids, modal = np.asarray(points), np.asarray(pids), np.asarray(modal)
    width, height = size
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    title_font, font = load_font(20), load_font(14)
    margin, row_h, col_w = 16, 20, 84
    draw.text((margin, margin), title, font=title_font, fill=INK)
    draw.text((margin, margin + 28), subtitle, font=font, fill=GREY)
    top = margin + 56

    ids = np.unique(pids)
    colours = identity_colours(len(ids))
    # legend: the two markers, then the identities, column by column
    rows_per_col = max(1, (height - top - margin - 3 * row_h - 8) // row_h)
    num_cols = max(1, math.ceil(len(ids) / rows_per_col))
    legend_left = width - margin - max(num_cols * col_w, 130)
    for i, (code, name) in enumerate(((VISIBLE, modality_names[0]), (INFRARED, modality_names[1]))):
        y = top + i * row_h + row_h / 2
        draw_marker(draw, legend_left + 8, y, MARKERS[code], LIGHT_GREY)
        draw.text((legend_left + 20, y - 8), f"{name} ({MARKERS[code]})", font=font, fill=INK)
    ids_top = top + 2 * row_h + 8
    draw.text((legend_left, ids_top), "identity", font=font, fill=GREY)
    for i, (pid, colour) in enumerate(zip(ids, colours)):
        x = legend_left + (i // rows_per_col) * col_w
        y = ids_top + row_h * (1 + i % rows_per_col)
        draw.rectangle([x, y + 3, x + 14, y + 15], fill=colour, outline=INK)
        draw.text((x + 20, y + 1), f"id {pid}", font=font, fill=INK)

    plot_box = (margin, top, legend_left - 2 * margin, height - margin)
    draw.rectangle(plot_box, outline=LIGHT_GREY)
    if len(points) == 0:
        draw_centered_text(draw, (plot_box[0] + plot_box[2]) / 2, (plot_box[1] + plot_box[3]) / 2, "no points", font)
        return image
    inner = (plot_box[0] + 12, plot_box[1] + 12, plot_box[2] - 12, plot_box[3] - 12)
    xy = fit_to_box(points, inner)
    colour_index = np.searchsorted(ids, pids)
    for (x, y), colour, code in zip(xy, colour_index, modal):  # one shape per point: PIL has no batched markers
        draw_marker(draw, x, y, MARKERS[int(code)], colours[colour])
    return image


def sample_identity_rows(pids, chosen_ids, per_id, rng):
    """Sorted rows of `pids` whose identity is in chosen_ids, at most per_id per identity, drawn at random."""
    rows = np.flatnonzero(np.isin(pids, chosen_ids))
    rows = rows[rng.permutation(len(rows))]
    rows = rows[np.argsort(pids[rows], kind="stable")]  # grouped by identity, random order inside a group
    position_in_group = np.arange(len(rows)) - np.searchsorted(pids[rows], pids[rows])
    return np.sort(rows[position_in_group < per_id])


# ---------------------------------------------------------------------------------------------- ranked lists

def camera_allowed(query_cams, gallery_cams):
    """(Q, G) bool: the SYSU-MM01 rule, queries of camera 3 ignore gallery images of camera 2 (same room).
    Without cameras (RegDB: None) every pair is allowed."""
    if query_cams is None or gallery_cams is None:
        return None
    return ~((np.asarray(query_cams)[:, None] == 3) & (np.asarray(gallery_cams)[None, :] == 2))


def rank_gallery(query_feats, gallery_feats, allowed=None, top_k=TOP_K):
    """Nearest gallery images of each query by cosine similarity of L2-normalised features.

    query_feats (Q, D), gallery_feats (G, D); allowed (Q, G) bool or None (all allowed). Returns (Q, min(top_k, G))
    int64 gallery indices, nearest first, -1 where a query has fewer allowed images than columns.
    """
    similarity = np.asarray(query_feats, dtype=np.float32) @ np.asarray(gallery_feats, dtype=np.float32).T  # (Q, G)
    if allowed is not None:
        similarity = np.where(allowed, similarity, -np.inf)
    ranking = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
    if allowed is None:
        return ranking
    return np.where(np.take_along_axis(allowed, ranking, axis=1), ranking, -1)


def sample_queries(query_pids, gallery_pids, allowed, num, rng):
    """Up to num sorted query rows that have a true match among their allowed gallery images, one per identity
    first so that the rows show different people."""
    has_match = query_pids[:, None] == gallery_pids[None, :]  # (Q, G)
    if allowed is not None:
        has_match &= allowed
    candidates = rng.permutation(np.flatnonzero(has_match.any(1)))
    _, first = np.unique(query_pids[candidates], return_index=True)
    is_first = np.zeros(len(candidates), dtype=bool)
    is_first[first] = True
    return np.sort(np.concatenate([candidates[is_first], candidates[~is_first]])[:num])


def resize_to_height(images, height):
    """(N, H, W, 3) uint8 -> (N, height, round(W * height / H), 3) uint8, antialiased, in one batched call."""
    images = np.asarray(images)
    width = max(1, round(images.shape[2] * height / images.shape[1]))
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


RANKED = dict(margin=16, header_h=64, caption_h=18, frame=4, col_gap=6, query_gap=28, row_gap=10, min_width=620)


def ranked_layout(num_queries, top_k, image_w, image_h):
    """Where ranked_picture puts its cells: image_w x image_h is the displayed image size.

    Returns (boxes, (width, height)): boxes (num_queries, 1 + top_k, 4) int64 (left, top, right, bottom) of each
    cell's frame, column 0 the query; the image sits RANKED['frame'] px inside its box; a caption line above
    and one below each cell.
    """
    r = RANKED
    cell_w, cell_h = image_w + 2 * r["frame"], image_h + 2 * r["frame"]
    cols = np.arange(1 + top_k)
    lefts = r["margin"] + cols * (cell_w + r["col_gap"]) + (cols > 0) * r["query_gap"]
    row_h = r["caption_h"] + cell_h + r["caption_h"] + r["row_gap"]
    tops = r["margin"] + r["header_h"] + np.arange(num_queries) * row_h + r["caption_h"]
    boxes = np.zeros((num_queries, 1 + top_k, 4), dtype=np.int64)
    boxes[..., 0], boxes[..., 1] = lefts[None, :], tops[:, None]
    boxes[..., 2], boxes[..., 3] = boxes[..., 0] + cell_w - 1, boxes[..., 1] + cell_h - 1
    width = max(int(lefts[-1]) + cell_w + r["margin"], r["min_width"])
    height = r["margin"] + r["header_h"] + num_queries * row_h + r["margin"]
    return boxes, (width, height)


def ranked_picture(query_images, gallery_images, ranking, is_match, query_labels=None, gallery_labels=None,
                   image_height=128, title="Ranked lists"):
    """Each query (blue frame) and its ranked gallery images: green frame = same identity, red = another.

    query_images (Q, H, W, 3) and gallery_images (G, H, W, 3) uint8; ranking (Q, K) indices into gallery_images,
    nearest first, -1 for an empty cell; is_match (Q, K) bool; query_labels (Q,) and gallery_labels (G,) short
    captions shown under the images. Images are scaled to image_height px. Cell positions: ranked_layout.
    """
    ranking, is_match = np.asarray(ranking), np.asarray(is_match, dtype=bool)
    if ranking.shape != is_match.shape or ranking.shape[0] != len(query_images):
        raise ValueError(f"ranking {ranking.shape}, is_match {is_match.shape} and {len(query_images)} queries disagree")
    num_queries, top_k = ranking.shape
    query_small = resize_to_height(query_images, image_height)
    gallery_small = resize_to_height(gallery_images, image_height) if len(gallery_images) else None
    image_w = query_small.shape[2]
    boxes, size = ranked_layout(num_queries, top_k, image_w, image_height)
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    title_font, font, small = load_font(20), load_font(14), load_font(12)
    margin, frame, caption_h = RANKED["margin"], RANKED["frame"], RANKED["caption_h"]
    draw.text((margin, margin), title, font=title_font, fill=INK)
    x = margin
    for colour, text in ((QUERY_BLUE, "query"), (GREEN, "same identity as the query"), (RED, "another identity")):
        draw.rectangle([x, margin + 34, x + 14, margin + 48], outline=colour, width=3)
        draw.text((x + 20, margin + 33), text, font=font, fill=INK)
        x += 20 + text_size(draw, text, font)[0] + 24

    for q in range(num_queries):
        cells = [(query_small[q], QUERY_BLUE, "query", None if query_labels is None else query_labels[q])]
        for k in range(top_k):
            g = int(ranking[q, k])
            cells.append((None if g < 0 else gallery_small[g], GREEN if is_match[q, k] else RED, f"#{k + 1}",
                          None if g < 0 or gallery_labels is None else gallery_labels[g]))
        for (left, top, right, bottom), (picture, colour, header, caption) in zip(boxes[q], cells):
            centre = (left + right) / 2
            draw_centered_text(draw, centre, top - caption_h + 1, header, small, INK)
            if picture is None:  # fewer allowed gallery images than columns
                draw.rectangle([left, top, right, bottom], outline=LIGHT_GREY, width=1)
                continue
            draw.rectangle([left, top, right, bottom], fill=colour)
            image.paste(Image.fromarray(picture), (int(left) + frame, int(top) + frame))
            if caption is not None:
                draw_centered_text(draw, centre, bottom + 3, str(caption), small, GREY)
    return image


# ---------------------------------------------------------------------------------------------- curves

def read_history(path):
    """metrics.csv -> list of per-epoch dicts {column: float or None}: empty or non-numeric cells are None,
    'epoch' an int. The same shape as a checkpoint's 'history'."""
    if not os.path.isfile(path):
        raise UserError(f"metrics file not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    history = []
    for i, row in enumerate(rows):
        values = {key: to_number(value) for key, value in row.items() if key}
        values["epoch"] = int(values["epoch"]) if values.get("epoch") is not None else i
        history.append(values)
    return history


def to_number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def column_values(history, name):
    """(N,) float64 of one column over the history, NaN where a row lacks it or holds None/empty/non-numbers."""
    values = [to_number(row.get(name)) for row in history]
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64)


def history_epochs(history):
    return np.array([row.get("epoch", i) for i, row in enumerate(history)], dtype=np.float64)


def pseudo_label_epochs(history):
    """Epochs followed by a pseudo-label round: the rows with an accepted_<modality> count."""
    return [epoch for epoch, row in zip(history_epochs(history), history)
            if any(key.startswith("accepted_") and to_number(value) is not None for key, value in row.items())]


def loss_columns(history):
    """Every column starting with 'loss', in order of first appearance."""
    names = []
    for row in history:
        names += [key for key in row if key.startswith("loss") and key not in names]
    return names


def nice_ticks(low, high, max_ticks=6, integer=False):
    """Round tick values covering [low, high]: steps of 1, 2, 2.5 or 5 times a power of ten (integers if asked).
    Returns (axis_low, axis_high, ticks): the axis runs from the first to the last tick."""
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"nice_ticks needs finite bounds, got {low}, {high}")
    if high - low < 1e-12:  # a flat series: open a window around it
        pad = max(abs(low) * 0.1, 1.0 if integer else 1e-3)
        low, high = low - pad, high + pad
    raw_step = (high - low) / max(1, max_ticks - 1)
    power = 10.0 ** math.floor(math.log10(raw_step))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw_step * (1 - 1e-9))
    if integer:
        step = max(1.0, float(round(step))) if step >= 1 else 1.0
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    ticks = np.arange(first, last + 1) * step
    return float(ticks[0]), float(ticks[-1]), ticks


def format_tick(value, step):
    """A tick label with as many decimals as the step needs (2.5 -> one, 0.25 -> two)."""
    decimals = next(d for d in range(8) if abs(round(step, d) - step) <= 1e-9 * max(1.0, abs(step)))
    return f"{value:.{decimals}f}"


def draw_dashed_vline(draw, x, top, bottom, colour, dash=5, gap=4):
    for y in range(int(top), int(bottom), dash + gap):
        draw.line([(x, y), (x, min(y + dash, bottom))], fill=colour, width=1)


def draw_panel(draw, box, epochs, series, x_axis, round_epochs, title):
    """One panel of curves.png in box (left, top, right, bottom): a title and legend line, y ticks on the left,
    epoch ticks below, dashed lines at round_epochs. series: [(name, values (N,) with NaN = missing)]."""
    left, top, right, bottom = box
    font, small = load_font(15), load_font(12)
    plot = (left + 64, top + 26, right - 12, bottom - 22)
    draw.text((left, top), title, font=font, fill=INK)
    x = right - 12
    for i, (name, _) in reversed(list(enumerate(series))):  # legend, right-aligned on the title line
        x -= text_size(draw, name, small)[0]
        draw.text((x, top + 3), name, font=small, fill=INK)
        x -= 24
        draw.line([(x, top + 10), (x + 18, top + 10)], fill=PALETTE[i % len(PALETTE)], width=3)
        x -= 14
    draw.rectangle(plot, outline=GREY)
    x_low, x_high, x_ticks = x_axis
    to_x = lambda e: plot[0] + (e - x_low) / (x_high - x_low) * (plot[2] - plot[0])  # noqa: E731
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for tick in x_ticks:
        draw.line([(to_x(tick), plot[1] + 1), (to_x(tick), plot[3] - 1)], fill=LIGHT_GREY)
        draw_centered_text(draw, to_x(tick), plot[3] + 4, format_tick(tick, x_step), small)
    for epoch in round_epochs:
        draw_dashed_vline(draw, to_x(epoch), plot[1] + 1, plot[3] - 1, ROUND_COLOUR)

    finite = np.concatenate([values[np.isfinite(values)] for _, values in series]) if series else np.empty(0)
    if finite.size == 0:
        names = ", ".join(name for name, _ in series) or "no loss column"
        draw_centered_text(draw, (plot[0] + plot[2]) / 2, (plot[1] + plot[3]) / 2 - 8, f"no data ({names})", font, GREY)
        return
    y_low, y_high, y_ticks = nice_ticks(float(finite.min()), float(finite.max()), max_ticks=5)
    to_y = lambda v: plot[3] - (v - y_low) / (y_high - y_low) * (plot[3] - plot[1])  # noqa: E731
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    for tick in y_ticks:
        draw.line([(plot[0] + 1, to_y(tick)), (plot[2] - 1, to_y(tick))], fill=LIGHT_GREY)
        label = format_tick(tick, y_step)
        draw.text((plot[0] - 6 - text_size(draw, label, small)[0], to_y(tick) - 7), label, font=small, fill=INK)
    for i, (_, values) in enumerate(series):
        present = np.isfinite(values)
        points = list(zip(to_x(epochs[present]).tolist(), to_y(values[present]).tolist()))
        colour = PALETTE[i % len(PALETTE)]
        if len(points) > 1:  # joined across missing epochs: evaluations are every few epochs by design
            draw.line(points, fill=colour, width=2, joint="curve")
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)


def curves_picture(history, size=CURVES_SIZE, title="Training curves"):
    """The run's history (list of per-epoch dicts, as in the checkpoint or read_history) as stacked panels sharing
    the epoch axis: CURVE_PANELS. Missing columns or cells are skipped; a panel without any value says so."""
    width, height = size
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    margin, header_h = 16, 60
    draw.text((margin, margin), title, font=load_font(20), fill=INK)
    draw_dashed_vline(draw, margin + 6, margin + 32, margin + 48, ROUND_COLOUR)
    draw.text((margin + 18, margin + 32), "dashed: epoch followed by a pseudo-label round", font=load_font(14),
              fill=INK)
    epochs = history_epochs(history)
    first, last = (float(epochs.min()), float(epochs.max())) if len(epochs) else (0.0, 1.0)
    x_axis = nice_ticks(first, max(last, first + 1), max_ticks=11, integer=True)  # one epoch: an axis of two
    panel_h = (height - margin - header_h - margin) / len(CURVE_PANELS)
    for i, (panel_title, names) in enumerate(CURVE_PANELS):
        names = loss_columns(history) if names is None else names
        top = margin + header_h + i * panel_h
        draw_panel(draw, (margin, top, width - margin, top + panel_h - 14), epochs,
                   [(name, column_values(history, name)) for name in names], x_axis, pseudo_label_epochs(history),
                   panel_title)
    draw_centered_text(draw, width / 2, height - margin - 2, "epoch", load_font(14))
    return image


# ---------------------------------------------------------------------------------------------- all pictures

def protocol_modalities(dataset):
    """(query modality, gallery modality, names of VISIBLE and INFRARED) of a TestSet's protocol."""
    if dataset == "regdb":
        return VISIBLE, INFRARED, ("visible", "thermal")
    return INFRARED, VISIBLE, ("visible", "infrared")


def ranked_gallery_rows(test_set):
    """The gallery the ranked lists search: SYSU gallery trial 0 (single-shot), RegDB the whole thermal list."""
    if test_set.dataset == "regdb":
        return np.arange(len(test_set.gallery_pids))
    if 0 not in test_set.gallery_rows:
        raise ValueError("the SYSU TestSet must hold gallery trial 0 (build_test_set(..., trials=[0, ...]))")
    return np.asarray(test_set.gallery_rows[0])


def subset(array, rows):
    return None if array is None else np.asarray(array)[rows]


def rows_of(feats, extracted_rows, rows):
    """The features of `rows`, from feats extracted for the sorted extracted_rows (a superset of rows)."""
    return feats[np.searchsorted(extracted_rows, rows)]


def image_captions(pids, cams=None):
    """'id 12 c4' per image (identity and camera), or 'id 12' without cameras (RegDB)."""
    if cams is None:
        return [f"id {pid}" for pid in pids]
    return [f"id {pid} c{cam}" for pid, cam in zip(pids, cams)]


def write_pictures(model, test_set, history, out_dir, device="cpu", num_ids=20, num_queries=8, seed=0,
                   batch_size=64, run_label=""):
    """Write tsne.png, ranked.png and (unless history is None) curves.png into out_dir; returns {name: path}.

    model: the feature interface of evaluate.extract_features (eval mode is set and restored there).
    test_set: an evaluate.TestSet (SYSU: with gallery trial 0). history: the run's per-epoch dicts (the
    checkpoint's 'history' or read_history(metrics.csv)). num_ids identities for the t-SNE and num_queries
    queries for the ranked lists are drawn from np.random.default_rng([seed, 0]) and ([seed, 1]), so changing
    one does not change the other. run_label (e.g. the run name and epoch) goes into the titles.
    """
    query_modal, gallery_modal, modality_names = protocol_modalities(test_set.dataset)
    q_pids, g_pids = np.asarray(test_set.query_pids), np.asarray(test_set.gallery_pids)
    suffix = f" - {run_label}" if run_label else ""

    # the rows each picture needs, then one feature extraction per modality over their union
    shared_ids = np.intersect1d(q_pids, g_pids)
    tsne_rng, query_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    chosen_ids = np.sort(tsne_rng.choice(shared_ids, min(num_ids, len(shared_ids)), replace=False))
    tsne_q = sample_identity_rows(q_pids, chosen_ids, IMAGES_PER_ID, tsne_rng)
    tsne_g = sample_identity_rows(g_pids, chosen_ids, IMAGES_PER_ID, tsne_rng)
    ranked_g = ranked_gallery_rows(test_set)
    allowed = camera_allowed(test_set.query_cams, subset(test_set.gallery_cams, ranked_g))
    ranked_q = sample_queries(q_pids, g_pids[ranked_g], allowed, num_queries, query_rng)
    q_rows, g_rows = np.union1d(tsne_q, ranked_q), np.union1d(tsne_g, ranked_g)
    q_feats = extract_features(model, test_set.query_img, query_modal, batch_size, device, indices=q_rows,
                               desc="query features").numpy()
    g_feats = extract_features(model, test_set.gallery_img, gallery_modal, batch_size, device, indices=g_rows,
                               desc="gallery features").numpy()

    paths = {}
    os.makedirs(out_dir, exist_ok=True)
    points = tsne_embedding(np.concatenate([rows_of(q_feats, q_rows, tsne_q), rows_of(g_feats, g_rows, tsne_g)]), seed)
    modal = np.concatenate([np.full(len(tsne_q), query_modal), np.full(len(tsne_g), gallery_modal)])
    subtitle = (f"{len(chosen_ids)} test identities, {len(tsne_q)} query and {len(tsne_g)} gallery images "
                f"(at most {IMAGES_PER_ID} per identity and modality)")
    paths["tsne"] = save_png(draw_scatter(points, np.concatenate([q_pids[tsne_q], g_pids[tsne_g]]), modal,
                                          title="t-SNE of test features" + suffix, subtitle=subtitle,
                                          modality_names=modality_names), os.path.join(out_dir, "tsne.png"))

    ranking = rank_gallery(rows_of(q_feats, q_rows, ranked_q), rows_of(g_feats, g_rows, ranked_g),
                           None if allowed is None else allowed[ranked_q], TOP_K)
    is_match = (ranking >= 0) & (g_pids[ranked_g][np.maximum(ranking, 0)] == q_pids[ranked_q][:, None])
    where = "gallery trial 0" if test_set.dataset != "regdb" else "visible -> thermal"
    paths["ranked"] = save_png(ranked_picture(
        test_set.query_img[ranked_q], test_set.gallery_img[ranked_g], ranking, is_match,
        image_captions(q_pids[ranked_q], subset(test_set.query_cams, ranked_q)),
        image_captions(g_pids[ranked_g], subset(test_set.gallery_cams, ranked_g)),
        title=f"Top-{ranking.shape[1]} gallery images ({where}){suffix}"), os.path.join(out_dir, "ranked.png"))

    if history is not None:
        paths["curves"] = save_png(curves_picture(history, title="Training curves" + suffix),
                                   os.path.join(out_dir, "curves.png"))
    return paths


# ---------------------------------------------------------------------------------------------- command line

def default_out_dir(run_args):
    """The run's own folder, beside its log.txt and metrics.csv."""
    return os.path.join(run_args.get("log_path", "log/"), run_args.get("run_name", "run"))


def get_args_parser():
    parser = ArgumentParser(description="Pictures of a CPL run: t-SNE of test features, ranked lists, "
                                        "training curves (PNG, drawn with Pillow).")
    parser.add_argument("--resume", default="", help="checkpoint of train_mine.py (save_model/<run>_best.pth)")
    parser.add_argument("--metrics", default="",
                        help="metrics.csv to draw curves.png from (instead of the checkpoint's history); "
                             "without --resume only curves.png is written")
    parser.add_argument("--num_ids", default=20, type=number(int, 1),
                        help="test identities in the t-SNE (up to 20 get the most distinct colours)")
    parser.add_argument("--num_queries", default=8, type=number(int, 1), help="queries (rows) in ranked.png")
    parser.add_argument("--out_dir", default="", help="default: the run's folder <log_path>/<run_name>/")
    parser.add_argument("--data_path", default="", help="dataset root; default: the checkpoint's")
    parser.add_argument("--gpu", default="0", help="CUDA index, or 'cpu'")
    parser.add_argument("--seed", default=0, type=int, help="draws the identities and queries shown")
    return parser


def main(args):
    if not args.resume and not args.metrics:
        raise UserError("give --resume CHECKPOINT (all pictures) or --metrics metrics.csv (curves only)")
    history = read_history(args.metrics) if args.metrics else None
    if not args.resume:
        out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.metrics))
        print(f"wrote {save_png(curves_picture(history), os.path.join(out_dir, 'curves.png'))}")
        return
    state = load_checkpoint(args.resume, required_keys=("model", "args"))
    run = state["args"]
    missing = [key for key in ("dataset", "data_path", "img_h", "img_w") if key not in run]
    if missing:
        raise UserError(f"checkpoint {args.resume}: its args lack {', '.join(missing)}")
    device = choose_device(args.gpu)
    model = embed_net_from_checkpoint(state, args.resume).to(device)
    test_set = build_test_set(protocol_of(run["dataset"]), args.data_path or run["data_path"], run["img_h"],
                              run["img_w"], mode=run.get("mode", "all"), trial=run.get("trial", 1), trials=[0],
                              workers=run.get("workers", 0))
    label = f"{run.get('run_name', os.path.basename(args.resume))}, epoch {state.get('epoch', '?')}"
    paths = write_pictures(model, test_set, history if history is not None else state.get("history"),
                           args.out_dir or default_out_dir(run), device, args.num_ids, args.num_queries, args.seed,
                           run.get("test_batch_size", 64), run_label=label)
    for path in paths.values():
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
