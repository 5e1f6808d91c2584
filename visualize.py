"""Pictures of a trained model and its run: a t-SNE map of test features, ranked lists, training curves.

    python visualize.py --resume save_model/demo_all_resnet18_seed0_best.pth --gpu cpu
    python visualize.py --resume save_model/sysu_all_resnet50_seed0_last.pth --gpu 0 --num_ids 30 --num_queries 12
    python visualize.py --metrics log/sysu_all_resnet50_seed0/metrics.csv --pl_start 6   # curves only, no model

Written into the run's folder log/<run_name>/ (--out_dir overrides; with --metrics alone, the CSV's folder):
  tsne.png     t-SNE of the query and gallery features of --num_ids sampled test identities: one colour per
               identity, a circle per visible image, a triangle per infrared (RegDB: thermal) image. The model
               bridges the modalities where both markers of one colour share a cluster.
  tsne.npz     what tsne.png shows, to redraw it: points (N, 2) float32, pid (N,), modality (N,) 0 visible /
               1 infrared, is_query (N,) bool, row (N,): the image's row in the test set's query arrays where
               is_query, else in its gallery arrays.
  ranked.png   --num_queries sampled queries and their 10 nearest gallery images (SYSU: gallery trial 0 with
               the camera rule; RegDB: visible -> thermal); a green frame marks the query's identity, red another.
  ranked.json  what ranked.png shows: per query its row in the query arrays, the gallery rows of its top 10 in rank
               order (fewer where the camera rule leaves fewer), is_match and the cosine similarity of each.
  curves.png   the run's history per epoch: losses, pseudo-label pool size and precision, rank-1 and mAP;
               dashed lines mark the epochs followed by a pseudo-label round, a solid line --pl_start (between the
               identity-only stage and the first semi-supervised epoch).
Drawn with matplotlib on its Agg canvas (no display, pyplot untouched). train_mine.py calls write_pictures after a run.
"""
import colorsys
import csv
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data_manager import protocol_of
from evaluate import build_test_set, extract_features
from model import INFRARED, VISIBLE, embed_net_from_checkpoint
from utils import (ArgumentParser, UserError, atomic_write_all, check_writable, choose_device, load_checkpoint,
                   number, run_cli)

TOP_K = 10  # gallery images shown per query
DPI = 100  # sizes are in pixels; font sizes in points, 1 pt = DPI / 72 px
TSNE_SIZE, CURVES_SIZE = (1000, 760), (1000, 1000)  # pixels (width, height)
IMAGES_PER_ID = 16  # per identity and modality in the t-SNE: enough to see a cluster, few enough to see each point
INK, GREY = "#191919", "#6e6e6e"
WHITE, LIGHT_GREY = (255, 255, 255), (228, 228, 228)  # uint8 RGB of the ranked.png canvas
GREEN, RED, QUERY_BLUE = (0, 160, 60), (220, 30, 30), (40, 90, 200)  # ranked.png frames, uint8 RGB
ROUND_COLOUR = "#9664c8"  # the dashed lines of pseudo-label rounds
PL_START_COLOUR = "#202020"  # the --pl_start line: solid and dark, unlike the rounds and every series
# tab20's colours, the strong ten first: neighbours in the legend differ most while there are few identities
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]
MARKERS = {VISIBLE: ("o", "circle"), INFRARED: ("^", "triangle")}  # matplotlib marker, its name in the legend
# the panels of curves.png: title, the history columns drawn in it (None: every column starting with "loss"), and
# whether to write the values at the end of the identity-only stage and at the last epoch beside their points
CURVE_PANELS = (("losses", None, False), ("pseudo-label pool size (images)", ("pool_size",), False),
                ("pseudo-label precision (%)", ("pool_precision",), False),
                ("test rank-1 and mAP (%)", ("rank1", "mAP"), True))


# ---------------------------------------------------------------------------------------------- figures and files

