"""utils.run_record: the reproducibility record of a run."""
import importlib.util
import json
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torchvision

import utils
from utils import device_description, git_state, run_record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"git_commit", "git_dirty", "python", "torch", "cuda", "torchvision", "numpy", "device"}


def test_record_holds_the_versions_in_use():
    record = run_record("cpu")
    assert set(record) == KEYS
    assert record["python"] == platform.python_version()
    assert record["torch"] == torch.__version__ and record["cuda"] == torch.version.cuda
    assert record["torchvision"] == torchvision.__version__ and record["numpy"] == np.__version__
    json.dumps(record)  # plain types: it goes into results.json


def test_device_is_the_cpu_model_without_cuda():
    cpu = device_description("cpu")
    assert isinstance(cpu, str) and cpu
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if models:
            assert cpu == models[0]
    assert device_description("no such device") == cpu  # never raises
    if not torch.cuda.is_available():
        assert device_description("cuda:0") == cpu
    else:
        assert device_description("cuda:0") == torch.cuda.get_device_name(0)


def test_git_fields_in_this_repository():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git, or this copy of the code is not a git repository")
    record = run_record("cpu")
    assert record["git_commit"] == head and isinstance(record["git_dirty"], bool)


def test_git_fields_are_none_outside_a_repository(tmp_path, monkeypatch):
    # a copy of utils.py in a folder git will not look above, loaded as its own module: its record looks there
    shutil.copy(os.path.join(REPO, "utils.py"), tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    spec = importlib.util.spec_from_file_location("utils_copy", tmp_path / "utils.py")
    utils_copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils_copy)
    record = utils_copy.run_record("cpu")
    assert record["git_commit"] is None and record["git_dirty"] is None
    assert record["numpy"] == np.__version__


def test_git_fields_are_none_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no git executable to find
    assert git_state(REPO) == (None, None)
    record = run_record("cpu")
    assert record["git_commit"] is None and record["git_dirty"] is None
    assert record["torch"] == torch.__version__  # the rest is still there


def test_git_timeout_gives_none(monkeypatch):
    monkeypatch.setattr(utils, "GIT_TIMEOUT_S", 1e-9)
    assert git_state(REPO) == (None, None)


def test_dirty_flag_is_true_exactly_when_the_tree_differs_from_its_commit(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                                GIT_COMMITTER_EMAIL="t@t"))
    try:
        git("init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git")
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / ".gitignore").write_text("log/\n")
    git("add", ".")
    git("commit", "-qm", "first")
    commit, dirty = git_state(str(tmp_path))
    assert len(commit) == 40 and dirty is False  # clean
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "run.txt").write_text("ignored output")
    assert git_state(str(tmp_path)) == (commit, False)  # ignored files do not count
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_state(str(tmp_path)) == (commit, True)  # a changed tracked file
    git("checkout", "-q", "code.py")
    (tmp_path / "new.py").write_text("b = 1\n")
    assert git_state(str(tmp_path)) == (commit, True)  # an untracked, not ignored file
