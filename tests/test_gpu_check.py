"""benchmarks/gpu_check.py on the CPU: `--gpu cpu --quick` runs every step at toy sizes and reports each in
report.json and in the Markdown it prints; a failing step is reported as failed while the others still run; bad input
is one line."""
import json
import os
import subprocess
import sys

import pytest
import torch

from train_helpers import REPO, assert_one_line_error
from utils import UserError

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")


def run_check(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_check(tmp_path_factory):
    """The --quick check on the CPU, run once: (its process, report.json, report.md)."""
    out = tmp_path_factory.mktemp("gpu_check") / "report"
    proc = run_check("--gpu", "cpu", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_every_step_runs_and_is_printed(quick_check):
    proc, report, markdown = quick_check
    assert list(report["steps"]) == list(gpu_check.STEPS)
    for name, step in report["steps"].items():
        assert step["status"] == "ok", (name, step.get("error"))
        assert step["seconds"] > 0
        assert gpu_check.TITLES[name] in markdown and gpu_check.TITLES[name] in proc.stdout
    assert "FAILED" not in markdown
    assert report["record"]["quick"] is True and report["record"]["torch"] == torch.__version__


def test_correctness_compares_equal_runs_exactly(quick_check):
    correctness = quick_check[1]["steps"]["correctness"]
    # on the CPU the "device" run and the CPU reference are the same run (seed, threads): equal to the last digit
    assert correctness["fp32_minus_cpu"] == {"rank1": 0, "mAP": 0, "mINP": 0}
    assert correctness["bf16_minus_fp32"] is None  # train_mine.py's autocast is CUDA-only: no bf16 run on the CPU
    for run in correctness["runs"].values():
        assert all(isinstance(run[key], float) for key in ("rank1", "mAP", "mINP", "pool_precision"))
        # the quick configuration's one round accepts every image it scores, then forgets the oldest 10%; the default
        # round scores the released number of uniform draws (~63% of the larger modality's images, more of the
        # smaller's), so the pool holds less than the 90% that scoring every image would leave
        assert 50 < run["pool_share"] < 89


def test_throughput_rows_are_consistent(quick_check):
    throughput = quick_check[1]["steps"]["throughput"]
    for batch in ("warmup", "semi"):
        assert set(throughput[batch]) == set(gpu_check.QUICK["precisions"]) | {"field"}
        assert throughput[batch]["field"]["vs_field"] == 1
        for row in throughput[batch].values():
            assert row["images_per_s"] * row["seconds_per_step"] == pytest.approx(64)  # 2 x 8 x 4; 2 x (16 + 16)
            assert row["peak_memory_gib"] is None  # CUDA only


def test_round_evaluation_and_distributed_figures(quick_check):
    steps = quick_check[1]["steps"]
    round_ = steps["pseudo_label"]
    assert round_["sysu_round_s"] == pytest.approx(
        27000 / round_["extract_images_per_s"] + round_["rule_s"] * 27000 / gpu_check.QUICK["rule_rows"])
    single_shot = steps["evaluation"]["single_shot"]
    assert (single_shot["queries"], single_shot["gallery"], single_shot["rerank_queries"]) == (3803, 96 * 4, 300)
    runs = steps["distributed"]["runs"]
    assert [runs[n]["world_size"] for n in ("1", "2")] == [1, 2]
    # the 2-process checkpoint reproduces its figures in one process (measured: exactly, at these sizes)
    assert runs["2"]["test_only_max_diff"] <= 0.01
    assert runs["2"]["efficiency"] == pytest.approx(runs["2"]["images_per_s"] / (2 * runs["1"]["images_per_s"]))


def test_estimate_counts_the_papers_steps(quick_check):
    estimate = quick_check[1]["steps"]["estimate"]
    # SYSU at 20% labeled: 4,451 visible images -> 4451 // 32 + 1 = 140 warm-up steps (epochs 0-5); semi-supervised
    # 4451 // 16 + 1 = 279 with an empty pool, min(22258 // 16 + 1, 17807 // 16 + 1) = 1113 with every image in it
    assert estimate["steps"]["lower"] == {"warmup": 6 * 140, "semi": 55 * 279, "first_epoch": 140, "last_epoch": 279}
    assert estimate["steps"]["upper"]["semi"] == 279 + 54 * 1113  # epoch 6 trains before the first round
    assert (estimate["rounds"], estimate["periodic_evaluations"], estimate["full_evaluations"]) == (24, 26, 3)
    for hours in estimate["hours"].values():
        assert hours["lower"] < hours["middle"] < hours["upper"]


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken_step(check):
        raise RuntimeError("boom\nthe rest of a long message")
    monkeypatch.setitem(gpu_check.STEPS, "pseudo_label", broken_step)
    threads = torch.get_num_threads()  # --quick sets this process's threads
    try:
        with pytest.raises(UserError, match=r"2 of 3 steps failed \(pseudo_label, estimate\)"):
            gpu_check.main(["--gpu", "cpu", "--quick", "--steps", "pseudo_label,evaluation,estimate",
                            "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    steps = json.loads((tmp_path / "report.json").read_text())["steps"]
    assert steps["pseudo_label"]["status"] == "failed" and steps["pseudo_label"]["error"] == "RuntimeError: boom"
    assert steps["evaluation"]["status"] == "ok" and steps["evaluation"]["single_shot"]["metrics_s"] > 0
    assert steps["estimate"]["error"] == ("RuntimeError: needs the figures of step(s) throughput, pseudo_label (failed "
                                          "or not run)")  # throughput was not asked for
    markdown = (tmp_path / "report.md").read_text()
    assert "**FAILED**: RuntimeError: boom" in markdown and "the rest of a long message" not in markdown


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "throughput,bogus"], "unknown --steps or --precisions ['bogus']"),
    (["--precisions", "fp64"], "unknown --steps or --precisions ['fp64']"),
])
def test_bad_input_is_one_line(tmp_path, args, fragment):
    assert_one_line_error(run_check("--gpu", "cpu", "--quick", "--out", str(tmp_path), *args), fragment)


def test_refuses_a_gpu_it_does_not_have_and_a_used_folder(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            gpu_check.main(["--gpu", "0", "--out", str(tmp_path / "a")])
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(UserError, match="holds a report already"):
        gpu_check.main(["--gpu", "cpu", "--quick", "--out", str(tmp_path)])
