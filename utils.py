"""Shared plumbing: user-facing errors, seeding, logging, device choice, atomic files, meters."""
import logging
import os
import random
import sys
import tempfile

import numpy as np
import torch


class UserError(Exception):
    """A problem with the user's input (paths, flags, data). Printed as one line, exit code 2."""


def run_cli(main, *args):
    """Call main(*args); turn a UserError (or Ctrl-C) into one line on stderr and a non-zero exit."""
    try:
        return main(*args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def check_range(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise UserError unless low <(=) value <(=) high; names the flag in the message."""
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        raise UserError(f"{name}={value} is out of range {lo or '(-inf'}, {hi or 'inf)'}")


def atomic_write(path, write_fn):
    """Write a file through write_fn(tmp_path), then rename it into place: a crash never leaves a half file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write_fn(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_save_npy(path, array):
    """np.save through a temporary file (np.save appends .npy to names lacking it, so keep the suffix)."""
    def write(tmp_path):
        with open(tmp_path, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)
