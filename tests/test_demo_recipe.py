"""The demo recipe's promise on seed 0, run as a user runs it (slow: two demo runs, about 6 minutes on 2 cores;
not part of the default `pytest` run):

    python -m pytest -m slow tests/test_demo_recipe.py

The pseudo-label pool must hold at least 40% of the unlabeled images at 90% precision or more, and CPL must beat
the labeled-only baseline (--no_pseudo, same seed and data) on last-epoch rank-1 and mAP.
"""
import json

import pytest

from train_helpers import output_paths, results_of, run_train


@pytest.mark.slow
def test_the_demo_engages_pseudo_labels_and_beats_labeled_only(tmp_path):
    common = ["--dataset", "demo", "--gpu", "cpu", "--seed", "0", "--data_path", str(tmp_path / "demo"),
              *output_paths(tmp_path), "--no_pictures"]
    run_train([*common, "--run_name", "cpl"], cwd=tmp_path)
    run_train([*common, "--run_name", "labeled_only", "--no_pseudo"], cwd=tmp_path)
    cpl, labeled_only = (results_of(tmp_path, name) for name in ("cpl", "labeled_only"))
    split = json.loads((tmp_path / "log" / "cpl" / "split.json").read_text())
    num_unlabeled = len(split["rgb_unlabeled"]) + len(split["ir_unlabeled"])
    assert cpl["pseudo_label"]["pool_size"] >= 0.4 * num_unlabeled
    assert cpl["pseudo_label"]["precision"] >= 90
    assert cpl["last"]["rank1"] > labeled_only["last"]["rank1"]
    assert cpl["last"]["mAP"] > labeled_only["last"]["mAP"]
