"""Synthetic datasets in the real on-disk layouts, for the demo and the tests: SYSU-MM01 (cam1..cam6/<id>/<n>.jpg,
exp/*_id.txt) and RegDB (Visible/, Thermal/, idx/*.txt), from one of three renderers of people:

- stripes (the demo's default): flat bodies of head, torso, legs and an optional bag, each part plain or striped
  in two grey levels; visible adds a hue to each level, infrared shows the grey level (brighter on a darker
  background). What the demo recipe was tuned on.
- temperature: rounded bodies (ellipses, optional hat and shoes) textured with checks or dots, an occluding bar,
  another scale and shift; the infrared view shows a per-part temperature that is NOT the visible luminance (a cold
  jacket can be bright red), so the cross-modality relation must be learned, not read off the grey level.
- luminance: the same rounded people, with the infrared view showing the visible grey level, to tell that
  difficulty apart from the rest.

An identity's images depend only on (renderer, seed, identity). train_mine.py --dataset demo --demo_renderer NAME
builds data/demo/<NAME>/seed<S>/ once (prepare_demo_dataset); data_manager.py, the protocols, does not import this.
"""
import glob
import json
import os
import shutil

import numpy as np
from PIL import Image

SYSU_RGB_CAMS, SYSU_IR_CAMS = (1, 2, 4, 5), (3, 6)  # as data_manager, which this module must not import
REGDB_MODALS = ("visible", "thermal")

# ---------------------------------------------------------------------------------------------- stripes

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601: the grey level of a colour, what infrared keeps
PLAIN, HORIZONTAL, VERTICAL = 0, 1, 2  # stripe patterns
HEAD, TORSO, LEGS, BAG = 0, 1, 2, 3  # body parts


