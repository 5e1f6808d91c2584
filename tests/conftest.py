"""Tiny datasets in the real SYSU-MM01 and RegDB on-disk layouts, built once per test session."""
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from demo_data import make_demo_dataset, make_demo_regdb  # noqa: E402
from pre_process_regdb import preprocess_regdb  # noqa: E402
from pre_process_sysu import preprocess_sysu  # noqa: E402
from train_helpers import FAST, outputs, run_train  # noqa: E402

TINY_SYSU = dict(num_train_ids=6, num_test_ids=4, imgs_per_cam=3, raw_h=48, raw_w=24)
TINY_REGDB = dict(num_ids=8, imgs_per_id=10, raw_h=48, raw_w=24)  # 4 training + 4 test ids per trial


@pytest.fixture(scope="session")
def tiny_sysu(tmp_path_factory):
    """Path of a raw SYSU-MM01-layout dataset (read-only: copy it before writing)."""
    return make_demo_dataset(str(tmp_path_factory.mktemp("sysu") / "SYSU-MM01"), seed=1, **TINY_SYSU)


@pytest.fixture(scope="session")
def tiny_regdb(tmp_path_factory):
    """Path of a raw RegDB-layout dataset (read-only: copy it before writing)."""
    return make_demo_regdb(str(tmp_path_factory.mktemp("regdb") / "RegDB"), seed=2, **TINY_REGDB)


def preprocessed_copy(raw_root, tmp_path_factory, name, preprocess):
    """A copy of a raw tiny dataset with its arrays written at 32x16."""
    root = str(tmp_path_factory.mktemp(f"{name}_pre") / name)
    shutil.copytree(raw_root, root)
    preprocess(root, img_h=32, img_w=16, workers=2)
    return root


@pytest.fixture(scope="session")
def tiny_sysu_preprocessed(tiny_sysu, tmp_path_factory):
    """A copy of tiny_sysu with the training arrays written at 32x16 (read-only: copy it before writing)."""
    return preprocessed_copy(tiny_sysu, tmp_path_factory, "SYSU-MM01", preprocess_sysu)


@pytest.fixture(scope="session")
def tiny_regdb_preprocessed(tiny_regdb, tmp_path_factory):
    """A copy of tiny_regdb with the arrays of all 10 trials written at 32x16 (read-only: copy it before writing)."""
    return preprocessed_copy(tiny_regdb, tmp_path_factory, "RegDB", preprocess_regdb)


@pytest.fixture(scope="session")
def sysu_run(tiny_sysu_preprocessed, tmp_path_factory):
    """One finished 3-epoch FAST run on the tiny SYSU layout (run name e2e, under ROOT/log and ROOT/save), shared
    by the tests that read its outputs (read-only: copy before writing)."""
    root = tmp_path_factory.mktemp("sysu_run")
    run_train(["--dataset", "sysu", "--data_path", tiny_sysu_preprocessed, "--epochs", "3", *FAST,
               *outputs(root, "e2e")], cwd=root)
    return root
