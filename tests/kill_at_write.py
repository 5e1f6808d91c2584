"""Runs train_mine.py and kills it (os._exit(137), what SIGKILL leaves behind) just before its N-th file
replacement: that write's temporary file is complete and its target untouched, every earlier write is done.
tests/test_runs.py uses it to interrupt a run at each kind of write.

    python tests/kill_at_write.py N [train_mine.py arguments...]
"""
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "train_mine.py")
sys.path.insert(0, REPO)  # as `python train_mine.py` would have it
kill_at = int(sys.argv[1])
sys.argv = [TRAIN] + sys.argv[2:]
replace = os.replace
replacements = []


def replace_or_die(src, dst):
    replacements.append(dst)
    if len(replacements) == kill_at:
        os._exit(137)
    replace(src, dst)


os.replace = replace_or_die
runpy.run_path(TRAIN, run_name="__main__")
