"""What the README claims of the demo, on every seed it reports (slow: six demo runs, about 20 minutes on 2 cores;
not part of the default `pytest` run):

    python -m pytest -m slow tests/test_demo_recipe.py

On seeds 0, 1 and 2: the pseudo-label pool holds at least 40% of the unlabeled images at 90% precision or more
(README, "What the demo shows": 64-69% at 95-98%), and CPL and --no_pseudo share their identity-only stage to the digit
(same data, split, batches and weights until --pl_start), so their phase gains measure the semi-supervised phase alone.
The README's comparison of CPL with --no_pseudo (CPL ahead on the 3-seed mean, one seed behind in rank-1, the gain
smaller than the seed spread) is a measurement of benchmarks/phase_study.py at one thread per run on one machine, and
the README calls it a direction, not a guarantee; a pass/fail test of a direction that small would fail on some
machine or thread count for no fault of the code, so this does not assert it.
"""
import json

import pytest

from train_helpers import output_paths, results_of, run_train


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_demo_engages_pseudo_labels_and_shares_the_identity_only_stage(tmp_path, seed):
    common = ["--dataset", "demo", "--gpu", "cpu", "--seed", str(seed), "--data_path", str(tmp_path / "demo"),
              *output_paths(tmp_path), "--no_pictures"]
    run_train([*common, "--run_name", "cpl"], cwd=tmp_path)
    run_train([*common, "--run_name", "labeled_only", "--no_pseudo"], cwd=tmp_path)
    cpl, labeled_only = (results_of(tmp_path, name) for name in ("cpl", "labeled_only"))
    split = json.loads((tmp_path / "log" / "cpl" / "split.json").read_text())
    num_unlabeled = len(split["rgb_unlabeled"]) + len(split["ir_unlabeled"])
    assert cpl["pseudo_label"]["pool_size"] >= 0.4 * num_unlabeled
    assert cpl["pseudo_label"]["precision"] >= 90
    assert cpl["phase"]["epoch"] == labeled_only["phase"]["epoch"] == 7
    assert cpl["phase"]["at_pl_start"] == labeled_only["phase"]["at_pl_start"]
    for results in (cpl, labeled_only):
        assert results["phase"]["gain"]["rank1"] == pytest.approx(
            results["last"]["rank1"] - results["phase"]["at_pl_start"]["rank1"])
