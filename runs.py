"""A run's identity and files: its name, its folders, its checkpoints, and the tables it writes.

A run lives in log_path/<name>/ (log.txt, split.json, metrics.csv, results.json, pictures) and
model_path/<name>_last.pth (every epoch: the whole state, the best epoch's weights included) and _best.pth (at
the end). No run overwrites another: a new run takes a free name, a resumed run stays in its own files.
Everything is written atomically (utils.atomic_write), so a kill at any moment leaves the previous files intact.
"""
import csv
import fcntl
import glob
import itertools
import json
import os
import shutil

from utils import UserError, atomic_write, check_writable

# Arguments that tell runs apart without changing what they compute: left out of default run names (where the seed
# and trial are spelled out anyway) and of the configurations summarize.py groups runs by (a --test-only
# evaluation stays apart from the training run it evaluates).
RUN_ONLY_ARGS = ("seed", "trial", "data_path", "run_name", "log_path", "model_path", "resume", "gpu", "workers",
                 "log_every", "no_pictures", "test_batch_size")


LOCK_FILE = ".lock"  # in a run's folder: held (flock) by the process writing the run, released when it ends or dies


class RunFiles:
    """The paths of one run's files, the claim on its name, and the checks made before it writes any."""

    def __init__(self, log_path, model_path, name):
        self.log_path, self.model_path, self.name = log_path, model_path, name
        self.folder = os.path.join(log_path, name)
        self._lock = None  # the open lock file while this process holds the run

    def lock(self):
        """Hold the run for this process: an exclusive flock on <folder>/.lock, which the kernel releases when the
        process ends, however it ends (a killed run leaves no stale claim). False if another live process holds it.
        Creating the folder and taking the lock are atomic, so two processes started together cannot both hold a
        run."""
        if self._lock is not None:
            return True
        check_writable(self.folder)
        lock = open(os.path.join(self.folder, LOCK_FILE), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held by another process
            lock.close()
            return False
        self._lock = lock
        return True

    def unlock(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def discard_if_empty(self):
        """Remove the folder of a run that ends before producing anything worth keeping (a start refused or failed
        before its first checkpoint): nothing is left behind, and the name is free again."""
        if self._lock is not None and not self.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
        self.unlock()

    def checkpoint(self, which):
        """model_path/<name>_<which>.pth, which = 'last' or 'best'."""
        return os.path.join(self.model_path, f"{self.name}_{which}.pth")

    def exists(self):
        """Whether the run has produced anything worth keeping: metrics, results or a checkpoint (a run that failed
        before its first epoch ended left none of them, and its folder is reused)."""
        return any(os.path.exists(path) for path in (
            os.path.join(self.folder, "metrics.csv"), os.path.join(self.folder, "results.json"),
            self.checkpoint("last"), self.checkpoint("best")))

    def finished(self):
        return os.path.exists(os.path.join(self.folder, "results.json"))

    def prepare(self, checkpoints=True):
        """Fail now, in one line, if the run cannot write its outputs; remove this run's temporary files left by a
        killed write."""
        for folder in [self.folder] + ([self.model_path] if checkpoints else []):
            check_writable(folder)
        stale = glob.glob(os.path.join(glob.escape(self.folder), ".tmp_*"))
        if checkpoints:
            stale += glob.glob(os.path.join(glob.escape(self.model_path), f".tmp_*{glob.escape(self.name)}_*.pth"))
        for path in stale:
            os.remove(path)


def claim_run(log_path, model_path, typed_name, default_name):
    """A new run (or a fork of a resumed one), locked for this process (RunFiles.lock), never another run's: a typed
    name must be free; else the default name, with -2, -3, ... appended while a run of that name exists or is being
    written by another process (each ablation, and each of two identical commands started together, keeps its
    files). A name is taken by a run that produced metrics, results or a checkpoint, or by a live process."""
    if typed_name:
        run = RunFiles(log_path, model_path, typed_name)
        if run.exists():
            raise UserError(f"run {typed_name} exists already ({run.folder}): continue it with --resume "
                            f"{run.checkpoint('last')}, or choose another --run_name")
        if not run.lock():
            raise UserError(f"run {typed_name} is being written by another process ({run.folder}): choose another "
                            f"--run_name")
        if run.exists():  # finished between the check and the lock
            run.unlock()
            raise UserError(f"run {typed_name} exists already ({run.folder}): choose another --run_name")
        return run
    for name in (default_name if n == 1 else f"{default_name}-{n}" for n in itertools.count(1)):
        run = RunFiles(log_path, model_path, name)
        if not run.exists() and run.lock():
            if not run.exists():
                return run
            run.unlock()


def write_json(path, obj):
    def write(tmp_path):
        with open(tmp_path, "w") as f:
            json.dump(obj, f, indent=2)
    atomic_write(path, write)


def write_metrics_csv(path, history):
    """metrics.csv, one row per epoch, rewritten from the history the checkpoint holds: a resumed run has no gaps
    or duplicated rows."""
    columns = []
    for row in history:
        columns += [key for key in row if key not in columns]

    def write(tmp_path):
        with open(tmp_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
    atomic_write(path, write)