def colour_with_luminance(lum, raw_colour):
    """Colours (..., 3) in [0, 1] with luminance lum (...) and the hue of raw_colour (..., 3), as saturated
    as fits in [0, 1]: the visible rendering adds colour without moving the grey level infrared sees."""
    chroma = raw_colour - (raw_colour @ LUMA)[..., None]  # zero luminance, since LUMA sums to 1
    lum = lum[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(chroma > 0, (1 - lum) / chroma, np.where(chroma < 0, -lum / chroma, np.inf))
    return lum + np.minimum(1.0, room.min(axis=-1, keepdims=True)) * chroma


def make_identity(rng):
    """Appearance of one synthetic identity (lengths in units of the body height).

    Cues both modalities share: body proportions, a bag or none, and per part two grey levels in a stripe
    pattern (plain, horizontal or vertical; its period). Visible only: the hue of each level.
    """
    lum_a = rng.uniform(0.05, 0.95, 4)
    lum_b = (lum_a + rng.uniform(0.3, 0.7, 4)) % 1.0  # >= 0.3 apart, so stripes stay visible in grey
    stripes = rng.integers(PLAIN, VERTICAL + 1, 4)
    stripes[BAG] = PLAIN
    lum = np.stack([lum_a, np.where(stripes == PLAIN, lum_a, lum_b)], axis=1)  # (part, level)
    return {"half_width": np.array([rng.uniform(0.035, 0.065), rng.uniform(0.08, 0.17), rng.uniform(0.06, 0.13)]),
            "head_end": rng.uniform(0.11, 0.17), "waist": rng.uniform(0.42, 0.6), "leg_gap": rng.uniform(0.0, 0.03),
            "has_bag": rng.random() < 0.5, "bag_side": rng.choice([-1.0, 1.0]), "bag_width": rng.uniform(0.05, 0.08), "bag_top": rng.uniform(0.22, 0.35),
            "bag_height": rng.uniform(0.12, 0.22), "stripes": stripes, "period": rng.uniform(0.06, 0.16, 4),
            "lum": lum, "colour": colour_with_luminance(lum, rng.uniform(0, 1, (4, 2, 3)))}


def body_part_map(identity, v, u, bag_side):
    """Body part of each pixel, -1 for background: (n, H, W) int64 from body coordinates v (n, H, 1)
    (down from the top of the head) and u (n, 1, W) (right of the centre line); bag_side (n, 1, 1) is +-1."""
    part = np.full(np.broadcast_shapes(v.shape, u.shape), -1, dtype=np.int64)
    bounds = ((0.0, identity["head_end"]), (identity["head_end"], identity["waist"]), (identity["waist"], 1.0))
    for index, ((start, end), half_width) in enumerate(zip(bounds, identity["half_width"])):
        inside = (v >= start) & (v < end) & (np.abs(u) < half_width)
        if index == LEGS:
            inside &= np.abs(u) >= identity["leg_gap"]
        part[inside] = index
    if identity["has_bag"]:
        beside = bag_side * u - identity["half_width"][TORSO]  # distance out from the torso's edge
        top = identity["bag_top"]
        part[(v >= top) & (v < top + identity["bag_height"]) & (beside >= 0) & (beside < identity["bag_width"])] = BAG
    return part


def render_people(rng, identity, num_images, raw_h, raw_w, infrared):
    """num_images views of one identity -> (num_images, raw_h, raw_w, 3) uint8.

    Per view: scale, shift, the side the bag hangs on, illumination gain, background (level, gradient, one
    clutter bar) and pixel noise. Infrared: the person's grey level is 0.25 + 0.7 x its visible luminance (a
    warm body looks bright) on a darker background; no colour.
    """
    n = num_images
    height = 0.9 * raw_h * rng.uniform(0.85, 1.05, (n, 1, 1))
    top = raw_h * rng.uniform(0.02, 0.08, (n, 1, 1))
    centre = raw_w * (0.5 + rng.uniform(-0.08, 0.08, (n, 1, 1)))
    v = (np.arange(raw_h)[None, :, None] - top) / height  # (n, H, 1)
    u = (np.arange(raw_w)[None, None, :] - centre) / height  # (n, 1, W)
    part = body_part_map(identity, v, u, identity["bag_side"])
    safe_part = np.maximum(part, 0)
    pattern = identity["stripes"][safe_part]
    across = np.where(pattern == VERTICAL, u, v)  # the coordinate the stripes alternate along
    level = (np.floor(across / identity["period"][safe_part]) % 2).astype(np.int64) * (pattern != PLAIN)
    channels = 1 if infrared else 3
    if infrared:
        person = (0.25 + 0.7 * identity["lum"][safe_part, level])[..., None]  # (n, H, W, 1)
        background = rng.uniform(0.0, 0.3, (n, 1, 1, 1))
    else:
        person = identity["colour"][safe_part, level]  # (n, H, W, 3)
        background = rng.uniform(0.15, 0.85, (n, 1, 1, 1)) + rng.uniform(-0.1, 0.1, (n, 1, 1, 3))
    columns = np.arange(raw_w)[None, None, :, None]
    background = background + rng.uniform(-0.15, 0.15, (n, 1, 1, 1)) * (columns / raw_w - 0.5)
    image = np.where(part[..., None] >= 0, person * rng.uniform(0.8, 1.15, (n, 1, 1, 1)), background)
    image = image + rng.normal(0, 0.03, (n, raw_h, raw_w, channels))
    image = np.broadcast_to(image, (n, raw_h, raw_w, 3))  # infrared: the grey level in all three channels
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- rounded people

def make_person(rng):
    """An identity: ellipse sizes, accessories, per part (hat, head, torso, legs, shoes) a colour, a texture
    (plain, checks, dots) with its scale, and a temperature for the infrared rendering."""
    return {"torso": rng.uniform([0.10, 0.16], [0.17, 0.24]), "legs": rng.uniform([0.05, 0.24], [0.09, 0.32]),
            "head": rng.uniform(0.045, 0.07), "hat": rng.random() < 0.4, "shoes": rng.random() < 0.5,
            "colour": rng.uniform(0, 1, (5, 3)), "second": rng.uniform(0, 1, (5, 3)),
            "texture": rng.integers(0, 3, 5), "scale": rng.uniform(0.04, 0.1, 5), "temperature": rng.uniform(0.2, 1, 5)}


def render_rounded(rng, person, count, raw_h, raw_w, infrared, infrared_shows="temperature"):
    """count views -> (count, raw_h, raw_w, 3) uint8. The infrared view shows each part's temperature, or with
    infrared_shows="luminance" the grey level of its visible colours (the easier relation the stripes use)."""
    images = np.empty((count, raw_h, raw_w, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:raw_h, 0:raw_w] / raw_h  # body units: the image height is 1
    for k in range(count):
        height = rng.uniform(0.85, 1.0)
        cy, cx = rng.uniform(0.0, 0.06), raw_w / raw_h / 2 + rng.uniform(-0.05, 0.05)
        v, u = (rows - cy) / height, (cols - cx) / height  # v: 0 at the top of the head, 1 at the feet
        head_c = 0.03 + person["head"]
        torso_c, (torso_w, torso_h) = head_c + person["head"] + person["torso"][1], person["torso"]
        legs_w, legs_h = person["legs"]
        legs_c = torso_c + torso_h + legs_h
        part = np.full(v.shape, -1)
        part[((v - legs_c) / legs_h) ** 2 + ((np.abs(u) - legs_w) / legs_w) ** 2 < 1] = 3
        part[((v - torso_c) / torso_h) ** 2 + (u / torso_w) ** 2 < 1] = 2
        part[((v - head_c) ** 2 + u ** 2) < person["head"] ** 2] = 1
        if person["hat"]:
            part[(v > head_c - 1.6 * person["head"]) & (v < head_c - 0.5 * person["head"]) &
                 (np.abs(u) < 1.3 * person["head"])] = 0
        if person["shoes"]:
            part[(v > legs_c + 0.8 * legs_h) & (v < legs_c + 1.1 * legs_h) & (np.abs(u) < 2.2 * legs_w)] = 4
        safe = np.maximum(part, 0)
        scale = person["scale"][safe]
        checks = (np.floor(v / scale) + np.floor(u / scale)) % 2
        dots = ((v / scale) % 1 - 0.5) ** 2 + ((u / scale) % 1 - 0.5) ** 2 < 0.08
        texture = person["texture"][safe]
        use_second = np.where(texture == 1, checks, np.where(texture == 2, dots, 0)).astype(bool)
        visible_px = np.where(use_second[..., None], person["second"][safe], person["colour"][safe])
        if infrared:
            level = (visible_px @ LUMA if infrared_shows == "luminance" else
                     person["temperature"][safe] * np.where(use_second, 0.8, 1.0))
            person_px = np.repeat(level[..., None], 3, axis=2)
            background = rng.uniform(0.0, 0.25) + np.zeros((raw_h, raw_w, 3))
        else:
            person_px = visible_px
            background = rng.uniform(0.2, 0.9, 3) * np.ones((raw_h, raw_w, 3))
        image = np.where(part[..., None] >= 0, person_px * rng.uniform(0.8, 1.15), background)
        bar = rng.integers(0, raw_h - 12)  # an occluding bar across the image at a random height
        image[bar:bar + rng.integers(4, 12)] = rng.uniform(0, 1) if infrared else rng.uniform(0, 1, 3)
        image = image + rng.normal(0, 0.03, image.shape)
        images[k] = np.round(np.clip(image, 0, 1) * 255)
    return images


# ---------------------------------------------------------------------------------------------- renderers

def stripes_views(seed, pid):
    """(draw(count, raw_h, raw_w, infrared) -> images) of identity pid under the stripes renderer."""
    rng = np.random.default_rng([seed, pid])
    identity = make_identity(rng)
    return lambda count, raw_h, raw_w, infrared: render_people(rng, identity, count, raw_h, raw_w, infrared)


def rounded_views(infrared_shows):
    def views(seed, pid):
        rng = np.random.default_rng([seed, 7, pid])
        person = make_person(rng)
        return lambda count, raw_h, raw_w, infrared: render_rounded(rng, person, count, raw_h, raw_w, infrared,
                                                                     infrared_shows)
    return views


# name -> views(seed, pid): one identity's image generator, drawing views one camera after another
RENDERERS = {"stripes": stripes_views, "temperature": rounded_views("temperature"),
             "luminance": rounded_views("luminance")}
# each renderer's dataset sizes for the demo (the rounded people: more identities, as they are harder to tell apart)
DEMO_SIZES = {"stripes": dict(num_train_ids=40, num_test_ids=20, imgs_per_cam=6),
              "temperature": dict(num_train_ids=50, num_test_ids=25, imgs_per_cam=7),
              "luminance": dict(num_train_ids=50, num_test_ids=25, imgs_per_cam=7)}


def renderer_views(renderer):
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}: use one of {', '.join(RENDERERS)}")
    return RENDERERS[renderer]


# ---------------------------------------------------------------------------------------------- datasets

def save_images(images, folder, names):
    os.makedirs(folder, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image).save(os.path.join(folder, name), **({"quality": 95} if name.endswith(".jpg") else {}))


def make_demo_dataset(root, num_train_ids=40, num_test_ids=20, imgs_per_cam=6, num_val_ids=None, raw_h=128,
                      raw_w=64, seed=0, renderer="stripes"):
    """A synthetic dataset in the SYSU-MM01 layout: cam1..cam6/<id:04d>/<n:04d>.jpg and exp/*_id.txt.

    Identities 1..num_train_ids are the training ids (train_id.txt, with the last num_val_ids of them in
    val_id.txt; default a fifth), the next num_test_ids the test ids. Every identity has imgs_per_cam images
    in each camera (visible 1,2,4,5; infrared 3,6), drawn by `renderer`. An identity's images depend only on
    (renderer, seed, id). Returns root.
    """
    num_val_ids = num_train_ids // 5 if num_val_ids is None else num_val_ids
    if not 0 <= num_val_ids < num_train_ids:
        raise ValueError(f"num_val_ids={num_val_ids} must be in [0, num_train_ids={num_train_ids})")
    ids = list(range(1, num_train_ids + num_test_ids + 1))
    names = [f"{n:04d}.jpg" for n in range(1, imgs_per_cam + 1)]
    views = renderer_views(renderer)
    for pid in ids:
        draw = views(seed, pid)
        for cam in SYSU_RGB_CAMS + SYSU_IR_CAMS:
            images = draw(imgs_per_cam, raw_h, raw_w, infrared=cam in SYSU_IR_CAMS)
            save_images(images, os.path.join(root, f"cam{cam}", f"{pid:04d}"), names)
    num_train_only = num_train_ids - num_val_ids
    subsets = {"train": ids[:num_train_only], "val": ids[num_train_only:num_train_ids], "test": ids[num_train_ids:]}
    os.makedirs(os.path.join(root, "exp"), exist_ok=True)
    for name, subset in subsets.items():
        with open(os.path.join(root, "exp", f"{name}_id.txt"), "w") as f:
            f.write(",".join(str(pid) for pid in subset))
    return root


DEMO_MARKER = "demo.json"  # written into a root the demo built: which generator, seed and sizes


def prepare_demo_dataset(root, seed, renderer="stripes", **sizes):
    """Make sure root holds the demo dataset of this renderer, seed and sizes (make_demo_dataset); True if it was
    built now.

    A root the demo built carries demo.json and is rebuilt when its renderer, seed or sizes differ; a root without
    it is somebody's SYSU-layout data and is never touched here (--dataset demo --data_path ROOT runs the demo
    recipe on it). A build goes to a temporary folder that is renamed into place, so a killed build never leaves a half
    dataset; the leftovers of killed builds are removed by the next one.
    """
    root = os.path.normpath(root)
    spec = {"generator": "demo_data", "renderer": renderer, "seed": seed, **sizes}
    if os.path.isdir(root) and (demo_spec(root) == spec or not os.path.isfile(os.path.join(root, DEMO_MARKER))):
        return False
    for leftover in glob.glob(f"{glob.escape(root)}.tmp-*") + glob.glob(f"{glob.escape(root)}.old-*"):
        if not process_alive(leftover.rsplit("-", 1)[-1]):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_demo_dataset(tmp, seed=seed, renderer=renderer, **sizes)
    with open(os.path.join(tmp, DEMO_MARKER), "w") as f:
        json.dump(spec, f)
    old = f"{root}.old-{os.getpid()}"
    if os.path.isdir(root):
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:  # another process put the same dataset in place first
        shutil.rmtree(tmp, ignore_errors=True)
        if demo_spec(root) != spec:
            raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def demo_spec(root):
    """The contents of root/demo.json, or None."""
    try:
        with open(os.path.join(root, DEMO_MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def process_alive(pid_text):
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def make_demo_regdb(root, num_ids=12, imgs_per_id=10, raw_h=128, raw_w=64, seed=0, trials=10, renderer="stripes"):
    """A synthetic dataset in the RegDB layout: Visible/<id>/v_<n>.bmp, Thermal/<id>/t_<n>.bmp (id 1..num_ids)
    and idx/{train,test}_{visible,thermal}_{1..trials}.txt with lines 'Visible/<id>/v_<n>.bmp <id - 1>'.
    Trial t puts a random half of the ids (np.random.default_rng([seed, t])) in training, the rest in test.
    The labels are the identity numbers, so a training list's labels are not 0..C-1. Returns root."""
    files, views = {}, renderer_views(renderer)
    for pid in range(1, num_ids + 1):
        draw = views(seed, pid)
        for modal, folder in (("visible", "Visible"), ("thermal", "Thermal")):
            names = [f"{modal[0]}_{n:02d}.bmp" for n in range(1, imgs_per_id + 1)]
            save_images(draw(imgs_per_id, raw_h, raw_w, infrared=modal == "thermal"),
                        os.path.join(root, folder, str(pid)), names)
            files[modal, pid] = [f"{folder}/{pid}/{name}" for name in names]
    os.makedirs(os.path.join(root, "idx"), exist_ok=True)
    for trial in range(1, trials + 1):
        order = np.random.default_rng([seed, trial]).permutation(np.arange(1, num_ids + 1))
        for split, pids in (("train", sorted(order[:num_ids // 2])), ("test", sorted(order[num_ids // 2:]))):
            for modal in REGDB_MODALS:
                with open(os.path.join(root, "idx", f"{split}_{modal}_{trial}.txt"), "w") as f:
                    f.writelines(f"{name} {pid - 1}\n" for pid in pids for name in files[modal, pid])
    return root
