"""Checks the demo recipe on data it was not tuned on: a second synthetic dataset in the SYSU-MM01 layout from a
different renderer, trained with the demo's defaults as CPL and as --no_pseudo (same seed, same data).

    python benchmarks/check_demo_recipe.py [--root data/demo_other] [--seeds 0 1] [--gpu cpu] [--infrared luminance]

The renderer differs from data_manager.make_demo_dataset in every cue: people are rounded (head, torso and legs
as ellipses, optional hat and shoes), textures are checks or dots instead of stripes, and the infrared rendering
shows a per-part "temperature" that is NOT the visible luminance (a cold jacket can be bright red), so the
cross-modality relation must be learned rather than read off the grey level (`--infrared luminance` renders the
infrared view as the visible grey level instead, to tell that difficulty apart from the rest). Nuisances: scale,
shift, a random occluding bar, illumination, blur-free noise, and another number of identities and images per
camera. It then
runs `train_mine.py --dataset demo --data_path ROOT` (the demo recipe, on a root the demo did not build, which
the recipe uses as it is) and prints last-epoch rank-1/mAP and the pseudo-label pool share and precision.
"""
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_manager import SYSU_IR_CAMS, SYSU_RGB_CAMS, save_images  # noqa: E402
from utils import ArgumentParser, number, run_cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST, PER_CAM, RAW_H, RAW_W = 50, 25, 7, 128, 64


def make_person(rng):
    """An identity: ellipse sizes, accessories, per part (hat, head, torso, legs, shoes) a colour, a texture
    (plain, checks, dots) with its scale, and a temperature for the infrared rendering."""
    return {"torso": rng.uniform([0.10, 0.16], [0.17, 0.24]), "legs": rng.uniform([0.05, 0.24], [0.09, 0.32]),
            "head": rng.uniform(0.045, 0.07), "hat": rng.random() < 0.4, "shoes": rng.random() < 0.5,
            "colour": rng.uniform(0, 1, (5, 3)), "second": rng.uniform(0, 1, (5, 3)),
            "texture": rng.integers(0, 3, 5), "scale": rng.uniform(0.04, 0.1, 5), "temperature": rng.uniform(0.2, 1, 5)}


def render(rng, person, count, infrared, infrared_shows="temperature"):
    """count views -> (count, RAW_H, RAW_W, 3) uint8. The infrared view shows each part's temperature, or with
    infrared_shows="luminance" the grey level of its visible colours (the easier relation the demo uses)."""
    images = np.empty((count, RAW_H, RAW_W, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:RAW_H, 0:RAW_W] / RAW_H  # body units: the image height is 1
    for k in range(count):
        height = rng.uniform(0.85, 1.0)
        cy, cx = rng.uniform(0.0, 0.06), RAW_W / RAW_H / 2 + rng.uniform(-0.05, 0.05)
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
            level = (visible_px @ np.array([0.299, 0.587, 0.114]) if infrared_shows == "luminance" else
                     person["temperature"][safe] * np.where(use_second, 0.8, 1.0))
            person_px = np.repeat(level[..., None], 3, axis=2)
            background = rng.uniform(0.0, 0.25) + np.zeros((RAW_H, RAW_W, 3))
        else:
            person_px = visible_px
            background = rng.uniform(0.2, 0.9, 3) * np.ones((RAW_H, RAW_W, 3))
        image = np.where(part[..., None] >= 0, person_px * rng.uniform(0.8, 1.15), background)
        bar = rng.integers(0, RAW_H - 12)  # an occluding bar across the image at a random height
        image[bar:bar + rng.integers(4, 12)] = rng.uniform(0, 1) if infrared else rng.uniform(0, 1, 3)
        image = image + rng.normal(0, 0.03, image.shape)
        images[k] = np.round(np.clip(image, 0, 1) * 255)
    return images


def build(root, seed, infrared_shows):
    """The second dataset in the SYSU-MM01 layout (cam1..cam6/<id>/<n>.jpg, exp/*_id.txt)."""
    ids = list(range(1, NUM_TRAIN + NUM_TEST + 1))
    names = [f"{n:04d}.jpg" for n in range(1, PER_CAM + 1)]
    for pid in ids:
        rng = np.random.default_rng([seed, 7, pid])
        person = make_person(rng)
        for cam in SYSU_RGB_CAMS + SYSU_IR_CAMS:
            save_images(render(rng, person, PER_CAM, cam in SYSU_IR_CAMS, infrared_shows), os.path.join(root, f"cam{cam}", f"{pid:04d}"),
                        names)
    os.makedirs(os.path.join(root, "exp"), exist_ok=True)
    subsets = {"train": ids[:NUM_TRAIN - 10], "val": ids[NUM_TRAIN - 10:NUM_TRAIN], "test": ids[NUM_TRAIN:]}
    for name, subset in subsets.items():
        with open(os.path.join(root, "exp", f"{name}_id.txt"), "w") as f:
            f.write(",".join(map(str, subset)))


def train(root, seed, gpu, out, extra):
    """One run's results.json, trained unless an earlier check into the same --out finished it (runs are never
    overwritten); its checkpoints go under --out too, so checks into different folders do not collide."""
    name = f"check_seed{seed}" + ("_nopseudo" if extra else "")
    results = os.path.join(out, name, "results.json")
    if not os.path.exists(results):
        subprocess.run([sys.executable, os.path.join(REPO, "train_mine.py"), "--dataset", "demo", "--data_path", root,
                        "--seed", str(seed), "--gpu", gpu, "--log_path", out, "--model_path",
                        os.path.join(out, "save_model"), "--run_name", name, "--no_pictures", *extra], check=True)
    with open(results) as f:
        return json.load(f)


def main(args):
    if not os.path.isdir(args.root):
        build(args.root, seed=0, infrared_shows=args.infrared)
    rows = []
    for seed in args.seeds:
        cpl, base = (train(args.root, seed, args.gpu, args.out, extra) for extra in ([], ["--no_pseudo"]))
        with open(os.path.join(args.out, f"check_seed{seed}", "split.json")) as f:
            split = json.load(f)
        num_unlabeled = len(split["rgb_unlabeled"]) + len(split["ir_unlabeled"])
        pool = cpl["pseudo_label"]
        rows.append((seed, cpl["last"], base["last"], pool["pool_size"] / num_unlabeled * 100, pool["precision"]))
    print(f"second renderer, infrared shows {args.infrared} ({NUM_TRAIN} training ids, {NUM_TEST} test ids, {PER_CAM} images per camera):")
    for seed, cpl, base, share, precision in rows:
        print(f"  seed {seed}: CPL rank-1 {cpl['rank1']:.2f} mAP {cpl['mAP']:.2f} | --no_pseudo rank-1 "
              f"{base['rank1']:.2f} mAP {base['mAP']:.2f} | pool {share:.1f}% of the unlabeled images at "
              f"{precision or 0:.1f}% precision")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/demo_other/", help="where the second dataset is built (once)")
    parser.add_argument("--out", default="log/check_demo_recipe/", help="log folder of the runs")
    parser.add_argument("--seeds", default=[0], type=number(int, 0), nargs="+")
    parser.add_argument("--gpu", default="cpu")
    parser.add_argument("--infrared", default="temperature", choices=["temperature", "luminance"],
                        help="what the infrared cameras show of a part: a temperature unrelated to its visible colour "
                             "(the default), or its visible grey level; used when --root is built")
    run_cli(lambda: main(parser.parse_args()))
