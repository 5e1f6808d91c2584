"""summarize.py on hand-made results.json files: means, standard deviations, grouping by the flags that differ,
RegDB's 10-trial mean in both directions, an incomplete group marked."""
import json
import os
import subprocess
import sys

import pytest

from summarize import find_results, summary_table
from utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def figures(rank1, mAP, mINP=10.0):
    return {"rank1": rank1, "rank5": 0.0, "rank10": 0.0, "rank20": 0.0, "mAP": mAP, "mINP": mINP}


def write_run(root, name, dataset, args, last, best=None, pool=(0, None), mode="all", at_pl_start=None):
    folder = root / name
    folder.mkdir(parents=True)
    base = {"dataset": dataset, "mode": mode if dataset != "regdb" else "all", "seed": 0, "trial": 1, "run_name": name, "log_path": str(root),
            "no_pseudo": False, "w_dce": 2.0, "lr": 0.01}
    results = {"dataset": dataset, "mode": mode if dataset != "regdb" else f"trial{args.get('trial', 1)}",
               "args": {**base, **args}, "last": last, "best": best,
               "pseudo_label": {"pool_size": pool[0], "precision": pool[1], "share": pool[0] / 2},
               "phase": None if at_pl_start is None else {
                   "epoch": 5, "at_pl_start": at_pl_start,
                   "gain": {key: last[key] - at_pl_start[key] for key in ("rank1", "mAP", "mINP")}}}
    (folder / "results.json").write_text(json.dumps(results))


def rows_of(table):
    """{(dataset, mode, configuration): cells} of the markdown table."""
    lines = table.strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["dataset"], cells["mode"], cells["configuration"]] = cells
    return rows


def test_seeds_are_averaged_and_differing_flags_label_the_rows(tmp_path):
    # CPL over three seeds, the labeled-only baseline over two
    for seed, (r1, mAP) in enumerate([(50.0, 40.0), (54.0, 44.0), (58.0, 45.0)]):
        write_run(tmp_path, f"cpl{seed}", "demo", {"seed": seed}, figures(r1, mAP), figures(r1 + 1, mAP + 1),
                  pool=(100 + seed, 90.0 + seed), at_pl_start=figures(48.0 + 2 * seed, 41.0))
    for seed, (r1, mAP) in enumerate([(40.0, 30.0), (44.0, 34.0)]):
        write_run(tmp_path, f"base{seed}", "demo", {"seed": seed, "no_pseudo": True}, figures(r1, mAP))
    rows = rows_of(summary_table(find_results(str(tmp_path))))
    assert set(rows) == {("demo", "all", "no_pseudo=False"), ("demo", "all", "no_pseudo=True")}
    cpl = rows["demo", "all", "no_pseudo=False"]
    assert cpl["runs"] == "3 (3 seeds)"
    assert cpl["last rank1"] == "54.00 ± 4.00"  # mean 54, sample std of 50, 54, 58 = 4
    assert cpl["last mAP"] == "43.00 ± 2.65"  # sample std of 40, 44, 45: sqrt(7) = 2.6458
    assert cpl["best rank1"] == "55.00 ± 4.00"
    assert cpl["pool size"] == "101.00 ± 1.00" and cpl["pool precision"] == "91.00 ± 1.00"
    assert cpl["pool share"] == "50.50 ± 0.50"
    # phase gains: last - the end of the identity-only stage, per run: 2, 4, 6 (rank-1) and -1, 3, 4 (mAP)
    assert cpl["rank1 at pl_start"] == "50.00 ± 2.00"
    assert cpl["phase gain rank1"] == "+4.00 ± 2.00" and cpl["phase gain mAP"] == "+2.00 ± 2.65"
    base = rows["demo", "all", "no_pseudo=True"]
    assert base["last rank1"] == "42.00 ± 2.83" and base["best rank1"] == "-" and base["pool precision"] == "-"
    assert base["phase gain rank1"] == "-"  # runs without a phase record


def test_regdb_is_the_mean_over_trials_in_both_directions_and_incomplete_groups_are_marked(tmp_path):
    for trial in range(1, 11):  # a complete configuration
        last = dict(figures(70.0 + trial, 60.0), thermal_to_visible=figures(68.0, 58.0 + trial))
        write_run(tmp_path, f"full{trial}", "regdb", {"trial": trial}, last, mode=f"trial{trial}")
    for trial in range(1, 8):  # the same with --w_dce 0, 7 of 10 trials
        last = dict(figures(50.0, 40.0), thermal_to_visible=figures(48.0, 38.0))
        write_run(tmp_path, f"part{trial}", "regdb", {"trial": trial, "w_dce": 0.0}, last, mode=f"trial{trial}")
    rows = rows_of(summary_table(find_results(str(tmp_path))))
    full_v2i, full_i2v = rows["regdb", "V->I", "w_dce=2.0"], rows["regdb", "I->V", "w_dce=2.0"]
    assert full_v2i["runs"] == "10 (1 seeds)" and full_v2i["note"] == ""
    assert full_v2i["last rank1"].startswith("75.50 ± ")  # 71..80
    assert full_i2v["last rank1"] == "68.00 ± 0.00" and full_i2v["last mAP"].startswith("63.50 ± ")
    partial = rows["regdb", "V->I", "w_dce=0.0"]
    assert "incomplete" in partial["note"] and "7/10" in partial["note"]
    assert "incomplete" in rows["regdb", "I->V", "w_dce=0.0"]["note"]


def test_the_script_writes_summary_md_and_refuses_an_empty_folder(tmp_path):
    write_run(tmp_path, "one", "sysu", {}, figures(46.5, 42.6))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "summarize.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = (tmp_path / "summary.md").read_text()
    assert "| sysu | all | (all runs alike) | 1 (1 seeds) | 46.50 | 42.60 |" in written and "46.50" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "summarize.py"), str(empty)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no results.json") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", ["{not json", "", '{"dataset": "sysu"}', "[1, 2]", '"text"',
                                     '{"dataset": "sysu", "args": {}, "last": {"rank1": 1}}',
                                     '{"dataset": "regdb", "args": {}, "last": {"rank1": 1, "mAP": 1, "mINP": 1}}'])
def test_a_damaged_or_foreign_results_file_is_named_in_one_line(tmp_path, content):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text(content)
    with pytest.raises(UserError, match="bad/results.json") as err:
        find_results(str(tmp_path))
    assert "\n" not in str(err.value)


def test_the_script_names_a_foreign_results_file_in_one_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"dataset": "sysu"}')
    proc = subprocess.run([sys.executable, os.path.join(REPO, "summarize.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "bad/results.json is not a results.json of train_mine.py" in proc.stderr