def new_figure(size, **kwargs):
    """A matplotlib Figure of size (width, height) pixels on its own Agg canvas: no display needed, and pyplot's
    global state (backend, current figure) stays as anyone else in the process set it."""
    # imported here: train_mine.py imports this module, and matplotlib adds a good part of a second to start-up
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, **kwargs)
    FigureCanvasAgg(figure)
    return figure


def figure_pixels(figure):
    """(height, width, 3) uint8 RGB of the rendered figure."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def png_writer(figure):
    """write_fn(tmp_path) for utils.atomic_write_all: the figure as a 256-colour PNG, which keeps the files small
    (a ranked list of photos: 0.2 MB instead of 0.9 MB) and changes nothing a reader can see."""
    small = Image.fromarray(figure_pixels(figure)).quantize(256)
    return lambda tmp_path: small.save(tmp_path, format="PNG", optimize=True)


def npz_writer(arrays):
    def write(tmp_path):
        with open(tmp_path, "wb") as f:  # np.savez would append .npz to a name lacking it
            np.savez(f, **arrays)
    return write


def json_writer(record):
    def write(tmp_path):
        with open(tmp_path, "w") as f:
            json.dump(record, f, indent=1)
    return write


def shrink_to_width(text, width):
    """Lower a matplotlib Text's font size until it is at most `width` pixels wide (a title with a long run label
    in a figure as narrow as its images)."""
    actual = text.get_window_extent(text.figure.canvas.get_renderer()).width
    if actual > width:
        text.set_fontsize(text.get_fontsize() * width / actual)


def identity_colours(num):
    """num distinct colours ('#rrggbb'): tab20 up to 20, then golden-angle hues (neighbours stay far apart)."""
    hues = (0.618034 * np.arange(max(0, num - len(PALETTE)))) % 1.0
    extra = ["#%02x%02x%02x" % tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.85)) for hue in hues]
    return (PALETTE + extra)[:num]


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


def tsne_figure(points, pids, modal, size=TSNE_SIZE, title="t-SNE of test features", subtitle="",
                modality_names=("visible", "infrared")):
    """A scatter of 2-d points: colour = identity, marker = modality (circle VISIBLE, triangle INFRARED).

    points (N, 2); pids (N,) identities; modal (N,) VISIBLE/INFRARED of each point. One scatter per modality
    present (gid 'visible' / 'infrared'), its points in input order; legends right of the map name the markers
    (by modality_names) and each identity's colour (in columns when there are many).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    points, pids, modal = np.asarray(points, dtype=np.float64).reshape(-1, 2), np.asarray(pids), np.asarray(modal)
    ids = np.unique(pids)
    colours = identity_colours(len(ids))
    point_colours = np.array(colours, dtype=object)[np.searchsorted(ids, pids)]
    figure = new_figure(size, layout="constrained")
    figure.suptitle(title, x=0.01, ha="left", fontsize=15)
    ax = figure.add_subplot()
    ax.set_title(subtitle, loc="left", fontsize=10, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")  # t-SNE distances are isotropic: one scale for both axes
    for code, gid in ((VISIBLE, "visible"), (INFRARED, "infrared")):
        here = modal == code
        if here.any():
            ax.scatter(points[here, 0], points[here, 1], c=list(point_colours[here]), marker=MARKERS[code][0], s=50,
                       edgecolors=INK, linewidths=0.6, gid=gid)
    if len(points) == 0:
        ax.text(0.5, 0.5, "no points", transform=ax.transAxes, ha="center", va="center", color=GREY)
    markers = [Line2D([], [], linestyle="none", marker=MARKERS[code][0], markersize=8, markerfacecolor="#e4e4e4",
                      markeredgecolor=INK, label=f"{name} ({MARKERS[code][1]})")
               for code, name in zip((VISIBLE, INFRARED), modality_names)]
    identities = [Patch(facecolor=colour, edgecolor=INK, label=f"id {pid}") for pid, colour in zip(ids, colours)]
    # one legend: constrained layout makes room for an axes' own legend only, not for a second one beside it
    ax.legend(handles=markers + identities, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10,
              frameon=False, borderaxespad=0, ncol=max(1, -(-len(markers + identities) // 30)))
    return figure


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

    query_feats (Q, D), gallery_feats (G, D); allowed (Q, G) bool or None (all allowed). Returns (ranking,
    similarity), both (Q, min(top_k, G)): int64 gallery indices nearest first, -1 where a query has fewer allowed
    images than columns, and float32 their cosine similarity (-inf at the -1 cells).
    """
    similarity = np.asarray(query_feats, dtype=np.float32) @ np.asarray(gallery_feats, dtype=np.float32).T  # (Q, G)
    if allowed is not None:
        similarity = np.where(allowed, similarity, -np.inf)
    ranking = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
    ranked_similarity = np.take_along_axis(similarity, ranking, axis=1)
    return np.where(np.isfinite(ranked_similarity), ranking, -1), ranked_similarity


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
    """Where ranked_figure puts its cells: image_w x image_h is the displayed image size.

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


def ranked_grid(query_small, gallery_small, ranking, is_match, boxes, size):
    """The image part of ranked_figure: (height, width, 3) uint8, white; each cell's box filled with its frame
    colour (query blue, same identity green, another red) and its image pasted RANKED['frame'] px inside;
    an empty cell (ranking -1) is a light grey outline."""
    width, height = size
    grid = np.full((height, width, 3), WHITE, dtype=np.uint8)
    frame = RANKED["frame"]
    for q, row_boxes in enumerate(boxes):
        cells = [(query_small[q], QUERY_BLUE)] + [(None if g < 0 else gallery_small[g], GREEN if match else RED)
                                                  for g, match in zip(ranking[q], is_match[q])]
        for (left, top, right, bottom), (picture, colour) in zip(row_boxes, cells):
            if picture is None:  # fewer allowed gallery images than columns
                grid[[top, bottom], left:right + 1] = LIGHT_GREY
                grid[top:bottom + 1, [left, right]] = LIGHT_GREY
                continue
            grid[top:bottom + 1, left:right + 1] = colour
            grid[top + frame:top + frame + picture.shape[0], left + frame:left + frame + picture.shape[1]] = picture
    return grid


def ranked_figure(query_images, gallery_images, ranking, is_match, query_labels=None, gallery_labels=None,
                  image_height=128, title="Ranked lists"):
    """Each query (blue frame) and its ranked gallery images: green frame = same identity, red = another.

    query_images (Q, H, W, 3) and gallery_images (G, H, W, 3) uint8; ranking (Q, K) indices into gallery_images,
    nearest first, -1 for an empty cell; is_match (Q, K) bool; query_labels (Q,) and gallery_labels (G,) short
    captions shown under the images. Images are scaled to image_height px and shown one figure pixel per image
    pixel (ranked_grid, cell positions from ranked_layout); matplotlib writes the text around them.
    """
    from matplotlib.patches import Patch
    ranking, is_match = np.asarray(ranking), np.asarray(is_match, dtype=bool)
    if ranking.shape != is_match.shape or ranking.shape[0] != len(query_images):
        raise ValueError(f"ranking {ranking.shape}, is_match {is_match.shape} and {len(query_images)} queries disagree")
    num_queries, top_k = ranking.shape
    query_small = resize_to_height(query_images, image_height)
    gallery_small = resize_to_height(gallery_images, image_height) if len(gallery_images) else None
    boxes, size = ranked_layout(num_queries, top_k, query_small.shape[2], image_height)
    figure = new_figure(size)
    ax = figure.add_axes((0, 0, 1, 1))  # the whole figure, in pixel coordinates (y down)
    ax.imshow(ranked_grid(query_small, gallery_small, ranking, is_match, boxes, size), interpolation="none")
    ax.set_axis_off()
    margin = RANKED["margin"]
    shrink_to_width(ax.text(margin, margin, title, fontsize=15, va="top", color=INK), size[0] - 2 * margin)
    keys = [Patch(facecolor="none", edgecolor=np.array(colour) / 255, linewidth=2.5, label=text) for colour, text in
            ((QUERY_BLUE, "query"), (GREEN, "same identity as the query"), (RED, "another identity"))]
    figure.legend(handles=keys, loc="upper left", bbox_to_anchor=(margin / size[0], 1 - (margin + 30) / size[1]),
                  ncol=3, frameon=False, fontsize=10, borderaxespad=0, handlelength=1.0, handleheight=1.0)
    for q in range(num_queries):
        captions = [None if query_labels is None else query_labels[q]] + [
            None if g < 0 or gallery_labels is None else gallery_labels[g] for g in ranking[q]]
        for col, ((left, top, right, bottom), caption) in enumerate(zip(boxes[q], captions)):
            centre = (left + right) / 2
            ax.text(centre, top - 3, f"#{col}" if col else "query", ha="center", va="bottom", fontsize=9, color=INK)
            if caption is not None:
                ax.text(centre, bottom + 3, str(caption), ha="center", va="top", fontsize=8.5, color=GREY)
    return figure


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


def write_values(ax, epochs, series, pl_start):
    """Write each series' value beside its point at the end of the identity-only stage (epoch pl_start - 1) and at
    the last epoch with a value: the highest above its point, the others below, so close curves stay readable."""
    with_value = np.any([np.isfinite(values) for _, values in series], axis=0)
    at_epochs = set(epochs[with_value][-1:]) | ({pl_start - 1} if pl_start is not None else set())
    for epoch in sorted(at_epochs):
        here = [(values[epochs == epoch][0], i) for i, (_, values) in enumerate(series)
                if np.isfinite(values[epochs == epoch]).any()]
        before_last = epoch < epochs[with_value][-1]  # the curve goes on to the right: write left of the point
        for order, (value, i) in enumerate(sorted(here, reverse=True)):
            ax.annotate(f"{value:.1f}", (epoch, value), xytext=(-6 if before_last else 0, 5 if order == 0 else -6),
                        textcoords="offset points", ha="right" if before_last else "center",
                        va="bottom" if order == 0 else "top", fontsize=8.5, color=PALETTE[i])


def draw_panel(ax, epochs, series, round_epochs, pl_start, title, with_values=False):
    """One panel of curves.png: series [(name, values (N,) with NaN = missing)] against epochs (N,), a legend right
    of it, dashed lines (gid 'round') at round_epochs, a solid line (gid 'pl_start') at pl_start - 0.5 unless
    pl_start is None; with_values: write_values."""
    from matplotlib.ticker import MaxNLocator
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(True, color="#e4e4e4", linewidth=0.8)
    ax.set_axisbelow(True)
    for epoch in round_epochs:
        ax.axvline(epoch, color=ROUND_COLOUR, linestyle=(0, (4, 3)), linewidth=1, gid="round")
    if pl_start is not None:
        ax.axvline(pl_start - 0.5, color=PL_START_COLOUR, linewidth=2, gid="pl_start")
        # left of the line: the identity-only epochs have no round lines to write over
        ax.text(pl_start - 0.5, 0.97, "--pl_start ", transform=ax.get_xaxis_transform(), ha="right", va="top",
                fontsize=9, color=PL_START_COLOUR, bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    for i, (name, values) in enumerate(series):
        present = np.isfinite(values)  # joined across missing epochs: evaluations are every few epochs by design
        ax.plot(epochs[present], values[present], color=PALETTE[i % len(PALETTE)], linewidth=1.8, marker="o",
                markersize=4.5, label=name)
    if not any(np.isfinite(values).any() for _, values in series):
        names = ", ".join(name for name, _ in series) or "no loss column"
        ax.text(0.5, 0.5, f"no data ({names})", transform=ax.transAxes, ha="center", va="center", color=GREY,
                bbox=dict(facecolor="white", edgecolor="none"))  # over the vertical lines
        ax.set_yticks([])
        return
    finite = np.concatenate([values[np.isfinite(values)] for _, values in series])
    if np.all(finite == np.round(finite)):  # counts (the pool size): no ticks between whole numbers
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if finite.min() == finite.max():  # a flat count (no pool yet): a window with whole numbers in it
            ax.set_ylim(finite.min() - 1, finite.max() + 1)
    if with_values:
        ax.margins(y=0.2)  # room for the values written above and below the points
        write_values(ax, epochs, series, pl_start)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False, borderaxespad=0)


def curves_figure(history, pl_start=None, size=CURVES_SIZE, title="Training curves"):
    """The run's history (list of per-epoch dicts, as in the checkpoint or read_history) as stacked panels sharing
    the epoch axis: CURVE_PANELS. Missing columns or cells are skipped; a panel without any value says so.

    pl_start: the run's --pl_start, drawn at pl_start - 0.5 in every panel when the history reaches that epoch
    (and has an epoch before it); the rank-1/mAP panel writes its values at pl_start - 1, the end of the
    identity-only stage, and at its last evaluation.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    epochs = history_epochs(history)
    first, last = (float(epochs.min()), float(epochs.max())) if len(epochs) else (0.0, 1.0)
    if pl_start is not None and not first < pl_start <= last:
        pl_start = None  # the history does not cross the stage boundary: nothing between two epochs to mark
    figure = new_figure(size, layout="constrained")
    figure.suptitle(title, x=0.01, ha="left", fontsize=15)
    round_epochs, keys = pseudo_label_epochs(history), []
    if round_epochs:
        keys.append(Line2D([], [], color=ROUND_COLOUR, linestyle=(0, (4, 3)),
                           label="epoch followed by a pseudo-label round"))
    if pl_start is not None:
        keys.append(Line2D([], [], color=PL_START_COLOUR, linewidth=2,
                           label=f"--pl_start {pl_start}: identity-only epochs left of it, semi-supervised right"))
    if keys:
        figure.legend(handles=keys, loc="outside lower center", ncol=2, fontsize=10, frameon=False)
    axes = figure.subplots(len(CURVE_PANELS), 1, sharex=True)
    for ax, (panel_title, names, with_values) in zip(axes, CURVE_PANELS):
        names = loss_columns(history) if names is None else names
        draw_panel(ax, epochs, [(name, column_values(history, name)) for name in names], round_epochs, pl_start,
                   panel_title, with_values)
    axes[-1].set_xlim(first - 0.5, last + 0.5)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch", fontsize=10)
    return figure


# ---------------------------------------------------------------------------------------------- all pictures

def protocol_modalities(dataset):
    """(query modality, gallery modality, names of VISIBLE and INFRARED) of a TestSet's protocol."""
    if dataset == "regdb":
        return VISIBLE, INFRARED, ("visible", "thermal")
    return INFRARED, VISIBLE, ("visible", "infrared")


def ranked_gallery_rows(test_set):
    """The gallery the ranked lists search and its SYSU trial: (rows, 0) for SYSU gallery trial 0 (single-shot),
    (every row, None) for RegDB's thermal list."""
    if test_set.dataset == "regdb":
        return np.arange(len(test_set.gallery_pids)), None
    if 0 not in test_set.gallery_rows:
        raise ValueError("the SYSU TestSet must hold gallery trial 0 (build_test_set(..., trials=[0, ...]))")
    return np.asarray(test_set.gallery_rows[0]), 0


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


def ranked_record(test_set, query_rows, gallery_rows, ranking, similarity, is_match, gallery_trial):
    """ranked.json: the shown queries and their ranked gallery rows, in the test set's own row numbers."""
    queries = []
    for q, query_row in enumerate(query_rows):
        shown = ranking[q] >= 0
        queries.append({"query_row": int(query_row), "gallery_rows": gallery_rows[ranking[q][shown]].tolist(),
                        "is_match": is_match[q][shown].tolist(), "similarity": similarity[q][shown].tolist()})
    return {"dataset": test_set.dataset, "gallery_trial": gallery_trial,
            "regdb_trial": test_set.trial if test_set.dataset == "regdb" else None, "top_k": TOP_K, "queries": queries}


def write_pictures(model, test_set, history, out_dir, device="cpu", num_ids=20, num_queries=8, seed=0,
                   batch_size=64, run_label="", pl_start=None):
    """Write tsne.png + tsne.npz, ranked.png + ranked.json and (unless history is None) curves.png into out_dir;
    returns {name: path} of the pictures.

    model: the feature interface of evaluate.extract_features (eval mode is set and restored there).
    test_set: an evaluate.TestSet (SYSU: with gallery trial 0). history: the run's per-epoch dicts (the
    checkpoint's 'history' or read_history(metrics.csv)). num_ids identities for the t-SNE and num_queries
    queries for the ranked lists are drawn from np.random.default_rng([seed, 0]) and ([seed, 1]), so changing
    one does not change the other. run_label (e.g. the run name and epoch) goes into the titles. pl_start: the
    run's --pl_start, marked on the curves (None: not marked). Raises UserError if out_dir cannot be written.
    """
    check_writable(out_dir)  # before the features and the t-SNE, not after them
    query_modal, gallery_modal, modality_names = protocol_modalities(test_set.dataset)
    q_pids, g_pids = np.asarray(test_set.query_pids), np.asarray(test_set.gallery_pids)
    suffix = f" - {run_label}" if run_label else ""

    # the rows each picture needs, then one feature extraction per modality over their union
    shared_ids = np.intersect1d(q_pids, g_pids)
    tsne_rng, query_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    chosen_ids = np.sort(tsne_rng.choice(shared_ids, min(num_ids, len(shared_ids)), replace=False))
    tsne_q = sample_identity_rows(q_pids, chosen_ids, IMAGES_PER_ID, tsne_rng)
    tsne_g = sample_identity_rows(g_pids, chosen_ids, IMAGES_PER_ID, tsne_rng)
    ranked_g, gallery_trial = ranked_gallery_rows(test_set)
    allowed = camera_allowed(test_set.query_cams, subset(test_set.gallery_cams, ranked_g))
    ranked_q = sample_queries(q_pids, g_pids[ranked_g], allowed, num_queries, query_rng)
    q_rows, g_rows = np.union1d(tsne_q, ranked_q), np.union1d(tsne_g, ranked_g)
    q_feats = extract_features(model, test_set.query_img, query_modal, batch_size, device, indices=q_rows,
                               desc="query features").numpy()
    g_feats = extract_features(model, test_set.gallery_img, gallery_modal, batch_size, device, indices=g_rows,
                               desc="gallery features").numpy()

    points = tsne_embedding(np.concatenate([rows_of(q_feats, q_rows, tsne_q), rows_of(g_feats, g_rows, tsne_g)]), seed)
    tsne_data = {"points": np.asarray(points, dtype=np.float32),
                 "pid": np.concatenate([q_pids[tsne_q], g_pids[tsne_g]]),
                 "modality": np.concatenate([np.full(len(tsne_q), query_modal), np.full(len(tsne_g), gallery_modal)]),
                 "is_query": np.arange(len(points)) < len(tsne_q), "row": np.concatenate([tsne_q, tsne_g])}
    subtitle = (f"{len(chosen_ids)} test identities, {len(tsne_q)} query and {len(tsne_g)} gallery images "
                f"(at most {IMAGES_PER_ID} per identity and modality)")
    files = {"tsne.png": png_writer(tsne_figure(tsne_data["points"], tsne_data["pid"], tsne_data["modality"],
                                                title="t-SNE of test features" + suffix, subtitle=subtitle,
                                                modality_names=modality_names)),
             "tsne.npz": npz_writer(tsne_data)}

    ranking, similarity = rank_gallery(rows_of(q_feats, q_rows, ranked_q), rows_of(g_feats, g_rows, ranked_g),
                                       None if allowed is None else allowed[ranked_q], TOP_K)
    is_match = (ranking >= 0) & (g_pids[ranked_g][np.maximum(ranking, 0)] == q_pids[ranked_q][:, None])
    where = "gallery trial 0" if gallery_trial is not None else "visible -> thermal"
    files["ranked.png"] = png_writer(ranked_figure(
        test_set.query_img[ranked_q], test_set.gallery_img[ranked_g], ranking, is_match,
        image_captions(q_pids[ranked_q], subset(test_set.query_cams, ranked_q)),
        image_captions(g_pids[ranked_g], subset(test_set.gallery_cams, ranked_g)),
        title=f"Top-{ranking.shape[1]} gallery images ({where}){suffix}"))
    files["ranked.json"] = json_writer(ranked_record(test_set, ranked_q, ranked_g, ranking, similarity, is_match,
                                                     gallery_trial))
    if history is not None:
        files["curves.png"] = png_writer(curves_figure(history, pl_start, title="Training curves" + suffix))
    # all files or none: a picture and the data it shows never come from two different runs of this function
    atomic_write_all({os.path.join(out_dir, name): write for name, write in files.items()})
    return {name[:-len(".png")]: os.path.join(out_dir, name) for name in files if name.endswith(".png")}


# ---------------------------------------------------------------------------------------------- command line

def default_out_dir(run_args):
    """The run's own folder, beside its log.txt and metrics.csv."""
    return os.path.join(run_args.get("log_path", "log/"), run_args.get("run_name", "run"))


def get_args_parser():
    parser = ArgumentParser(description="Pictures of a CPL run: t-SNE of test features, ranked lists, "
                                        "training curves (PNG, with the data they show in tsne.npz and ranked.json).")
    parser.add_argument("--resume", default="", help="checkpoint of train_mine.py (save_model/<run>_best.pth)")
    parser.add_argument("--metrics", default="",
                        help="metrics.csv to draw curves.png from (instead of the checkpoint's history); "
                             "without --resume only curves.png is written")
    parser.add_argument("--pl_start", default=None, type=number(int, 0),
                        help="the run's --pl_start, marked on curves.png; default: the checkpoint's (with --resume), "
                             "else not marked")
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
        check_writable(out_dir)
        path = os.path.join(out_dir, "curves.png")
        atomic_write_all({path: png_writer(curves_figure(history, args.pl_start))})
        print(f"wrote {path}")
        return
    state = load_checkpoint(args.resume, required_keys=("model", "args"))
    run = state["args"]
    missing = [key for key in ("dataset", "data_path", "img_h", "img_w") if key not in run]
    if missing:
        raise UserError(f"checkpoint {args.resume}: its args lack {', '.join(missing)}")
    out_dir = args.out_dir or default_out_dir(run)
    check_writable(out_dir)  # before decoding the test set
    device = choose_device(args.gpu)
    model = embed_net_from_checkpoint(state, args.resume).to(device)
    test_set = build_test_set(protocol_of(run["dataset"]), args.data_path or run["data_path"], run["img_h"],
                              run["img_w"], mode=run.get("mode", "all"), trial=run.get("trial", 1), trials=[0],
                              workers=run.get("workers", 0))
    label = f"{run.get('run_name', os.path.basename(args.resume))}, epoch {state.get('epoch', '?')}"
    paths = write_pictures(model, test_set, history if history is not None else state.get("history"), out_dir, device,
                           args.num_ids, args.num_queries, args.seed, run.get("test_batch_size", 64), run_label=label,
                           pl_start=args.pl_start if args.pl_start is not None else run.get("pl_start"))
    for path in paths.values():
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
